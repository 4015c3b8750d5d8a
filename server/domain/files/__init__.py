"""Uploaded files stored in object storage."""
