"""The domain layer: one package per area (tables, services, schemas), below the transports."""
