"""Private AI chat threads, messages, reactions and attachments."""
