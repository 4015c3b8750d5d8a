"""AI provider usage ledger."""
