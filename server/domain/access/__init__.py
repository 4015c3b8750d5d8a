"""The access policy: who may read and write which channel (``policy``)."""
