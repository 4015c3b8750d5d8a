"""OpenTelemetry traces: one trace follows a message from the socket to the model and back,
across the web and worker processes; with tracing off nothing is set up and nothing leaves.

Real parts: a web process (``python -m server serve``) and an arq worker process
(``python -m server worker``) exporting over OTLP/HTTP to a collector inside the test
(tests/support/otlp_collector.py), the official centrifuge-python SDK as the client, and
the official openai SDK (inside the worker) talking to the local OpenAI stand-in.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace

from server.foundation import tracing
from server.foundation.settings import Settings
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.llm_standins import OpenAIStandin, running_openai_standin
from tests.support.nodes import ROOT, WebNode, WorkerProcess
from tests.support.otlp_collector import Collector, ReceivedSpan, running_collector
from tests.support.sdk import Recorder, payload, sdk_client, subscription

KEY = "sk-test-tracing"
REPLY = "Keep an easy pace you could talk at, then build up slowly."


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[OpenAIStandin]:
    async with running_openai_standin() as standin:
        yield standin


@pytest.fixture(scope="module")
async def collector() -> AsyncIterator[Collector]:
    async with running_collector() as running:
        yield running


def _env(llm: OpenAIStandin, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": llm.base_url,
        "AI_PROVIDERS": "openai,offline",
        "EMBEDDINGS_PROVIDER": "hashing",
        "AI_MAX_RETRIES": "0",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans reach the collector quickly
        **extra,
    }


async def _ask_the_coach(community: Community, node: WebNode) -> tuple[dict[str, Any], Account]:
    """A member publishes over the socket in a lounge whose coach always answers; returns
    the lounge and the member once the reply ended."""
    mentor = await community.mentor("trace-mentor@example.com")
    lounge = await community.lounge(mentor, ai_reply_policy="always", ai_persona="A running coach.")
    member = await community.user("trace-member@example.com")
    await community.join(member, lounge)
    client, _ = sdk_client(node.ws_url, member.access_token)
    await client.connect()
    try:
        sub, recorder = subscription(client, lounge["channel"])
        await sub.subscribe()
        await sub.ready()
        await sub.publish(payload(sub, {"text": "How do I keep a pace?", "client_id": str(uuid.uuid4())}))
        await recorder.wait_for(lambda r: _ended(r) is not None, timeout=20)
        assert _ended(recorder)["type"] == "ai.end"
    finally:
        await client.disconnect()
    return lounge, member


def _ended(recorder: Recorder) -> dict[str, Any] | None:
    ends = [d for _, d in recorder.publications if d.get("type") in ("ai.end", "ai.error")]
    return ends[-1] if ends else None


def _ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


async def test_one_trace_follows_a_message_from_the_socket_through_the_coach_job_to_the_provider(
    app, settings: Settings, llm: OpenAIStandin, collector: Collector, community: Community
) -> None:
    llm.reset(reply=REPLY, api_key=KEY, chunk_size=8, chunk_delay=0.01)
    collector.clear()
    env = _env(llm, OTEL_EXPORTER_OTLP_ENDPOINT=collector.url)
    # The worker exports only when its batch is due, a minute on: what it sends comes from its shutdown's flush.
    worker_env = {**env, "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    node, worker = await asyncio.gather(WebNode(settings, **env).start(), WorkerProcess(settings, **worker_env).start())
    try:
        lounge, member = await _ask_the_coach(community, node)
        channel = lounge["channel"]

        def publish_span(c: Collector) -> ReceivedSpan | None:
            found = [
                s for s in c.spans if s.name == "gateway.publish" and s.attributes.get("lounges.channel") == channel
            ]
            return found[0] if found else None

        publish = await collector.wait_for(publish_span)
        await collector.wait_for(lambda c: "coach.enqueue" in {s.name for s in c.trace(publish.trace_id)})
        assert not [s for s in collector.spans if s.service == "lounges-worker"]

        # REST: a server span per request named by its route, continuing a caller's traceparent; probes untraced.
        caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        async with httpx.AsyncClient(base_url=node.url) as http:
            assert (await http.get("/health")).status_code == 200
            response = await http.get(
                f"/api/v1/lounges/{lounge['id']}/messages",
                headers={**member.headers, "traceparent": f"00-{caller_trace}-{caller_span}-01"},
            )
            assert response.status_code == 200
        request = await collector.wait_for(
            lambda c: next((s for s in c.spans if s.kind == "server" and s.trace_id == caller_trace), None)
        )
    finally:
        await asyncio.gather(worker.stop(), node.stop())

    assert request.name == "GET /api/v1/lounges/{id}/messages", request
    assert (request.service, request.parent_id) == ("lounges-web", caller_span)
    assert request.attributes["http.route"] == "/api/v1/lounges/{id}/messages"
    assert any(s.attributes.get("db.system") == "postgresql" for s in collector.trace(caller_trace))
    assert not [s for s in collector.spans if "/health" in s.name or "/health" in str(s.attributes)]

    spans = collector.trace(publish.trace_id)
    web = [s for s in spans if s.service == "lounges-web"]
    in_worker = [s for s in spans if s.service == "lounges-worker"]

    # The socket command, in the web process: the trace's root.
    assert (publish.service, publish.kind, publish.parent_id) == ("lounges-web", "server", "")
    assert publish.attributes["rpc.method"] == "publish" and publish.attributes["rpc.system"] == "centrifuge"
    # The store: the message's one statement on PostgreSQL, under the command.
    stored = [
        s for s in web if s.attributes.get("db.system") == "postgresql" and "channel_publications" in str(s.attributes)
    ]
    assert stored and all(publish in _ancestors(s, spans) for s in stored), [s.name for s in web]
    assert all(s.kind == "client" for s in stored)
    # The broker: the broadcast's Redis pipeline (history cache + sharded pub/sub), under the command.
    broadcast = [s for s in web if s.attributes.get("db.system") == "redis" and "SPUBLISH" in s.name]
    assert broadcast and publish in _ancestors(broadcast[0], spans), [(s.name, s.attributes) for s in web]
    # The coach's job is queued in a producer span under the command; its carrier crosses to the worker.
    enqueue = _one(web, "coach.enqueue")
    assert enqueue.kind == "producer" and publish in _ancestors(enqueue, spans)
    assert any(s.attributes.get("db.system") == "redis" and s.parent_id == enqueue.span_id for s in web)

    # The worker: the job's span continues the trace, its parent the web process's producer span.
    reply = _one(in_worker, "coach.reply")
    assert (reply.kind, reply.parent_id) == ("consumer", enqueue.span_id)
    assert reply.attributes["lounges.channel"] == channel and reply.attributes["lounges.outcome"] == "complete"
    assert reply.attributes["gen_ai.provider.name"] == "openai"
    assert reply.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert reply.attributes["lounges.deltas"] >= 1
    provider = _one(in_worker, "coach.provider")
    assert provider.parent_id == reply.span_id
    assert provider.attributes["gen_ai.provider.name"] == "openai"
    assert provider.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert provider.attributes["gen_ai.usage.output_tokens"] > 0
    # The provider call: the openai SDK's HTTP request, a child of coach.provider.
    http = [s for s in in_worker if s.kind == "client" and s.parent_id == provider.span_id]
    assert len(http) == 1, [(s.name, s.attributes) for s in in_worker]
    attributes = http[0].attributes  # httpx's instrumentation: older or newer HTTP conventions
    assert http[0].name == "POST" and (attributes.get("url.full") or attributes["http.url"]).endswith(
        "/v1/chat/completions"
    )
    assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == 200
    # The reply is stored in the worker (PostgreSQL) under the job's span.
    assert any(s.attributes.get("db.system") == "postgresql" and reply in _ancestors(s, spans) for s in in_worker)
    # The streamed deltas' Redis writes are not traced one by one.
    assert len(spans) < 80, sorted(s.name for s in spans)
    assert all(s.status != 2 for s in spans), [(s.name, s.attributes) for s in spans if s.status == 2]

    # No trace starts with a bare database or Redis call (arq's polling, the sweeps, heartbeats).
    assert not [s for s in collector.spans if s.kind == "client" and not s.parent_id]
    assert collector.content_types == {"application/x-protobuf"}


async def test_with_tracing_off_nothing_is_set_up_and_nothing_is_exported(
    app, settings: Settings, llm: OpenAIStandin, collector: Collector, community: Community
) -> None:
    # The in-process app (create_app without OTEL_EXPORTER_OTLP_ENDPOINT) installed nothing.
    assert tracing.TRACING is False
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    # A fresh process that builds the app and sets the worker up imports no SDK and patches nothing.
    # (Litestar itself imports its OpenTelemetry plugin's module when the API is installed, and
    # adds nothing unless the plugin is configured.)
    probe = (
        "import json, sys, asyncpg, httpx, redis.asyncio\n"
        "from opentelemetry import trace\n"
        "from server.app import create_app\n"
        "from server.foundation import tracing\n"
        "from server.foundation.settings import load_settings\n"
        "settings = load_settings()\n"
        "create_app(settings)\n"
        "worker = tracing.setup_tracing(settings, 'lounges-worker')\n"
        "print(json.dumps({'on': tracing.TRACING or worker,\n"
        " 'provider': type(trace.get_tracer_provider()).__name__,\n"
        " 'sdk': sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter',\n"
        "   'opentelemetry.instrumentation.asyncpg', 'opentelemetry.instrumentation.redis',\n"
        "   'opentelemetry.instrumentation.httpx'))),\n"
        " 'wrapped': [hasattr(f, '__wrapped__') for f in (asyncpg.Connection.fetch,\n"
        "   redis.asyncio.Redis.execute_command, httpx.AsyncHTTPTransport.handle_async_request)]}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{collector.url}/v1/traces"  # the SDK's, not our switch
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "on": False,
        "provider": "ProxyTracerProvider",
        "sdk": [],
        "wrapped": [False, False, False],
    }

    # Real processes without OTEL_EXPORTER_OTLP_ENDPOINT (the SDK's other variables set, even
    # its per-signal endpoint) answer a message through the coach and export nothing.
    llm.reset(reply=REPLY, api_key=KEY, chunk_size=8, chunk_delay=0.01)
    collector.clear()
    env = _env(llm, OTEL_EXPORTER_OTLP_ENDPOINT="", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{collector.url}/v1/traces")
    node, worker = await asyncio.gather(WebNode(settings, **env).start(), WorkerProcess(settings, **env).start())
    try:
        await _ask_the_coach(community, node)
        await asyncio.sleep(1.0)  # ten export intervals
    finally:
        await asyncio.gather(worker.stop(), node.stop())
    assert collector.requests == 0 and collector.spans == []
