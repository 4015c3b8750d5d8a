"""Benchmarks for Lounges, run with ``python -m bench`` (see README "Benchmarks").

Reusable pieces, so that each benchmark is a short orchestration script:

- :mod:`bench.procfs` — CPU pinning and ``/proc`` readings (RSS, CPU time);
- :mod:`bench.stack` — a temporary data dir with embedded PostgreSQL + Valkey,
  migrations, pinned server processes, a signed-in user; stops everything on exit;
- :mod:`bench.loadgen` — the HTTP load-generator process (raw asyncio sockets);
- :mod:`bench.results` — medians, ratios, the text table, JSON and PNG output;
- :mod:`bench.peer` — the raw ASGI peer app every scenario is compared with;
- :mod:`bench.http_baseline` — the HTTP baseline benchmark.

Benchmarks report numbers; they never assert on timings (that is not a test).
"""
