"""Time capsules that unlock at a future date."""
