"""Realtime channels and their message offset sequences."""
