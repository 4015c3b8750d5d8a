"""User accounts, OAuth identities, sessions, refresh and action tokens, security events."""
