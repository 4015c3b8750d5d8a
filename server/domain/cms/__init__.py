"""Static pages and FAQs."""
