"""Benchmarks for Lounges, run with ``python -m bench`` (see README "Benchmarks").

Reusable pieces, so that each benchmark is a short orchestration script:

- :mod:`bench.procfs` — CPU pinning and ``/proc`` readings (RSS, CPU time);
- :mod:`bench.stack` — a temporary data dir with embedded PostgreSQL + Valkey,
  migrations, pinned server processes, a signed-in user; stops everything on exit;
- :mod:`bench.loadgen` — the HTTP load-generator process (raw asyncio sockets);
- :mod:`bench.results` — medians, ratios, the text table, JSON and PNG output;
- :mod:`bench.peer` — the raw ASGI peer app every scenario is compared with;
- :mod:`bench.http_baseline` — the HTTP baseline benchmark;
- :mod:`bench.wsclient` — a lean WebSocket client (one ``asyncio.Protocol`` per socket);
- :mod:`bench.ws_peer` — the raw ASGI broadcast peer of the WebSocket benchmark;
- :mod:`bench.ws_socketio_peer`, :mod:`bench.ws_channels_peer` — its python-socketio and Litestar
  channels peers (what users would pick instead; no auth, no storage);
- :mod:`bench.ws_setup` — users, sessions, tokens and a lounge for it (SQL + API);
- :mod:`bench.ws_load` — its load-generator process (idle, broadcast, publish, storm);
- :mod:`bench.ws_baseline` — the WebSocket gateway benchmark (``python -m bench ws``).

Benchmarks report numbers; they never assert on timings (that is not a test).
"""
