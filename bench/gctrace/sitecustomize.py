"""Loaded by every Python process started with this directory on ``PYTHONPATH`` (the coach
benchmark's ``--gc-trace``): appends one line per garbage collection that took at least
1 ms to ``$BENCH_GC_LOG.<pid>``:
``<CLOCK_MONOTONIC start> <generation> <ms> <collected> <objects in generation 2> <frozen>``
(the last two are counted for generation-2 collections only, else 0). Nothing is written
when the variable is unset."""

import gc
import os
import time

_path = os.environ.get("BENCH_GC_LOG")

if _path:
    _state = {"started": 0.0, "old": 0}
    _log = open(f"{_path}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 (open for the process' life)

    def _trace(phase, info):
        if phase == "start":
            _state["old"] = len(gc.get_objects(2)) if info["generation"] == 2 else 0
            _state["started"] = time.monotonic()
            return
        elapsed = time.monotonic() - _state["started"]
        if elapsed >= 0.001:
            frozen = gc.get_freeze_count() if info["generation"] == 2 else 0
            _log.write(
                f"{_state['started']:.6f} {info['generation']} {elapsed * 1000:.2f} {info['collected']}"
                f" {_state['old']} {frozen}\n"
            )

    gc.callbacks.append(_trace)
