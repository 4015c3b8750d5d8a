"""Liveness, readiness, OpenAPI and the problem-details error shape."""

from __future__ import annotations

import os
import re

import httpx
from litestar import Litestar

from server.app import create_app
from server.foundation.settings import Settings
from server.http.middleware import new_request_id
from tests.support.lifespan import running_lifespan


async def test_health_is_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {}}
    assert response.headers["x-request-id"]


async def test_the_health_shortcut_answers_as_the_declared_route(client: httpx.AsyncClient) -> None:
    """The middleware answers a plain GET /health before the router; with an Origin the route does."""
    fast = await client.get("/health")
    routed = await client.get("/health", headers={"origin": "https://elsewhere.example"})
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert fast.headers["content-length"] == routed.headers["content-length"]


def test_request_ids_are_unique_and_a_forked_process_draws_its_own() -> None:
    """Generated ids are 32 hex digits, never repeated, and not shared with a forked worker
    (``serve --workers N`` forks after the middleware is imported)."""
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id and leave without running pytest's teardown
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child_id)
    assert child_id[:16] != new_request_id()[:16]


async def test_ready_checks_postgres_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "redis": "ok", "storage": "ok"}


async def test_ready_names_what_is_down(settings: Settings) -> None:
    broken = create_app(msgspec_replace(settings, redis_url="redis://127.0.0.1:1/0"))
    async with running_lifespan(broken):
        transport = httpx.ASGITransport(app=broken)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/ready")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "not_ready"
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("down")
    assert "redis" in body["detail"]


async def test_openapi_document_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "Lounges API"
    assert "/health" in document["paths"]
    assert (await client.get("/schema")).status_code == 200


async def test_every_operation_has_a_summary_a_description_and_a_described_tag(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    described = {tag["name"] for tag in document["tags"] if tag.get("description")}
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) > 100
    for name, operation in operations:
        # Litestar's default summary is the handler's name ("Apply"): one word.
        assert " " in operation["summary"] and operation["description"], name
        assert operation["tags"] and set(operation["tags"]) <= described, name


async def test_the_api_explorer_loads_nothing_from_another_host(client: httpx.AsyncClient) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert len(assets) >= 4  # script, preset, style sheet, icon
    for url in assets:
        assert url.startswith("/"), f"{url} is fetched from another host"  # offline, or behind a strict proxy
        asset = await client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, url
        assert "max-age=86400" in asset.headers["cache-control"]


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nope", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "not_found"
    assert body["status"] == 404
    assert body["instance"] == "/api/v1/nope"
    assert body["request_id"] == "req-123"
    assert response.headers["x-request-id"] == "req-123"


async def test_wrong_method_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_unexpected_error_hides_the_trace(app: Litestar, client: httpx.AsyncClient) -> None:
    from litestar import get

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    application = create_app(app.state.app_state.settings)
    application.register(boom)
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert "secret" not in response.text
    assert "Traceback" not in response.text


def msgspec_replace(settings: Settings, **changes: object) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, **changes)
