"""Language models: one streaming interface over OpenAI, Anthropic and the offline coach, with fallback."""
