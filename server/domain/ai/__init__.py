"""The coach: when it answers, its prompt, its streamed replies (lease, reaper) and thread titles."""
