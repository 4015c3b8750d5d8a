"""Job: build a data export (see :mod:`server.domain.compliance.services`).

Trouble with the object store or the database is retried with backoff; after
the last try (or on any other error) the request is marked ``failed`` with a
short reason, and the user may ask again.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
from arq import Retry
from arq.worker import func

from server.domain.compliance import services
from server.foundation.errors import Unavailable
from server.foundation.state import AppState

log = logging.getLogger("lounges.compliance")

EXPORT_MAX_TRIES = 4
TRANSIENT = (Unavailable, asyncpg.PostgresConnectionError, OSError, TimeoutError)


async def build_export(ctx: dict[str, Any], request_id: str) -> str:
    state: AppState = ctx["state"]
    rid = uuid.UUID(request_id)
    tries = ctx.get("job_try", 1)
    try:
        return await services.build_export(state, rid)
    except TRANSIENT as exc:
        if tries < EXPORT_MAX_TRIES:
            log.warning("export will retry: %s", exc, extra={"compliance_request_id": request_id, "job_try": tries})
            raise Retry(defer=min(300, 5 * 2 ** (tries - 1))) from exc
        await services.fail_export(rid, f"storage or database unavailable ({type(exc).__name__})")
        raise
    except Exception as exc:
        log.exception("export failed", extra={"compliance_request_id": request_id})
        await services.fail_export(rid, f"export failed ({type(exc).__name__})")
        raise


COMPLIANCE_FUNCTIONS = [
    func(build_export, max_tries=EXPORT_MAX_TRIES, timeout=3600),
]
