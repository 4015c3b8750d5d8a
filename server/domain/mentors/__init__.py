"""Mentor profiles, their admin-reviewed applications and categories."""
