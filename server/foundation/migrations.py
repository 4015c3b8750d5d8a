"""Apply ``piccolo_migrations/`` to a database (the ``release`` step)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


async def apply_migrations(database_url: str) -> None:
    """Run every pending migration against ``database_url``.

    Piccolo's runner finds its engine through ``piccolo_conf.py``, which reads
    ``DATABASE_URL``; this must run in a process that has not imported
    ``piccolo_conf`` for another database.
    """
    from piccolo.apps.migrations.commands.forwards import run_forwards

    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("PICCOLO_CONF", "piccolo_conf")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    result = await run_forwards(app_name="lounges", migration_id="all")
    if not result.success:
        raise SystemExit(f"lounges: migrations failed: {result.message}")
