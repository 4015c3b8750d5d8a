"""Every area's Piccolo tables, one module per area, below all domain services.

The tables reference each other by foreign key (a message's sender is a user, a file
belongs to a lounge, a usage-ledger row to a thread), an order no arrangement of the
areas' services can follow; kept apart, the schema is one sub-layer that every
service reads, and the services are free to be ordered by what they call.
"""
