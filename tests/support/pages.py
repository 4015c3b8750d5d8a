"""Reading the API's lists: every list answers ``{"items": [...], "next_cursor": str | null}``."""

from __future__ import annotations

from typing import Any

import httpx


def envelope(response: httpx.Response) -> dict[str, Any]:
    """The body of a 200 list answer, checked to be the one envelope."""
    assert response.status_code == 200, (response.request.url, response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict), (response.request.url, body)
    assert isinstance(body.get("items"), list), (response.request.url, body)
    assert "next_cursor" in body and (body["next_cursor"] is None or isinstance(body["next_cursor"], str)), body
    assert not {"total", "offset", "limit", "has_more"} & body.keys(), (response.request.url, sorted(body))
    return body


async def pages(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    limit: int | None = None,
    max_pages: int = 1000,
) -> list[list[dict[str, Any]]]:
    """Every page of a list, following ``next_cursor`` (``limit`` items per page); the same
    ``params`` (filters) go with each page."""
    query = {**(params or {}), **({"limit": limit} if limit is not None else {})}
    found: list[list[dict[str, Any]]] = []
    for _ in range(max_pages):
        page = envelope(await client.get(url, params=query, headers=headers or {}))
        assert limit is None or len(page["items"]) <= limit, (url, len(page["items"]), limit)
        found.append(page["items"])
        if page["next_cursor"] is None:
            return found
        assert page["items"], f"{url}: an empty page with a next_cursor"
        query = {key: value for key, value in query.items() if key not in ("before", "after")}
        query["cursor"] = page["next_cursor"]
    raise AssertionError(f"{url}: more than {max_pages} pages")


async def walk(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Every item of a list, page by page (see :func:`pages`), in the order they came."""
    return [item for page in await pages(client, url, headers=headers, params=params, limit=limit) for item in page]
