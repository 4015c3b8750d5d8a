"""Plans, Stripe customers, subscriptions, payments and webhook events."""
