"""Drive the real arq worker from a test."""

from __future__ import annotations

from server.foundation.settings import Settings
from workers.main import create_worker


async def run_worker_until_idle(settings: Settings) -> None:
    """Run queued jobs until none is left (arq burst mode)."""
    worker = create_worker(settings, burst=True, poll_delay=0.05, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()
