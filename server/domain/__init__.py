"""The domain layer, below the transports: one package per area (services, schemas), every
area's tables in ``tables``, the channel access policy in ``access``, the language models
in ``llm``; the areas' order is pyproject's ``domain-layers`` import contract."""
