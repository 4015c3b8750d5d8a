"""Prometheus metrics of real processes, scraped while real traffic flows.

A web node (``python -m server serve`` with ``METRICS_TOKEN``) and a worker
(``python -m server worker`` with ``WORKER_METRICS_PORT``) carry a lounge chat over the
socket (official SDK, JSON and Protobuf), a presence call, a recovery, a coach reply
streamed from the OpenAI stand-in with retrieval over a note, a reply that falls back to
the offline coach, a signed Stripe webhook processed by the worker and a slow consumer
closed with 3008; their scrapes must show every matching series moved, and no label
value may be one that grows with users or channels. ``serve --workers 2`` must answer one
scrape for both processes. Scrapes are parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.domain.tables.knowledge import KnowledgeChunk
from server.foundation.settings import Settings
from tests.support.community import Community
from tests.support.llm_standins import running_openai_standin
from tests.support.nodes import WebNode, WorkerProcess, free_port
from tests.support.rawws import RawClient
from tests.support.sdk import Recorder, payload, sdk_client, subscription
from tests.support.stripe_standin import signature_header

TOKEN = "metrics-scraper-token-0123456789"
LLM_KEY = "sk-test-metrics"
WEBHOOK_SECRET = "whsec_metrics_test_secret"
MODEL = "gpt-4o-mini"
UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)


@dataclass
class Scrape:
    """One scrape's samples."""

    samples: list[Sample]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls([sample for family in text_string_to_metric_families(text) for sample in family.samples])

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples carrying ``labels`` (0 when there is none)."""
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


async def scrape(url: str, token: str | None = TOKEN) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape.parse(response.text)


async def until(url: str, check: Callable[[Scrape], bool], what: str, timeout: float = 20.0) -> Scrape:
    """Scrape ``url`` until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await scrape(url)
        if check(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.3)


def assert_bounded_labels(result: Scrape, unwanted: list[str]) -> None:
    """No label value grows with users, channels or lounges: no id, channel name or address."""
    for sample in result.samples:
        for key, value in sample.labels.items():
            where = f"{sample.name}{{{key}={value!r}}}"
            assert not UUID.search(value), f"an id in {where}"
            assert not any(part in value for part in ("lounge:", "thread:", "user#", "@")), f"a channel in {where}"
            assert not any(text in value for text in unwanted), f"traffic's own text in {where}"
            assert len(value) <= 80, where
            if key == "route":
                assert value == "unmatched" or value.startswith("/"), where


def stripe_event(kind: str) -> str:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:16]}",
            "object": "event",
            "type": kind,
            "created": int(time.time()) - 2,
            "livemode": False,
            "data": {"object": {"id": "cus_metrics", "object": "customer"}},
        },
        indent=2,
    )


async def test_metrics_are_off_without_a_token_and_absent_from_the_schema(client: httpx.AsyncClient) -> None:
    """The test app has no METRICS_TOKEN: /metrics answers 404 even with a token."""
    assert (await client.get("/metrics")).status_code == 404
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 404
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


