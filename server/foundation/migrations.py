"""Apply ``piccolo_migrations/`` to a database (the ``release`` step)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Piccolo's runner lists each migration it applies as "  - <id> [forwards]... ok!".
_APPLIED = re.compile(r"^\s*- (\S+) \[forwards\]", re.M)


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
    # Piccolo's own summary counts every migration as "already complete", even on an
    # empty database; its output is kept for a failure and replaced by ours.
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        result = await run_forwards(app_name="lounges", migration_id="all")
    if not result.success:
        sys.stderr.write(output.getvalue())
        raise SystemExit(f"lounges: migrations failed: {result.message}")
    applied = _APPLIED.findall(output.getvalue())
    if applied:
        print(f"lounges: applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        print("lounges: the database is up to date (no migration to apply)")
