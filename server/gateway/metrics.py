"""The gateway's Prometheus series, and the node's :class:`Tally` of per-frame work.

The gateway writes ~100,000 frames a second, so nothing per frame touches a metric:
publications heard, deliveries queued, frames and bytes written are counted in plain
integers on the node's tally (the flusher adds up a batch of sockets at a time) and
moved into the counters by :meth:`Tally.report`, a metrics sampler (before a scrape and
once a second). Per-event series (sockets opened and closed, commands, recoveries,
presence replies, relinks, gap fills) are recorded as they happen, on children bound
once per label value. With ``METRICS_ENABLED=false`` the tally still counts (integer
additions) but nothing reaches a metric.

Label values are fixed sets: encodings (``json``, ``protobuf``), command methods, result
codes, close codes; never a channel, user or client id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from server.foundation import metrics

CONNECTIONS = Gauge(
    "lounges_gateway_connections",
    "Open client sockets, by encoding (json, protobuf)",
    ["encoding"],
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "lounges_gateway_subscriptions",
    "Channel subscriptions (lounges, threads) of the open sockets; sampled",
    multiprocess_mode="livesum",
)
CHANNELS = Gauge(
    "lounges_gateway_channels", "Channels with subscribers on the node (hubs); sampled", multiprocess_mode="livesum"
)
COMMANDS = Counter(
    "lounges_gateway_commands_total",
    "Protocol commands handled, by method and result (ok, the error code answered, or disconnect)",
    ["method", "result"],
)
COMMAND_SECONDS = Histogram(
    "lounges_gateway_command_seconds",
    "Time to handle a command, until its reply is queued",
    ["method"],
    buckets=metrics.FAST_BUCKETS,
)
PUBLICATIONS_RECEIVED = Counter(
    "lounges_gateway_publications_received_total",
    "Wire messages of the node's channels received (redis: from pub/sub; local: this process's own writers)",
    ["source"],
)
DELIVERIES = Counter(
    "lounges_gateway_deliveries_total", "Channel publications queued for subscribers (one per subscriber)"
)
FRAMES_WRITTEN = Counter(
    "lounges_gateway_frames_written_total",
    "WebSocket frames written to sockets (each carries one or more protocol replies or pushes)",
)
BYTES_WRITTEN = Counter("lounges_gateway_bytes_written_total", "Bytes of the WebSocket frames written to sockets")
FANOUT_SECONDS = Histogram(
    "lounges_gateway_fanout_seconds",
    "From a publication reaching the node's subscribers (its arrival, in offset order) to the end of the "
    "flush round that wrote it to their sockets",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DISCONNECTS = Counter(
    "lounges_gateway_disconnects_total",
    "Sockets that ended, by close code: the server's (3001 shutdown, 3008 slow consumer, ...) or, when the peer "
    "closed, its code (1000, 1001, 1005, 1006; other)",
    ["code"],
)
SLOW_CONSUMERS = Counter(
    "lounges_gateway_slow_consumer_disconnects_total",
    "Sockets closed as slow consumers (3008): more than WS_OUTBOUND_MAX_BYTES waited unsent",
)
RECOVERIES = Counter("lounges_gateway_recoveries_total", "Subscribes that asked to recover, by outcome", ["recovered"])
PRESENCE_CLIENTS = Histogram(
    "lounges_gateway_presence_clients",
    "Clients in a channel's presence, per presence or presence_stats reply",
    buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
RELINKS = Counter(
    "lounges_gateway_pubsub_relinks_total",
    "Times the node rebuilt its Redis pub/sub links (an outage, a failover, a moved slot)",
)
GAP_FILLS = Counter(
    "lounges_gateway_gap_fills_total",
    "Reads of the channel log for publications pub/sub did not bring (gap: one arrived out of order; "
    "catch_up: the periodic or after-relink check found some)",
    ["reason"],
)

ENCODINGS = ("json", "protobuf")
METHODS = ("connect", "refresh", "subscribe", "unsubscribe", "publish", "history", "presence", "presence_stats", "rpc")
PEER_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006})
ARRIVALS_KEPT = 4096  # fan-out start times held per flush round (a round that never ends holds no more)

_connections = {encoding: CONNECTIONS.labels(encoding) for encoding in ENCODINGS}
_received_redis, _received_local = PUBLICATIONS_RECEIVED.labels("redis"), PUBLICATIONS_RECEIVED.labels("local")
_recovered = {True: RECOVERIES.labels("true"), False: RECOVERIES.labels("false")}
_gap_fills = {reason: GAP_FILLS.labels(reason) for reason in ("gap", "catch_up")}
_commands: dict[tuple[str, str], Counter] = {}
_command_seconds = {method: COMMAND_SECONDS.labels(method) for method in (*METHODS, "unknown")}
_disconnects: dict[str, Counter] = {}


class Tally:
    """One node's counts between reports, and its hooks into the series (no-ops when ``on`` is false)."""

    __slots__ = ("arrivals", "bytes_written", "deliveries", "frames_written", "from_local", "from_redis", "on")

    def __init__(self, on: bool) -> None:
        self.on = on
        self.from_redis = 0
        self.from_local = 0
        self.deliveries = 0
        self.frames_written = 0
        self.bytes_written = 0
        self.arrivals: list[float] = []  # when each publication of the current flush round reached its hub

    def report(self) -> None:
        """Move the counts into the counters (a metrics sampler: on the node's event loop)."""
        counts = (
            (_received_redis, self.from_redis),
            (_received_local, self.from_local),
            (DELIVERIES, self.deliveries),
            (FRAMES_WRITTEN, self.frames_written),
            (BYTES_WRITTEN, self.bytes_written),
        )
        self.from_redis = self.from_local = self.deliveries = self.frames_written = self.bytes_written = 0
        if self.on:
            for counter, count in counts:
                if count:
                    counter.inc(count)

    def fanned_out(self) -> None:
        """A publication was queued for its subscribers; its fan-out ends with the flush round."""
        if self.on and len(self.arrivals) < ARRIVALS_KEPT:
            self.arrivals.append(time.monotonic())

    def round_ended(self) -> None:
        """The flusher ran dry: every publication fanned out since the last round is written."""
        arrivals = self.arrivals
        if arrivals:
            now = time.monotonic()
            for arrived in arrivals:
                FANOUT_SECONDS.observe(now - arrived)
            arrivals.clear()

    def opened(self, encoding: str) -> None:
        if self.on:
            _connections[metrics.bounded(encoding, ENCODINGS, "json")].inc()

    def closed(self, encoding: str) -> None:
        if self.on:
            _connections[metrics.bounded(encoding, ENCODINGS, "json")].dec()

    def command(self, method: str | None, result: str, started: float) -> None:
        """A command was handled (``started``: its ``time.perf_counter()`` at the start)."""
        if not self.on:
            return
        name = method if method in METHODS else "unknown"
        assert name is not None
        _command_seconds[name].observe(time.perf_counter() - started)
        child = _commands.get((name, result))
        if child is None:
            child = _commands[(name, result)] = COMMANDS.labels(name, result)
        child.inc()

    def disconnect(self, code: int) -> None:
        """The server closed a socket with ``code`` (one of the protocol's codes)."""
        if self.on:
            if code == 3008:
                SLOW_CONSUMERS.inc()
            _disconnect(str(code))

    def peer_disconnect(self, code: object) -> None:
        """The peer closed its socket (or it broke) with ``code``."""
        if self.on:
            _disconnect(str(code) if code in PEER_CLOSE_CODES else "other")

    def recovery(self, recovered: bool) -> None:
        if self.on:
            _recovered[recovered].inc()

    def presence(self, clients: int) -> None:
        if self.on:
            PRESENCE_CLIENTS.observe(clients)

    def relinked(self) -> None:
        if self.on:
            RELINKS.inc()

    def gap_fill(self, reason: str) -> None:
        if self.on:
            _gap_fills[reason].inc()

    def sample_channels(self, subscribers: Iterable[int]) -> None:
        """The node's hubs now, by their subscriber counts."""
        if self.on:
            counts = list(subscribers)
            SUBSCRIPTIONS.set(sum(counts))
            CHANNELS.set(len(counts))


def _disconnect(code: str) -> None:
    child = _disconnects.get(code)
    if child is None:
        child = _disconnects[code] = DISCONNECTS.labels(code)
    child.inc()
