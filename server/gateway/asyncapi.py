"""``GET /schema/asyncapi.json``: the AsyncAPI document of the realtime gateway,
next to the OpenAPI one at ``/schema``.

The document is ``docs/asyncapi.json`` (the prose reference is
``docs/protocol.md``). It is read and checked once, at import, and served as-is:
no YAML, no per-request work. A checkout or image without ``docs/`` still
starts; the route then answers 404 and a warning is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
from litestar import Response, get
from litestar.exceptions import NotFoundException

log = logging.getLogger("lounges.realtime")

ASYNCAPI_PATH = "/schema/asyncapi.json"
DOCUMENT_FILE = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def load_document(path: Path = DOCUMENT_FILE) -> bytes | None:
    """The document's bytes, after checking they are an AsyncAPI JSON object;
    ``None`` if the file is absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        log.warning("AsyncAPI document not found; /schema/asyncapi.json will answer 404", extra={"path": str(path)})
        return None
    document = msgspec.json.decode(raw)  # a broken document fails at start-up, not per request
    if not isinstance(document, dict) or "asyncapi" not in document:
        raise ValueError(f"{path} is not an AsyncAPI document")
    return raw


_DOCUMENT = load_document()


@get(ASYNCAPI_PATH, include_in_schema=False, sync_to_thread=False)
def asyncapi_document() -> Response[bytes]:
    """The AsyncAPI 2.6 description of ``/connection/websocket``."""
    if _DOCUMENT is None:
        raise NotFoundException("the AsyncAPI document is not installed")
    return Response(content=_DOCUMENT, media_type="application/json")
