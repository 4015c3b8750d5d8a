"""The REST routes, one module per domain area: Litestar controllers that parse a request,
call the area's services and answer (mounted under ``/api/v1`` by ``server.app``)."""
