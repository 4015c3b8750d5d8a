"""Personal notes."""
