"""WebSocket load generator: a separate process, raw asyncio sockets (:mod:`bench.wsclient`).

``python -m bench.ws_load SCENARIO --target {ours,ours-pb,peer,socketio,channels} --port P --setup FILE [...]``
prints one JSON object on stdout. Targets: ``ours`` is our gateway in the JSON
encoding (:class:`CentrifugeSocket`), ``ours-pb`` the same gateway in the
Protobuf encoding (:class:`ProtobufSocket`: the ``centrifuge-protobuf``
subprotocol, binary frames of length-delimited ``client_pb2`` messages; every
socket of the run, publishers included, speaks it), and three peers, which take
no setup: ``peer`` the raw broadcast peer (``bench.ws_peer``), ``socketio`` the
python-socketio peer (``bench.ws_socketio_peer``; :class:`SocketIOSocket` speaks
Socket.IO over Engine.IO v4's WebSocket transport) and ``channels`` the Litestar
channels peer (``bench.ws_channels_peer``; the raw peer's messages on other paths).
Scenarios:

- ``idle``      — open N sockets (ours: each sends ``connect`` with its own
  user's token and waits for the reply), hold them ``--hold`` s answering the
  server's pings, close them. Samples the server's RSS (``--watch-pid``)
  before (after a warm-up batch that is opened and closed first), while held
  and after. With ``--subscribe`` (ours) each socket also subscribes to the
  setup's lounge, as the peer's sockets are all subscribers.
- ``broadcast`` — S subscribers in one channel (ours: ``connect`` then
  ``subscribe`` to the lounge), or spread over many: with ``channels`` in the setup,
  subscriber i takes channel i mod L. With ``--node-port`` (other nodes of the same
  deployment on their own ports) the sockets take the ports in turn: subscriber i port
  (i div L) mod P, so every channel's subscribers spread evenly over the nodes, and
  publisher j port j mod P. A publisher child process
  (``publish``, inheriting this process's CPU) sends ``--rate`` messages/s for
  warm-up + duration, round robin over the channels, each carrying its send time
  (``CLOCK_MONOTONIC``) in its text (``--payload-bytes``: padded to that size).
  Every delivery is counted and timed at the ``data_received`` call that brought
  it: delivered/s over the measured window, and
  publish→deliver latency of *every* delivery of every message sent in the
  window (no sampling). Per-subscriber offsets are checked for gaps and
  duplicates, and the first subscriber's texts against those published to its
  channel. For ours, bytes on the wire per delivery: the WebSocket payload bytes of
  publication pushes (JSON: the push's line and its ``\\n`` separators;
  Protobuf: the delimited ``Reply`` with its length prefix) and the same plus
  the frame headers of the frames that carry them, divided by the deliveries.
- ``storm``     — S subscribers with known positions disconnect, ``--missed``
  messages are published, then all S reconnect at once and resubscribe with
  ``recover: true`` + offset/epoch (peer: ``/ws?since=K``); measures the time
  until the last one has its missed publications and checks each got exactly
  offsets pos+1..pos+M (ours: with the texts that were published). ``--cold`` leaves no other subscriber of the lounge on
  the node (its hub and in-memory ring are gone: recovery reads Redis);
  otherwise the publisher's socket stays subscribed (the ring serves it).
  Not for ``socketio`` and ``channels``: neither recovers missed messages.
- ``publish``   — the publisher child of ``broadcast``.

Every wait is bounded (``--timeout``); sockets that fail are counted, not
retried. Exit status 0 with the JSON even when sockets failed; 1 when the
scenario could not run at all.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import operator
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
from centrifuge.protocol import client_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bench.loadgen import percentile
from bench.procfs import (
    cpu_seconds,
    machine_cpu_seconds,
    process_tree,
    pss_kib,
    raise_nofile,
    rss_kib,
    sockets_by_process,
    tree_cpu_seconds,
    tree_rss_kib,
    tree_scheduled_seconds,
)
from bench.wsclient import RawWebSocket, clock, open_socket

OURS_PATH = "/connection/websocket"
OURS, OURS_PB, PEER, SOCKETIO, CHANNELS = "ours", "ours-pb", "peer", "socketio", "channels"
TARGETS = (OURS, OURS_PB, PEER, SOCKETIO, CHANNELS)
PEERS = (PEER, SOCKETIO, CHANNELS)  # no tokens, no setup; only the raw peer recovers (its ring)
T = TypeVar("T")
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"  # Engine.IO v4, WebSocket from the start
PROTOBUF_SUBPROTOCOL = "centrifuge-protobuf"
QUANTILES = [*range(0, 100), 99.5, 99.9, 100]

_encode = msgspec.json.encode
_decode = msgspec.json.decode


# -- decoding only what we need ------------------------------------------------------------------


class _Text(msgspec.Struct):
    text: str = ""


class _Data(msgspec.Struct):
    message: _Text | None = None


class _Pub(msgspec.Struct):
    data: _Data | None = None
    offset: int = 0


class _PushBody(msgspec.Struct):
    channel: str = ""
    pub: _Pub | None = None


class _Push(msgspec.Struct):
    push: _PushBody | None = None


class _PeerMessage(msgspec.Struct):
    seq: int
    ts: float


_push_decoder = msgspec.json.Decoder(_Push)
_data_decoder = msgspec.json.Decoder(_Data)
_peer_decoder = msgspec.json.Decoder(_PeerMessage)


def _frame_header(size: int) -> int:
    """Bytes of an unmasked server frame's header for a payload of ``size`` bytes."""
    return 2 if size < 126 else 4 if size < 65536 else 10


def message_text(seq: int, sent: float) -> str:
    """A publication's text: its send time first (parsed back by subscribers)."""
    return f"{sent:.6f} bench #{seq}"


def padded_text(seq: int, sent: float, size: int) -> str:
    """:func:`message_text` filled with ``x`` to ``size`` characters (ASCII: bytes); as is when
    ``size`` is 0 or too small."""
    text = message_text(seq, sent)
    return f"{text} {'x' * (size - len(text) - 1)}" if size > len(text) + 1 else text


def peer_message(seq: int, sent: float, size: int) -> bytes:
    """A peer publication, ``{"seq":N,"ts":T}``, with a ``pad`` string making it ``size`` bytes
    (as is when ``size`` is 0 or too small)."""
    message = _encode({"seq": seq, "ts": sent})
    fill = size - len(message) - len(b',"pad":""')
    return _encode({"seq": seq, "ts": sent, "pad": "x" * fill}) if fill > 0 else message


