"""Admin audit log."""