async def test_metrics_enabled_false_serves_none_even_with_a_token(settings: Settings) -> None:
    node = await WebNode(settings, METRICS_TOKEN=TOKEN, METRICS_ENABLED="false").start()
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{node.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 404, answer.text
    finally:
        await node.stop()


async def test_a_scrape_shows_chat_coach_billing_and_slow_consumer_traffic(
    settings: Settings, community: Community, client: httpx.AsyncClient
) -> None:
    async with AsyncExitStack() as stack:
        llm = await stack.enter_async_context(running_openai_standin())
        llm.reset(reply="Keep the easy runs easy and sleep well.", api_key=LLM_KEY, chunk_size=6, chunk_delay=0.01)
        worker_port = free_port()
        env = {
            "METRICS_TOKEN": TOKEN,
            "WORKER_METRICS_PORT": str(worker_port),
            "AI_TOKEN_PRICES": f"{MODEL}=0.15/0.6",
            "OPENAI_API_KEY": LLM_KEY,
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_MODEL": MODEL,
            "AI_PROVIDERS": "openai,offline",
            "AI_MAX_RETRIES": "0",
            "EMBEDDINGS_PROVIDER": "hashing",
            "STRIPE_SECRET_KEY": "sk_test_metrics",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WS_OUTBOUND_MAX_BYTES": "65536",
            "PUBLISH_RATE_LIMIT": "100000/1",
            "DRAIN_SECONDS": "0",
        }
        node, worker = await asyncio.gather(WebNode(settings, **env).start(), WorkerProcess(settings, **env).start())
        stack.push_async_callback(node.stop)
        stack.push_async_callback(worker.stop)
        worker_url = f"http://127.0.0.1:{worker_port}"

        # The token: none, a wrong one, then the right one.
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{node.url}/metrics")).status_code == 401
            wrong = await http.get(f"{node.url}/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
            assert (
                await http.get(f"{node.url}/metrics", headers={"Authorization": f"Basic {TOKEN}"})
            ).status_code == 401
        before = await scrape(node.url)

        mentor = await community.mentor("metrics-mentor@example.com")
        lounge = await community.lounge(mentor, ai_reply_policy="mention")
        channel = lounge["channel"]
        members = []
        for name in ("json-member", "pb-member", "stuck-member"):
            member = await community.user(f"{name}@example.com")
            assert (await community.join(member, lounge)).status_code == 200
            members.append(member)
        note = await client.post(
            "/api/v1/notes",
            json={"title": "Easy runs", "content": "Run the easy days slowly, at a pace where you can talk."},
            headers=mentor.headers,
        )
        assert note.status_code == 201, note.text

        # A chat: subscribers in both encodings, a publisher, presence.
        recorders: list[Recorder] = []
        for member, encoding in zip(members[:2], ("json", "protobuf"), strict=True):
            sdk, _ = sdk_client(node.ws_url, member.access_token, encoding=encoding)
            await sdk.connect()
            stack.push_async_callback(sdk.disconnect)
            sub, recorder = subscription(sdk, channel)
            await sub.subscribe()
            await sub.ready(timeout=10)
            recorders.append(recorder)
        publisher, _ = sdk_client(node.ws_url, mentor.access_token, encoding="json")
        await publisher.connect()
        stack.push_async_callback(publisher.disconnect)
        pub, mine = subscription(publisher, channel)
        await pub.subscribe()
        await pub.ready(timeout=10)
        for index in range(5):
            await pub.publish(payload(pub, {"text": f"metrics chat #{index}", "client_id": str(uuid.uuid4())}))
        for recorder in recorders:
            await recorder.wait_for(lambda r: len(r.stored) >= 5)
        assert len((await pub.presence()).clients) == 3

        # A recovery: a raw client subscribes, leaves, and comes back asking for what it missed.
        raw = await RawClient.open(node.ws_url, encoding="json")
        stack.push_async_callback(raw.close)
        await raw.connect(members[0].access_token)
        first = (await raw.call("subscribe", {"channel": channel}))["subscribe"]
        await raw.call("unsubscribe", {"channel": channel})
        await pub.publish(payload(pub, {"text": "while you were away", "client_id": str(uuid.uuid4())}))
        back = await raw.call(
            "subscribe", {"channel": channel, "recover": True, "offset": first["offset"], "epoch": first["epoch"]}
        )
        assert back["subscribe"]["recovered"] is True, back

        # A coach reply (with retrieval over the asker's note), then one that falls back to the offline coach.
        async with asyncio.timeout(20):  # the worker indexes the note
            while not await KnowledgeChunk.count().where(KnowledgeChunk.source_type == "note"):
                await asyncio.sleep(0.1)
        await pub.publish(payload(pub, {"text": "@coach how slow is easy?", "client_id": str(uuid.uuid4())}))
        await mine.wait_for(lambda r: len(r.of_type("ai.end")) == 1, timeout=30)
        llm.reset(reply="unused", api_key=LLM_KEY, fail_status=500, fail_times=1)
        await pub.publish(payload(pub, {"text": "@coach and tomorrow?", "client_id": str(uuid.uuid4())}))
        await mine.wait_for(lambda r: len(r.of_type("ai.end")) == 2, timeout=30)
        assert mine.of_type("ai.end")[1]["message"]["meta"]["provider"] == "offline"

        # A Stripe webhook, signed as Stripe signs it; the worker applies it.
        body = stripe_event("customer.created")
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{node.url}/api/v1/billing/webhook",
                content=body.encode(),
                headers={
                    "Stripe-Signature": signature_header(body, WEBHOOK_SECRET),
                    "Content-Type": "application/json",
                },
            )
            assert answer.status_code == 200, answer.text
            forged = await http.post(
                f"{node.url}/api/v1/billing/webhook", content=body.encode(), headers={"Stripe-Signature": "t=1,v1=00"}
            )
            assert forged.status_code == 400

        # A slow consumer: subscribed, it stops reading while the lounge is flooded.
        stuck = await RawClient.open(node.ws_url, rcvbuf=4096, mss=536, max_queue=1, encoding="json")
        stack.push_async_callback(stuck.close)
        await stuck.connect(members[2].access_token)
        assert "subscribe" in await stuck.call("subscribe", {"channel": channel})
        flooder = await RawClient.open(node.ws_url, encoding="json")
        stack.push_async_callback(flooder.close)
        await flooder.connect(mentor.access_token)
        for _ in range(150):  # ~600 kB its way
            reply = await flooder.call(
                "publish", {"channel": channel, "data": {"text": "flood " * 600, "client_id": str(uuid.uuid4())}}
            )
            assert reply.get("publish") == {}, reply

        # The web node's scrape.
        web = await until(
            node.url,
            lambda s: (
                s.value("lounges_gateway_slow_consumer_disconnects_total") >= 1
                and s.value("lounges_gateway_subscriptions") >= 3
            ),
            "the slow consumer closed and the subscriptions sampled",
        )
        moved = {
            # HTTP: by method, route template and status; /metrics itself is not counted.
            "webhook requests": web.value(
                "lounges_http_requests_total", method="POST", route="/api/v1/billing/webhook", status="200"
            ),
            "forged webhook requests": web.value(
                "lounges_http_requests_total", method="POST", route="/api/v1/billing/webhook", status="400"
            ),
            "webhook latency": web.value(
                "lounges_http_request_seconds_count", method="POST", route="/api/v1/billing/webhook"
            ),
            # The gateway.
            "json sockets": web.value("lounges_gateway_connections", encoding="json"),
            "protobuf sockets": web.value("lounges_gateway_connections", encoding="protobuf"),
            "channels": web.value("lounges_gateway_channels"),
            "publishes": web.value("lounges_gateway_commands_total", method="publish", result="ok"),
            "subscribes": web.value("lounges_gateway_commands_total", method="subscribe", result="ok"),
            "connects": web.value("lounges_gateway_commands_total", method="connect", result="ok"),
            "presence replies": web.value("lounges_gateway_presence_clients_count"),
            "publish latency": web.value("lounges_gateway_command_seconds_count", method="publish"),
            "publications received": web.value("lounges_gateway_publications_received_total"),
            "deliveries": web.value("lounges_gateway_deliveries_total"),
            "frames written": web.value("lounges_gateway_frames_written_total"),
            "bytes written": web.value("lounges_gateway_bytes_written_total"),
            "fan-outs timed": web.value("lounges_gateway_fanout_seconds_count"),
            "recovered": web.value("lounges_gateway_recoveries_total", recovered="true"),
            "3008 disconnects": web.value("lounges_gateway_disconnects_total", code="3008"),
            # The stores.
            "pool connections": web.value("lounges_db_pool_connections"),
            "pool max": web.value("lounges_db_pool_max_connections"),
            "pool acquires": web.value("lounges_db_pool_acquire_seconds_count"),
            "post statements": web.value("lounges_db_statement_seconds_count", statement="post_message"),
            "broadcast round trips": web.value("lounges_redis_command_seconds_count", operation="broadcast"),
            "coach jobs queued": web.value("lounges_jobs_enqueued_total", function="generate_reply", result="queued"),
            "stripe jobs queued": web.value("lounges_jobs_enqueued_total", function="process_stripe_event"),
            # Billing, as received.
            "webhook events stored": web.value("lounges_billing_webhook_events_total", type="other", outcome="stored"),
            "forged webhook events": web.value(
                "lounges_billing_webhook_events_total", type="unknown", outcome="invalid_signature"
            ),
        }
        assert all(moved.values()), {name: value for name, value in moved.items() if not value}
        assert moved["publishes"] >= 157 and moved["post statements"] >= 157, moved
        assert moved["deliveries"] >= 5 * 3 and moved["frames written"] >= moved["publishes"], moved
        assert moved["coach jobs queued"] == 2 and moved["webhook requests"] == 1, moved
        assert web.value("lounges_gateway_presence_clients_sum") >= 3
        assert web.value("lounges_http_requests_total", route="/metrics") == 0
        assert before.value("lounges_http_requests_total", method="GET", route="/ready", status="200") >= 1
        for family in ("lounges_gateway_pubsub_relinks_total", "lounges_gateway_gap_fills_total"):
            assert family in web.names(), family  # present even while nothing went wrong

        # The worker's exporter.
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{worker_url}/metrics", timeout=10)).status_code == 200
        done = time.monotonic() + 20
        while True:
            async with httpx.AsyncClient() as http:
                jobs = Scrape.parse((await http.get(f"{worker_url}/metrics", timeout=10)).text)
            if jobs.value("lounges_billing_events_processed_total", type="other", outcome="ignored") >= 1:
                break
            assert time.monotonic() < done, "the worker did not process the Stripe event"
            await asyncio.sleep(0.3)
        ran = {
            "reply jobs started": jobs.value("lounges_worker_jobs_started_total", function="generate_reply"),
            "reply jobs succeeded": jobs.value(
                "lounges_worker_jobs_finished_total", function="generate_reply", outcome="succeeded"
            ),
            "reply job durations": jobs.value("lounges_worker_job_seconds_count", function="generate_reply"),
            "index job": jobs.value("lounges_worker_jobs_finished_total", function="index_note", outcome="succeeded"),
            "stripe job": jobs.value(
                "lounges_worker_jobs_finished_total", function="process_stripe_event", outcome="succeeded"
            ),
            "stripe lag": jobs.value("lounges_billing_event_lag_seconds_count", type="other"),
            "first tokens": jobs.value("lounges_coach_first_token_seconds_count", provider="openai", model=MODEL),
            "full replies": jobs.value("lounges_coach_reply_seconds_count", provider="openai", model=MODEL),
            "offline reply": jobs.value("lounges_coach_replies_total", provider="offline", outcome="complete"),
            "input tokens": jobs.value("lounges_coach_tokens_total", provider="openai", model=MODEL, kind="input"),
            "output tokens": jobs.value("lounges_coach_tokens_total", provider="openai", model=MODEL, kind="output"),
            "cost": jobs.value("lounges_coach_cost_usd_total", provider="openai", model=MODEL),
            "prompts": jobs.value("lounges_coach_prompt_seconds_count"),
            "provider error": jobs.value(
                "lounges_llm_provider_errors_total", provider="openai", code="provider_unavailable"
            ),
            "fallback": jobs.value("lounges_llm_fallbacks_total", provider="openai"),
            "retrievals": jobs.value("lounges_retrieval_search_seconds_count"),
            "chunks searched": jobs.value("lounges_retrieval_searched_chunks_sum"),
            "pool connections": jobs.value("lounges_db_pool_connections"),
        }
        assert all(ran.values()), {name: value for name, value in ran.items() if not value}
        assert ran["reply jobs started"] == 2 and ran["first tokens"] == 1, ran
        assert {"lounges_worker_queue_jobs", "lounges_worker_queue_due_jobs"} <= jobs.names()  # read at scrape
        assert "lounges_worker_cron_runs_total" in jobs.names()  # bound at start, counted each minute

        # No label grows with the traffic.
        unwanted = [m.email for m in (mentor, *members)] + [lounge["id"], "metrics chat", "flood"]
        assert_bounded_labels(web, unwanted)
        assert_bounded_labels(jobs, unwanted)


def _metrics_dir_of(pid: int) -> Path | None:
    """The multiprocess directory a web process writes its metrics into (from its memory maps)."""
    for mapping in psutil.Process(pid).memory_maps(grouped=True):
        path = Path(mapping.path)
        if path.name.endswith(".db") and path.parent.name.startswith("lounges-metrics-"):
            return path.parent
    return None


async def test_serve_workers_2_answers_one_scrape_for_both_processes(settings: Settings, community: Community) -> None:
    """Sockets on both processes are summed by a scrape of either; a killed process's sockets
    stop counting; the supervisor removes the shared directory when it stops."""
    group = WebNode(settings, args=("--workers", "2"), METRICS_TOKEN=TOKEN, DRAIN_SECONDS="0")
    await group.start()
    clients, events = [], []
    directory: Path | None = None
    try:
        assert group.process is not None
        mentor = await community.mentor("metrics-group@example.com")
        for _ in range(40):  # until both processes hold sockets
            sdk, sdk_events = sdk_client(group.ws_url, mentor.access_token, encoding="json", max_reconnect_delay=0.3)
            await sdk.connect()
            await sdk.ready(timeout=10)
            clients.append(sdk)
            events.append(sdk_events)
            held = {
                child.pid: sum(
                    1
                    for c in child.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == group.port
                )
                for child in psutil.Process(group.process.pid).children()
            }
            if len(clients) >= 6 and len(held) == 2 and all(held.values()):
                break
        assert len(held) == 2 and all(held.values()), held
        total = len(clients)
        for _ in range(6):  # each scrape lands on either process; every one counts both
            result = await scrape(group.url)
            assert result.value("lounges_gateway_connections", encoding="json") == total, held
        directory = _metrics_dir_of(psutil.Process(group.process.pid).children()[0].pid)
        assert directory is not None and directory.is_dir()

        # A process killed with its sockets: once its clients have reconnected to the others,
        # every socket counts once (the dead process's gauge is gone, not frozen at its last value).
        victim = max(held, key=lambda pid: held[pid])
        psutil.Process(victim).kill()
        async with asyncio.timeout(30):
            while sum(len(e.connected) for e in events) < total + held[victim]:
                await asyncio.sleep(0.05)
        await until(
            group.url,
            lambda s: s.value("lounges_gateway_connections", encoding="json") == total,
            "every client counted once",
        )
        for _ in range(4):
            assert (await scrape(group.url)).value("lounges_gateway_connections", encoding="json") == total
    finally:
        for sdk in clients:
            await sdk.disconnect()
        # Each child may take up to uvicorn's graceful timeout (20 s) to close its sockets; a
        # supervisor killed for being slower could not remove the directory.
        status = await group.stop(timeout=60)
    assert status == 0, f"the supervisor exited with {status}"
    assert directory is not None and not directory.exists(), directory