class Tally:
    """Deliveries counted by every subscriber socket of this process."""

    def __init__(self) -> None:
        self.window = (float("inf"), float("-inf"))  # receive times counted as "in the window"
        self.in_window = 0  # deliveries received inside the window
        self.total = 0
        self.latencies = array.array("d")  # seconds, every delivery of a message sent in the window
        self.gaps = 0
        self.duplicates = 0
        self.max_seq = 0  # highest seq (peer) seen
        # Bytes on the wire (ours): publication pushes only, every one received (not only the window's).
        self.pub_pushes = 0
        self.pub_payload_bytes = 0  # WebSocket payload bytes that belong to publication pushes
        self.pub_frame_bytes = 0  # the same + the headers of the frames carrying them

    def set_window(self, start: float, end: float) -> None:
        self.window = (start, end)


# -- sockets ------------------------------------------------------------------------------------


class CentrifugeSocket(RawWebSocket):
    """A client of our gateway in the JSON encoding: commands with ids, pongs, publication
    pushes tallied."""

    encoding = "json"

    def __init__(self, host: str, port: int, path: str, tally: Tally | None = None) -> None:
        super().__init__(host, port, path)
        self.tally = tally
        self.pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.pings = 0
        self.offset = 0  # last publication offset received on the subscribed channel
        self.pushes = 0
        self.first_push: asyncio.Future | None = None
        self.wait_offset: tuple[int, asyncio.Future] | None = None
        self.texts: list[str] | None = None  # when a list: every publication's text, in arrival order

    def request(self, **command: Any) -> asyncio.Future:
        """Send one command; the future resolves with ``(reply dict, receive time)``."""
        command_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        self.send_command(command_id, command)
        return future

    def send_command(self, command_id: int, command: dict[str, Any]) -> None:
        self.send_text(_encode({"id": command_id, **command}))

    async def call(self, timeout: float, **command: Any) -> tuple[dict, float]:
        reply, at = await asyncio.wait_for(self.request(**command), timeout)
        if "error" in reply:
            raise CommandError(reply["error"])
        return reply, at

    def on_message(self, payload: bytes, now: float) -> None:
        # The hot path (one call per WebSocket message, pushes handled inline): at 100,000
        # deliveries/s every Python call counts.
        lines = payload.split(b"\n") if b"\n" in payload else (payload,)
        other = 0  # payload bytes of everything but publications (each line with one separator)
        pubs = 0
        for line in lines:
            if not line.startswith(b'{"push"'):
                if line:
                    self.on_line(line, now)
                other += len(line) + 1
                continue
            pub = _push_decoder.decode(line).push.pub  # type: ignore[union-attr]
            if pub is None:
                other += len(line) + 1
                continue
            pubs += 1
            data = pub.data
            self.publication(
                pub.offset, data.message.text if data is not None and data.message is not None else None, now
            )
        tally = self.tally
        if pubs and tally is not None:
            size = len(payload)
            tally.pub_pushes += pubs
            tally.pub_payload_bytes += size - other
            tally.pub_frame_bytes += size - other + _frame_header(size)

    def publication(self, offset: int, text: str | None, now: float) -> None:
        """One publication push received (either encoding): order checks, tally, waiters."""
        self.pushes += 1
        tally = self.tally
        if offset:
            last = self.offset
            if last and offset != last + 1 and tally is not None:
                if offset <= last:
                    tally.duplicates += 1
                else:
                    tally.gaps += offset - last - 1
            if offset > last:
                self.offset = offset
            waiting = self.wait_offset
            if waiting is not None and offset >= waiting[0] and not waiting[1].done():
                waiting[1].set_result(now)
        if text is not None:
            if self.texts is not None:
                self.texts.append(text)
            if tally is not None:
                tally.total += 1
                start, end = tally.window
                if start <= now <= end:
                    tally.in_window += 1
                sent = float(text[: text.find(" ")])
                if start <= sent <= end:
                    tally.latencies.append(now - sent)

    def on_line(self, line: bytes, now: float) -> None:
        """Anything but a push: a ping (answered) or a reply (matched by id)."""
        if line == b"{}":
            self.pings += 1
            self.send_text(b"{}")
            return
        reply = _decode(line)
        self.on_reply(reply.get("id", 0), reply, now)

    def on_reply(self, command_id: int, reply: dict, now: float) -> None:
        future = self.pending.pop(command_id, None)
        if future is not None and not future.done():
            future.set_result((reply, now))

    def until_offset(self, offset: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.offset >= offset:
            future.set_result(clock())
        else:
            self.wait_offset = (offset, future)
        return future

    def on_closed(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError(f"closed with {self.close_code} {self.close_reason}"))
        self.pending.clear()


# Protobuf: what the SDKs' generated client_pb2 parses; commands built from the same dicts.
_parse_reply = client_pb2.Reply.FromString
_PONG = b"\x00"  # one delimited empty Command
_BYTES = FieldDescriptor.TYPE_BYTES


def _delimited(message: bytes) -> bytes:
    """``message`` preceded by its length as a varint."""
    length = len(message)
    prefix = bytearray()
    while length >= 0x80:
        prefix.append((length & 0x7F) | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix) + message


def _fill(message: Message, values: dict[str, Any]) -> None:
    """Set a request's fields from the JSON encoding's dict (``data`` as its JSON document)."""
    message.SetInParent()
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        if fields[name].type == _BYTES:
            setattr(message, name, _encode(value))
        else:
            setattr(message, name, value)


def reply_dict(message: Message) -> dict[str, Any]:
    """A ``Reply`` (or any message) as the JSON encoding's dict: fields set, ``bytes`` fields
    decoded from the JSON document they carry, integers left integers."""
    values: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                values[field.name] = {k: reply_dict(v) if isinstance(v, Message) else v for k, v in value.items()}
            elif field.is_repeated:
                values[field.name] = [reply_dict(item) for item in value]
            else:
                values[field.name] = reply_dict(value)
        elif field.type == _BYTES:
            values[field.name] = _decode(value) if value else None
        elif field.is_repeated:
            values[field.name] = list(value)
        else:
            values[field.name] = value
    return values


class ProtobufSocket(CentrifugeSocket):
    """A client of our gateway in the Protobuf encoding: offers ``centrifuge-protobuf`` (a
    101 answer that does not accept it fails the run), sends binary frames of delimited
    ``Command`` messages, parses every delimited ``Reply`` with the SDK's ``client_pb2``.
    A publication's ``data`` is the JSON document the JSON encoding carries inline."""

    encoding = "protobuf"
    subprotocol = PROTOBUF_SUBPROTOCOL

    def send_command(self, command_id: int, command: dict[str, Any]) -> None:
        message = client_pb2.Command(id=command_id)
        for method, params in command.items():
            _fill(getattr(message, method), params)
        self.send_binary(_delimited(message.SerializeToString()))

    def on_message(self, payload: bytes, now: float) -> None:
        # The hot path: parse each delimited Reply, take push.pub's offset and data (JSON).
        pos, end = 0, len(payload)
        other = 0  # payload bytes of everything but publications (with their length prefixes)
        pubs = 0
        while pos < end:
            start = pos
            length = payload[pos]
            pos += 1
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    byte = payload[pos]
                    pos += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
            stop = pos + length
            if not length:  # an empty Reply: the server's ping
                other += stop - start
                self.pings += 1
                self.send_binary(_PONG)
                pos = stop
                continue
            reply = _parse_reply(payload[pos:stop])
            pos = stop
            if reply.id:
                other += stop - start
                self.on_reply(reply.id, reply_dict(reply), now)
                continue
            pub = reply.push.pub
            data = pub.data
            if not data:  # a push that is not a publication (join, leave, unsubscribe, ...)
                other += stop - start
                continue
            pubs += 1
            message = _data_decoder.decode(data).message
            self.publication(pub.offset, message.text if message is not None else None, now)
        tally = self.tally
        if pubs and tally is not None:
            tally.pub_pushes += pubs
            tally.pub_payload_bytes += end - other
            tally.pub_frame_bytes += end - other + _frame_header(end)


def socket_class(target: str) -> type[CentrifugeSocket]:
    """The client class of one of our targets."""
    return ProtobufSocket if target == OURS_PB else CentrifugeSocket


class PeerSocket(RawWebSocket):
    """A subscriber of the raw peer (or the Litestar channels peer): every message is ``{"seq":N,"ts":T}``."""

    def __init__(self, host: str, port: int, path: str, tally: Tally | None = None, record: bool = False) -> None:
        super().__init__(host, port, path)
        self.tally = tally
        self.seq = 0
        # Recorded during a storm (from the start: the replay may arrive with the 101 answer).
        self.seqs: list[int] | None = [] if record else None
        self.wait_seq: tuple[int, asyncio.Future] | None = None

    def on_line(self, line: bytes, now: float) -> None:
        message = _peer_decoder.decode(line)
        self.delivery(message.seq, message.ts, now)

    def delivery(self, seq: int, sent: float, now: float) -> None:
        """Message ``seq``, published at ``sent``, received ``now``: order checks, tally, waiters."""
        tally = self.tally
        if tally is not None:
            last = self.seq
            if last and seq != last + 1:
                if seq <= last:
                    tally.duplicates += 1
                else:
                    tally.gaps += seq - last - 1
            tally.total += 1
            start, end = tally.window
            if start <= now <= end:
                tally.in_window += 1
            if start <= sent <= end:
                tally.latencies.append(now - sent)
        if self.seqs is not None:
            self.seqs.append(seq)
        if seq > self.seq:
            self.seq = seq
        waiting = self.wait_seq
        if waiting is not None and seq >= waiting[0] and not waiting[1].done():
            waiting[1].set_result(now)

    def until_seq(self, seq: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.seq >= seq:
            future.set_result(clock())
        else:
            self.wait_seq = (seq, future)
        return future


_SIO_MESSAGE = b'42["message",'  # a Socket.IO EVENT packet of the default namespace, event "message"


class SocketIOSocket(PeerSocket):
    """A Socket.IO client of the default namespace, Engine.IO v4 over WebSocket only (one
    packet per frame): answers the server's open packet ``0{...}`` with a namespace connect
    ``40`` (with :attr:`auth` as its payload), its pings ``2`` with pongs ``3``. ``ready``
    resolves when the server's ``40{...}`` says the namespace is connected. ``message``
    events carry ``{"seq":N,"ts":T}``; :meth:`publish` emits a ``publish`` event."""

    auth = b""

    def __init__(self, host: str, port: int, path: str, tally: Tally | None = None, record: bool = False) -> None:
        super().__init__(host, port, path, tally, record)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pings = 0

    def on_message(self, payload: bytes, now: float) -> None:
        if payload.startswith(_SIO_MESSAGE):
            message = _peer_decoder.decode(payload[len(_SIO_MESSAGE) : -1])
            self.delivery(message.seq, message.ts, now)
        elif payload == b"2":
            self.pings += 1
            self.send_text(b"3")
        elif payload.startswith(b"0"):
            self.send_text(b"40" + self.auth)
        elif payload.startswith(b"40") and not self.ready.done():
            self.ready.set_result(None)
        elif payload.startswith(b"44") and not self.ready.done():
            self.ready.set_exception(ConnectionRefusedError(f"namespace refused: {payload[2:200]!r}"))

    def on_closed(self) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("closed before the namespace was connected"))

    def publish(self, data: bytes) -> None:
        """Emit ``publish`` with ``data`` (a JSON document) as its argument."""
        self.send_text(b'42["publish",' + data + b"]")


class SocketIOPublisher(SocketIOSocket):
    """A Socket.IO client that connects as a publisher (the peer keeps it out of the room)."""

    auth = b'{"publisher":true}'


def peer_client(target: str, publisher: bool = False) -> tuple[str, type[RawWebSocket]]:
    """The path and client class of a peer's subscriber, or publisher, socket."""
    if target == SOCKETIO:
        return SOCKETIO_PATH, SocketIOPublisher if publisher else SocketIOSocket
    if publisher:
        return "/pub", RawWebSocket
    return ("/ws/lounge" if target == CHANNELS else "/ws"), PeerSocket


class CommandError(RuntimeError):
    pass


# -- helpers ------------------------------------------------------------------------------------


class Watch:
    """CPU of the watched server, of this process and of the machine between ``start`` and ``stop``;
    RSS samples of the server every ``interval`` s meanwhile. With ``tree``, the server is the
    watched process and all its descendants (``serve --workers N``), their CPU and RSS summed.
    ``services`` (process trees, e.g. PostgreSQL's postmaster and Valkey): their CPU summed too,
    taken out of "other". ``each`` (process trees): the CPU of each on its own, beside the
    sums, from the scheduler's nanosecond account. ``redis_ports``: each Redis server's
    counters (:func:`redis_counters`)."""

    def __init__(
        self,
        pid: int | None,
        interval: float = 0.25,
        tree: bool = False,
        services: list[int] | None = None,
        each: list[int] | None = None,
        redis_ports: list[int] | None = None,
    ) -> None:
        self.pid = pid
        self.interval = interval
        self.services = services or []
        self.each = each or []
        self.redis_ports = redis_ports or []
        self._cpu = tree_cpu_seconds if tree else cpu_seconds
        self._rss = tree_rss_kib if tree else rss_kib
        self.samples: list[int] = []
        self._task: asyncio.Task | None = None

    def start(self) -> Watch:
        self.t0 = time.perf_counter()
        self.server0 = self._cpu(self.pid) if self.pid else None
        self.own0 = time.process_time()
        self.machine0, self.steal0 = machine_cpu_seconds()
        self.services0 = self._services_cpu()
        self.each0 = {pid: tree_scheduled_seconds(pid) for pid in self.each}
        self.redis0 = {port: redis_counters(port) for port in self.redis_ports}
        if self.pid:
            self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            value = self._rss(self.pid) if self.pid else None
            if value is not None:
                self.samples.append(value)
            await asyncio.sleep(self.interval)

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        elapsed = time.perf_counter() - self.t0
        server1 = self._cpu(self.pid) if self.pid else None
        own1 = time.process_time()
        machine1, steal1 = machine_cpu_seconds()
        out: dict[str, Any] = {
            "elapsed_s": elapsed,
            "loadgen_cpu_percent": 100 * (own1 - self.own0) / elapsed,
            "machine_cpu_percent": 100 * (machine1 - self.machine0) / elapsed,
            "steal_cpu_percent": 100 * (steal1 - self.steal0) / elapsed,
            "server_cpu_percent": None,
            "other_cpu_percent": None,
        }
        if self.server0 is not None and server1 is not None:
            out["server_cpu_percent"] = 100 * (server1 - self.server0) / elapsed
            out["other_cpu_percent"] = (
                out["machine_cpu_percent"] - out["server_cpu_percent"] - out["loadgen_cpu_percent"]
            )
        services1 = self._services_cpu()
        if self.services and out["other_cpu_percent"] is not None:
            out["services_cpu_percent"] = 100 * (services1 - self.services0) / elapsed
            out["rest_cpu_percent"] = out["other_cpu_percent"] - out["services_cpu_percent"]
        if self.each:
            by_pid: dict[str, float | None] = {}
            for pid, before in self.each0.items():
                now = tree_scheduled_seconds(pid)
                by_pid[str(pid)] = 100 * (now - before) / elapsed if now is not None and before is not None else None
            out["cpu_percent_by_pid"] = by_pid
        if self.redis_ports:
            out["redis_by_port"] = {}
            for port, before in self.redis0.items():
                after = redis_counters(port)
                out["redis_by_port"][str(port)] = {
                    group: {
                        name: value - before[group].get(name, 0)
                        for name, value in values.items()
                        if value != before[group].get(name, 0)
                    }
                    for group, values in after.items()
                }
        if self.samples:
            out["server_rss_kib_max"] = max(self.samples)
            out["server_rss_kib_last"] = self.samples[-1]
        return out

    def _services_cpu(self) -> float:
        return sum(tree_cpu_seconds(pid) or 0.0 for pid in self.services)


REDIS_STATS = (
    "eventloop_cycles",
    "eventloop_duration_sum",  # µs, the whole cycles
    "eventloop_duration_cmd_sum",  # µs, running commands
    "total_reads_processed",
    "total_writes_processed",
)


def redis_counters(port: int) -> dict[str, dict[str, int]]:
    """Counters so far of the Redis server on ``port``: ``calls`` per command (``spublish``,
    ``zadd``, ...; ``INFO commandstats``) and ``stats``, :data:`REDIS_STATS` of ``INFO stats``
    (its event loop's cycles and their time, the reads and writes it processed)."""
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as connection:
        commands = connection.info("commandstats")
        stats = connection.info("stats")
    return {
        "calls": {name.removeprefix("cmdstat_"): values["calls"] for name, values in commands.items()},
        "stats": {name: stats[name] for name in REDIS_STATS if name in stats},
    }


def watch_server(args: argparse.Namespace, interval: float = 0.25) -> Watch:
    """A started :class:`Watch` of ``--watch-pid`` (and its tree, ``--watch-service``,
    ``--watch-cpu`` and ``--watch-redis``)."""
    return Watch(
        args.watch_pid,
        interval,
        tree=args.watch_tree,
        services=args.watch_service,
        each=args.watch_cpu,
        redis_ports=args.watch_redis,
    ).start()


def ms_summary(seconds: list[float] | array.array) -> dict[str, float]:
    values = sorted(seconds)
    ms = [v * 1000 for v in values]
    return {
        "count": len(ms),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "p999": percentile(ms, 99.9),
        "max": ms[-1] if ms else float("nan"),
        "mean": statistics.fmean(ms) if ms else float("nan"),
    }


async def settled_rss(pid: int | None, seconds: float = 1.0, tree: bool = False) -> int | None:
    """The median of a few RSS readings after a pause (lets freed buffers and the GC settle);
    with ``tree``, of the process and its descendants summed."""
    if not pid:
        return None
    await asyncio.sleep(seconds)
    readings = []
    for _ in range(5):
        value = (tree_rss_kib if tree else rss_kib)(pid)
        if value is not None:
            readings.append(value)
        await asyncio.sleep(0.1)
    return int(statistics.median(readings)) if readings else None


def server_group(args: argparse.Namespace) -> dict[str, Any] | None:
    """With ``--watch-tree``: each process of the watched server (the supervisor of ``serve
    --workers N`` and its nodes), its RSS, PSS and the client sockets it holds on ``--port``."""
    if not (args.watch_tree and args.watch_pid):
        return None
    sockets = sockets_by_process(args.watch_pid, args.port)
    processes = [
        {"pid": pid, "rss_kib": rss_kib(pid), "pss_kib": pss_kib(pid), "sockets": sockets.get(pid, 0)}
        for pid in process_tree(args.watch_pid)
    ]
    return {
        "processes": processes,
        "rss_kib": sum(p["rss_kib"] or 0 for p in processes),
        "pss_kib": sum(p["pss_kib"] or 0 for p in processes),
        "sockets": sum(p["sockets"] for p in processes),
    }


async def pool(count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(0..count-1)`` with at most ``concurrency`` in flight."""
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            await job(index)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


def _encoding(target: str) -> str | None:
    return socket_class(target).encoding if target not in PEERS else None


def _text_check(sent: list[str] | None, subscribers: list[RawWebSocket]) -> dict[str, Any] | None:
    """The first subscriber's publication texts against the publisher's (as multisets: 16
    publisher connections may be ordered differently by the server)."""
    checked = next((s for s in subscribers if getattr(s, "texts", None) is not None), None)
    if sent is None or checked is None:
        return None
    received: list[str] = checked.texts  # type: ignore[attr-defined]
    missing = Counter(sent) - Counter(received)
    unexpected = Counter(received) - Counter(sent)
    return {
        "sent": len(sent),
        "received": len(received),
        "missing": sum(missing.values()),
        "unexpected": sum(unexpected.values()),
        "unexpected_sample": list(unexpected)[:3],
    }


def broadcast_channels(setup: dict[str, Any]) -> list[str | None]:
    """The channels a broadcast spreads over: the setup's ``channels``, else its one
    ``channel`` (None for the peer without a setup, whose one stream has no name)."""
    return setup.get("channels") or [setup.get("channel")]


def node_ports(args: argparse.Namespace) -> list[int]:
    """The ports of the deployment's nodes: ``--port``, then each ``--node-port``."""
    return [args.port, *args.node_port]


def load_setup(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    with open(path) as handle:
        return json.load(handle)


class Opener:
    """Opens sockets (ours: + ``connect``, optionally + ``subscribe``), counting failures."""

    def __init__(self, args: argparse.Namespace, tally: Tally | None = None) -> None:
        self.args = args
        self.tally = tally
        self.errors: Counter = Counter()
        self.connect_times: list[float] = []

    async def ours(
        self, token: str, channel: str | None = None, port: int | None = None
    ) -> tuple[CentrifugeSocket, dict | None] | None:
        """Open a socket to ``port`` (default ``--port``), ``connect`` it with ``token``, then
        ``subscribe`` it to ``channel`` if given."""
        args = self.args
        started = clock()
        sock = None
        try:
            sock = await open_socket(
                socket_class(args.target), args.host, port or args.port, OURS_PATH, args.timeout, tally=self.tally
            )
            await sock.call(args.timeout, connect={"token": token, "name": "bench"})
            self.connect_times.append(clock() - started)
            subscribed = None
            if channel is not None:
                subscribed, _ = await sock.call(args.timeout, subscribe={"channel": channel})
                sock.offset = subscribed["subscribe"].get("offset", 0)
            return sock, subscribed
        except (OSError, TimeoutError, CommandError) as exc:
            self.errors[type(exc).__name__ + (f": {exc}" if isinstance(exc, CommandError) else "")] += 1
            if sock is not None:
                sock.abort()
            return None

    async def peer(self, path: str = "/ws", cls: type[RawWebSocket] = PeerSocket) -> RawWebSocket | None:
        """Open a socket to a peer (Socket.IO: until its namespace is connected)."""
        args = self.args
        started = clock()
        sock = None
        try:
            extra = {"tally": self.tally} if issubclass(cls, PeerSocket) else {}
            sock = await open_socket(cls, args.host, args.port, path, args.timeout, **extra)
            if isinstance(sock, SocketIOSocket):
                await asyncio.wait_for(sock.ready, args.timeout)
        except (OSError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            if sock is not None:
                sock.abort()
            return None
        self.connect_times.append(clock() - started)
        return sock


async def close_all(sockets: list[RawWebSocket], timeout: float) -> int:
    """Closing handshake for every socket; abort what is still open after ``timeout``. Returns aborted."""
    for sock in sockets:
        sock.close()
    pending = [sock.done for sock in sockets if not sock.done.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    aborted = 0
    for sock in sockets:
        if not sock.done.done():
            sock.abort()
            aborted += 1
    return aborted


# -- idle ---------------------------------------------------------------------------------------


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    setup = load_setup(args.setup)
    tokens: list[str] = setup.get("idle_tokens", [])
    count = args.sockets
    if args.target not in PEERS and len(tokens) < count + args.warmup_sockets:
        raise SystemExit(f"need {count + args.warmup_sockets} tokens, the setup has {len(tokens)}")
    opener = Opener(args)

    channel = setup["channel"] if args.subscribe and args.target not in PEERS else None

    async def open_one(index: int, into: list[RawWebSocket]) -> None:
        if args.target not in PEERS:
            opened = await opener.ours(tokens[index], channel)
            if opened is not None:
                into.append(opened[0])
        else:
            sock = await opener.peer(*peer_client(args.target))
            if sock is not None:
                into.append(sock)

    # Warm-up: open and close a batch, so first-use costs (DB pool growth, caches, code paths)
    # are not charged to the measured sockets.
    warm: list[RawWebSocket] = []
    await pool(args.warmup_sockets, args.concurrency, lambda i: open_one(count + i, warm))
    await close_all(warm, args.timeout)
    opener.errors.clear()
    opener.connect_times.clear()
    rss_before = await settled_rss(args.watch_pid, 2.0, args.watch_tree)
    group_before = server_group(args)

    sockets: list[RawWebSocket] = []
    watch_open = watch_server(args)
    opened_at = clock()
    await pool(count, args.concurrency, lambda i: open_one(i, sockets))
    open_seconds = clock() - opened_at
    opening = await watch_open.stop()

    watch = watch_server(args, 0.5)
    deadline = clock() + args.hold
    while clock() < deadline:
        await asyncio.sleep(min(0.5, max(0.0, deadline - clock())))
    dropped = sum(1 for s in sockets if s.done.done())
    holding = await watch.stop()
    rss_held = await settled_rss(args.watch_pid, 0.5, args.watch_tree)
    group_held = server_group(args)
    pings = sum(getattr(s, "pings", 0) for s in sockets)
    aborted = await close_all(sockets, args.timeout)
    rss_after = await settled_rss(args.watch_pid, 2.0, args.watch_tree)
    opened = len(sockets)
    return {
        "scenario": "idle",
        "target": args.target,
        "encoding": _encoding(args.target),
        "subscribed": channel,
        "sockets_requested": count,
        "sockets_open": opened,
        "errors": dict(opener.errors),
        "open_s": open_seconds,
        "connects_per_s": opened / open_seconds if open_seconds else None,
        "connect_ms": ms_summary(opener.connect_times),
        "opening": opening,
        "hold_s": args.hold,
        "holding": holding,
        "pings_answered": pings,
        "dropped_while_held": dropped,
        "aborted_on_close": aborted,
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "rss_held_max_kib": max(holding.get("server_rss_kib_max") or 0, rss_held or 0) or None,
        "rss_after_close_kib": rss_after,
        "per_socket_kib": (rss_held - rss_before) / opened if opened and rss_held and rss_before else None,
        "per_socket_kib_max": (
            (max(holding.get("server_rss_kib_max") or 0, rss_held or 0) - rss_before) / opened
            if opened and rss_before
            else None
        ),
        "server_group": {"before": group_before, "held": group_held} if group_held else None,
    }


# -- broadcast ----------------------------------------------------------------------------------


async def broadcast(args: argparse.Namespace) -> dict[str, Any]:
    setup = load_setup(args.setup)
    tally = Tally()
    opener = Opener(args, tally)
    subscribers: list[RawWebSocket] = []
    channels = broadcast_channels(setup)
    ports = node_ports(args)
    per_channel = [0] * len(channels)  # subscribers connected, by channel index
    per_port: Counter = Counter()

    async def open_one(index: int) -> None:
        if args.target not in PEERS:
            channel = index % len(channels)
            port = ports[index // len(channels) % len(ports)]
            opened = await opener.ours(setup["subscriber_tokens"][index], channels[channel], port)
            if opened is not None:
                if index == 0:  # the one whose texts are checked against those published to its channel
                    opened[0].texts = []
                subscribers.append(opened[0])
                per_channel[channel] += 1
                per_port[port] += 1
        else:
            sock = await opener.peer(*peer_client(args.target))
            if sock is not None:
                subscribers.append(sock)
                per_channel[0] += 1

    await pool(args.sockets, args.concurrency, open_one)
    if not subscribers:
        raise SystemExit(f"no subscriber could connect: {dict(opener.errors)}")
    await asyncio.sleep(1.0)  # join announcements settle
    group = server_group(args)  # which process holds which subscribers (before anything is timed)
    start = clock() + 2.0  # the publisher starts sending then (its own start-up is not timed)
    measure_from = start + args.warmup
    until = measure_from + args.duration
    tally.set_window(measure_from, until)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.ws_load",
        "publish",
        "--target",
        args.target,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--setup",
        args.setup or "",
        "--rate",
        str(args.rate),
        "--start",
        repr(start),
        "--duration",
        str(args.warmup + args.duration),
        "--window",
        repr(measure_from),
        repr(until),
        "--publishers",
        str(args.publishers),
        "--payload-bytes",
        str(args.payload_bytes),
        *(item for port in args.node_port for item in ("--node-port", str(port))),
        "--timeout",
        str(args.timeout),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(max(0.0, measure_from - clock()))
        watch = watch_server(args, 0.1)
        await asyncio.sleep(max(0.0, until - clock()))
        measured = await watch.stop()
        stdout, stderr = await asyncio.wait_for(child.communicate(), args.timeout + 30)
    except BaseException:
        if child.returncode is None:
            child.kill()
            await child.wait()
        raise
    if child.returncode != 0:
        raise SystemExit(f"publisher exited with {child.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    published = json.loads(stdout)
    # Drain: wait (bounded) until every subscriber has the last publication of its channel.
    expected_total = sum(map(operator.mul, published["sent_by_channel"], per_channel))
    drain_deadline = clock() + args.drain
    while tally.total < expected_total and clock() < drain_deadline:
        await asyncio.sleep(0.05)
    drained_after = max(0.0, clock() - until)
    expected_window = sum(map(operator.mul, published["sent_in_window_by_channel"], per_channel))
    dropped = sum(1 for s in subscribers if s.done.done())
    close_codes = Counter(str(s.close_code) for s in subscribers if s.done.done())
    await close_all(subscribers, args.timeout)
    latencies = sorted(tally.latencies)
    latencies_ms = [v * 1000 for v in latencies]
    texts = _text_check((published.get("texts") or [None])[0], subscribers)
    pushes = tally.pub_pushes
    wire = {
        "publication_pushes": pushes,
        "payload_bytes": tally.pub_payload_bytes,
        "frame_bytes": tally.pub_frame_bytes,
        "payload_bytes_per_delivery": tally.pub_payload_bytes / pushes if pushes else None,
        "frame_bytes_per_delivery": tally.pub_frame_bytes / pushes if pushes else None,
    }
    published.pop("texts", None)
    return {
        "scenario": "broadcast",
        "target": args.target,
        "encoding": _encoding(args.target),
        "rate": args.rate,
        "payload_bytes": args.payload_bytes or None,
        "subscribers": len(subscribers),
        "channels": len(channels),
        "subscribers_by_port": {str(port): per_port[port] for port in ports} if args.target not in PEERS else None,
        "subscriber_errors": dict(opener.errors),
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "publisher": published,
        "delivered": tally.in_window,
        "delivered_per_s": tally.in_window / args.duration,
        "offered_per_s": expected_window / args.duration,
        "deliveries_total": tally.total,
        "deliveries_expected_total": expected_total,
        "window_deliveries_timed": len(latencies),
        "window_deliveries_expected": expected_window,
        "missing_after_drain": max(0, expected_total - tally.total),
        "drained_after_s": drained_after,
        "gaps": tally.gaps,
        "duplicates": tally.duplicates,
        "dropped_subscribers": dropped,
        "close_codes": dict(close_codes),
        "text_check": texts,
        "server_group": group,
        "wire": wire if args.target not in PEERS else None,
        "latency_ms": ms_summary(latencies),
        "quantiles_ms": {str(q): round(percentile(latencies_ms, q), 3) for q in QUANTILES},
        **measured,
    }


async def publish(args: argparse.Namespace) -> dict[str, Any]:
    """The publisher child: ``--rate`` messages/s from ``--start`` for ``--duration`` s, open loop,
    round robin over the broadcast's channels."""
    setup = load_setup(args.setup)
    channels = broadcast_channels(setup)
    measure_from, until = args.window
    opener = Opener(args)
    sockets: list[Any] = []
    if args.target not in PEERS:
        ports = node_ports(args)
        for index, token in enumerate(setup["publisher_tokens"][: args.publishers]):
            opened = await opener.ours(token, port=ports[index % len(ports)])
            if opened is not None:
                sockets.append(opened[0])
    else:
        sock = await opener.peer(*peer_client(args.target, publisher=True))
        if sock is not None:
            sockets.append(sock)
    if not sockets:
        raise SystemExit(f"no publisher could connect: {dict(opener.errors)}")
    total = max(1, round(args.rate * args.duration))
    interval = 1.0 / args.rate
    acks: list[float] = []
    errors: Counter = Counter()
    pending: list[asyncio.Future] = []
    sent_by_channel = [0] * len(channels)
    sent_in_window_by_channel = [0] * len(channels)
    texts: list[list[str]] = [[] for _ in channels]  # by channel index
    lag: list[float] = []
    own0 = time.process_time()
    late_start = clock() - args.start  # > 0: connecting took longer than the margin given

    def on_ack(sent: float, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            errors[type(exc).__name__] += 1
            return
        reply, at = future.result()
        if "error" in reply:
            errors[f"error {reply['error'].get('code')}: {reply['error'].get('message', '')[:60]}"] += 1
        else:
            acks.append(at - sent)

    for seq in range(1, total + 1):
        target = args.start + (seq - 1) * interval
        delay = target - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = clock()
        lag.append(sent - target)
        index = seq % len(channels)
        sent_by_channel[index] += 1
        if measure_from <= sent <= until:
            sent_in_window_by_channel[index] += 1
        sock = sockets[seq % len(sockets)]
        if args.target not in PEERS:
            text = padded_text(seq, sent, args.payload_bytes)
            texts[index].append(text)
            data = {"text": text, "client_id": str(uuid.uuid4())}
            future = sock.request(publish={"channel": channels[index], "data": data})
            future.add_done_callback(lambda f, s=sent: on_ack(s, f))
            pending.append(future)
        elif args.target == SOCKETIO:
            sock.publish(_encode({"seq": seq, "ts": sent}))
        else:
            sock.send_text(peer_message(seq, sent, args.payload_bytes))
    last_sent = clock()
    if pending:
        await asyncio.wait(pending, timeout=args.timeout)
    unanswered = sum(1 for f in pending if not f.done())
    own_cpu = time.process_time() - own0
    await close_all(sockets, 2.0)
    return {
        "sent": total,
        "sent_in_window": sum(sent_in_window_by_channel),
        "sent_by_channel": sent_by_channel,
        "sent_in_window_by_channel": sent_in_window_by_channel,
        "late_start_s": max(0.0, late_start),
        "send_span_s": last_sent - args.start,
        "schedule_lag_ms": ms_summary(lag),
        "ack_ms": ms_summary(acks) if args.target not in PEERS else None,
        "errors": dict(errors),
        "unanswered": unanswered,
        "connections": len(sockets),
        "cpu_percent": 100 * own_cpu / max(1e-9, last_sent - args.start),
        "texts": texts if args.target not in PEERS else None,  # by channel index; checked by the parent, then dropped
    }


# -- storm --------------------------------------------------------------------------------------


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    if args.target in (SOCKETIO, CHANNELS):
        raise SystemExit(f"{args.target} recovers nothing: no storm")
    setup = load_setup(args.setup)
    if args.target != PEER:
        return await _storm_ours(args, setup)
    return await _storm_peer(args)


async def _publish_and_wait(pub: CentrifugeSocket, channel: str, count: int, timeout: float) -> tuple[int, list[str]]:
    """Publish ``count`` messages (acknowledged one by one); returns errors and the texts published."""
    errors = 0
    texts = []
    for seq in range(count):
        text = message_text(seq, clock())
        data = {"text": text, "client_id": str(uuid.uuid4())}
        try:
            await pub.call(timeout, publish={"channel": channel, "data": data})
        except (CommandError, TimeoutError, OSError):
            errors += 1
        else:
            texts.append(text)
    return errors, texts


async def _storm_ours(args: argparse.Namespace, setup: dict[str, Any]) -> dict[str, Any]:
    channel = setup["channel"]
    opener = Opener(args)
    anchor = await opener.ours(setup["publisher_tokens"][0], None if args.cold else channel)
    if anchor is None:
        raise SystemExit(f"the publisher could not connect: {dict(opener.errors)}")
    publisher: CentrifugeSocket = anchor[0]  # type: ignore[assignment]
    tokens = setup["subscriber_tokens"][: args.sockets]
    subscribers: list[CentrifugeSocket | None] = [None] * len(tokens)
    epoch = ""

    async def first(index: int) -> None:
        nonlocal epoch
        opened = await opener.ours(tokens[index], channel)
        if opened is not None:
            sock, reply = opened
            subscribers[index] = sock  # type: ignore[assignment]
            epoch = reply["subscribe"].get("epoch", "") if reply else epoch

    await pool(len(tokens), args.concurrency, first)
    live = [s for s in subscribers if s is not None]
    # A few live publications first: positions are then what each client last received.
    pre_errors, _ = await _publish_and_wait(publisher, channel, args.live, args.timeout)
    top = max((s.offset for s in live), default=0)
    waits = [s.until_offset(top) for s in live]
    if waits:
        await asyncio.wait(waits, timeout=args.timeout)
    positions = {i: s.offset for i, s in enumerate(subscribers) if s is not None}
    await close_all(live, args.timeout)
    await asyncio.sleep(1.0)  # the server unsubscribes and announces the leaves
    missed_errors, missed_texts = await _publish_and_wait(publisher, channel, args.missed, args.timeout)
    if not args.cold:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(publisher.until_offset(max(positions.values()) + args.missed), args.timeout)
    await asyncio.sleep(0.5)
    results: dict[int, dict[str, Any]] = {}
    errors: Counter = Counter()
    reconnected: list[CentrifugeSocket] = []
    watch = watch_server(args, 0.1)
    t0 = clock()

    async def again(index: int) -> None:
        position = positions[index]
        try:
            sock = await open_socket(socket_class(args.target), args.host, args.port, OURS_PATH, args.timeout)
        except (OSError, TimeoutError) as exc:
            errors[f"open: {type(exc).__name__}"] += 1
            return
        reconnected.append(sock)  # type: ignore[arg-type]
        try:
            await sock.call(args.timeout, connect={"token": tokens[index], "name": "bench"})  # type: ignore[attr-defined]
            reply, at = await sock.call(  # type: ignore[attr-defined]
                args.timeout, subscribe={"channel": channel, "recover": True, "offset": position, "epoch": epoch}
            )
        except (CommandError, TimeoutError, OSError) as exc:
            errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            return
        result = reply["subscribe"]
        publications = result.get("publications", [])
        offsets = [p.get("offset", 0) for p in publications]
        texts = [((p.get("data") or {}).get("message") or {}).get("text") for p in publications]
        ok = (
            result.get("recovered") is True
            and offsets == list(range(position + 1, position + args.missed + 1))
            and texts == missed_texts
        )
        if not ok:
            errors["wrong recovery" if texts == missed_texts else "wrong recovery (texts)"] += 1
        results[index] = {"seconds": at - t0, "ok": ok, "count": len(offsets)}

    await asyncio.wait_for(asyncio.gather(*(again(i) for i in positions)), args.timeout + 30)
    measured = await watch.stop()
    times = [r["seconds"] for r in results.values()]
    ok = sum(1 for r in results.values() if r["ok"])
    await close_all([*reconnected, publisher], args.timeout)
    return {
        "scenario": "storm",
        "target": args.target,
        "encoding": _encoding(args.target),
        "mode": "cold" if args.cold else "warm",
        "clients": len(positions),
        "setup_errors": dict(opener.errors),
        "publish_errors": pre_errors + missed_errors,
        "missed": args.missed,
        "recovered_ok": ok,
        "errors": dict(errors),
        "all_recovered_s": max(times) if times and ok == len(positions) else None,
        "last_reply_s": max(times) if times else None,
        "client_s": ms_summary(times),
        **measured,
    }


async def _storm_peer(args: argparse.Namespace) -> dict[str, Any]:
    opener = Opener(args)
    publisher = await opener.peer("/pub?reset=1", cls=RawWebSocket)
    if publisher is None:
        raise SystemExit(f"the publisher could not connect: {dict(opener.errors)}")
    live: list[PeerSocket] = []

    async def first(_: int) -> None:
        sock = await opener.peer("/ws")
        if sock is not None:
            live.append(sock)  # type: ignore[arg-type]

    await pool(args.sockets, args.concurrency, first)
    seq = 0
    for _ in range(args.live):
        seq += 1
        publisher.send_text(_encode({"seq": seq, "ts": clock()}))
    waits = [s.until_seq(seq) for s in live]
    if waits:
        await asyncio.wait(waits, timeout=args.timeout)
    positions = [s.seq for s in live]
    await close_all(live, args.timeout)
    await asyncio.sleep(1.0)
    for _ in range(args.missed):
        seq += 1
        publisher.send_text(_encode({"seq": seq, "ts": clock()}))
    await asyncio.sleep(0.5)
    results: list[dict[str, Any]] = []
    errors: Counter = Counter()
    reconnected: list[PeerSocket] = []
    watch = watch_server(args, 0.1)
    t0 = clock()

    async def again(position: int) -> None:
        try:
            sock: PeerSocket = await open_socket(  # type: ignore[assignment]
                PeerSocket, args.host, args.port, f"/ws?since={position}", args.timeout, record=True
            )
        except (OSError, TimeoutError) as exc:
            errors[f"open: {type(exc).__name__}"] += 1
            return
        reconnected.append(sock)
        try:
            at = await asyncio.wait_for(sock.until_seq(position + args.missed), args.timeout)
        except TimeoutError:
            errors["timeout"] += 1
            return
        ok = sock.seqs == list(range(position + 1, position + args.missed + 1))
        if not ok:
            errors["wrong replay"] += 1
        results.append({"seconds": at - t0, "ok": ok})

    await asyncio.wait_for(asyncio.gather(*(again(p) for p in positions)), args.timeout + 30)
    measured = await watch.stop()
    times = [r["seconds"] for r in results]
    ok = sum(1 for r in results if r["ok"])
    await close_all([*reconnected, publisher], args.timeout)
    return {
        "scenario": "storm",
        "target": "peer",
        "mode": "ring",
        "clients": len(positions),
        "missed": args.missed,
        "recovered_ok": ok,
        "errors": dict(errors),
        "all_recovered_s": max(times) if times and ok == len(positions) else None,
        "last_reply_s": max(times) if times else None,
        "client_s": ms_summary(times),
        **measured,
    }


# -- command line -------------------------------------------------------------------------------

SCENARIOS = {"idle": idle, "broadcast": broadcast, "publish": publish, "storm": storm}


def command(scenario: str, target: str, port: int, **options: Any) -> list[str]:
    """The argv that runs this generator (see :func:`bench.stack.run_pinned_json`)."""
    argv = [sys.executable, "-m", "bench.ws_load", scenario, "--target", target, "--port", str(port)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list | tuple):  # a repeatable option
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag] if value is True else [flag, str(value)]
    return argv


def run_on_fastest_loop(main: Coroutine[Any, Any, T]) -> tuple[T, str]:
    """Run ``main`` on uvloop when it is installed (what the load generators measure with),
    else on asyncio's loop: its result and the loop's name."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main), "uvloop" if loop_factory else "asyncio"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_load", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--node-port",
        type=int,
        action="append",
        default=[],
        help="broadcast (ours): another node's port; sockets take the ports in turn (repeatable)",
    )
    parser.add_argument("--setup", help="JSON file with tokens and the channel(s) (ours)")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--warmup-sockets", type=int, default=200, help="idle: opened and closed before measuring")
    parser.add_argument("--concurrency", type=int, default=100, help="sockets being opened at once")
    parser.add_argument("--hold", type=float, default=30.0, help="idle: seconds the sockets are held")
    parser.add_argument("--rate", type=float, default=50.0, help="broadcast: publications per second")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=10.0, help="broadcast: max seconds to wait for stragglers")
    parser.add_argument("--publishers", type=int, default=16, help="broadcast: publisher connections (ours)")
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=0,
        help="broadcast: each publication padded to this many bytes (ours: its text; peer: the message); 0: as is",
    )
    parser.add_argument(
        "--subscribe", action="store_true", help="idle (ours): each socket also subscribes to the setup's lounge"
    )
    parser.add_argument("--start", type=float, help="publish: CLOCK_MONOTONIC time of the first message")
    parser.add_argument("--window", type=float, nargs=2, default=(0.0, 0.0), help="publish: measured window")
    parser.add_argument("--missed", type=int, default=50, help="storm: publications missed while away")
    parser.add_argument("--live", type=int, default=5, help="storm: publications received before leaving")
    parser.add_argument("--cold", action="store_true", help="storm: no subscriber keeps the hub alive")
    parser.add_argument("--timeout", type=float, default=20.0, help="bound on every single wait")
    parser.add_argument("--watch-pid", type=int, help="the server process to sample (RSS, CPU)")
    parser.add_argument(
        "--watch-tree",
        action="store_true",
        help="the server is --watch-pid and its descendants (serve --workers N): CPU and RSS summed, "
        "sockets per process reported",
    )
    parser.add_argument(
        "--watch-service",
        type=int,
        action="append",
        default=[],
        help="a service process (with its descendants) whose CPU is reported apart from 'other' (repeatable)",
    )
    parser.add_argument(
        "--watch-cpu",
        type=int,
        action="append",
        default=[],
        help="a process (with its descendants) whose CPU is also reported on its own, to the nanosecond (repeatable)",
    )
    parser.add_argument(
        "--watch-redis",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="a Redis server on 127.0.0.1 whose calls per command and event loop are counted (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.scenario == "publish" and args.start is None:
        parser.error("publish needs --start")
    raise_nofile()
    result, loop = run_on_fastest_loop(SCENARIOS[args.scenario](args))
    result["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    result["loop"] = loop
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
