"""Data export and erasure requests."""
