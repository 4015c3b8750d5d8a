"""Mentor-run lounges and their memberships."""
