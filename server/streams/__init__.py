"""The stream layer: the channel log in PostgreSQL and the broker seam over Redis (no domain, no framework)."""
