"""The load generator of ``python -m bench rooms``: a long-lived process holding the members' sockets of some lounges.

``python -m bench.rooms_load --target {ours,peer} --port P --setup FILE --first A --count N``
opens, for lounges A..A+N-1 of the setup (:func:`bench.ws_setup.prepare_lounges`), a socket
per member (ours: ``connect`` with the member's token, then ``subscribe`` to the lounge;
peer: ``/ws?room=<lounge>``). ``--coach`` instead opens the coach lounges' members
(:class:`bench.coach_load.CoachSocket`, ours only). Then it talks JSON lines:

- it prints ``{"ready": ...}`` once every socket is open (or failed, counted);
- each line on stdin ``{"rate", "start", "warmup", "duration", "drain", "timeout"}`` runs
  one window and prints its result; ``{"quit": true}`` closes the sockets and exits.

A window: from ``start`` (``CLOCK_MONOTONIC``, shared by every process of the run) for
``warmup + duration`` s, ``rate`` posts/s, open loop, round robin over this process's
lounges, each post sent by the lounge's next member over its own socket (ours: a
``publish`` command, acknowledged once stored; peer: a text frame the room echoes). A post's
text is ``"<send time> <seq> <sender>"``. Every delivery is timed at the ``data_received``
that brought it; the sender's own copy counts for completeness, not for latency or
throughput. Per socket, after the drain: the seqs received against those posted to its
lounge (missing, duplicated, unexpected) and, ours, publication offsets without gap or
repeat. Latencies are returned whole (ms), for the parent to pool over processes.

The coach role: at ``start - 0.5`` s each coach lounge's first member asks the coach (the
lounge answers every message); the window counts ``ai.delta`` deliveries at every member,
then waits (bounded) for each reply's ``ai.end`` and checks each member got deltas 1..n.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import functools
import json
import sys
import uuid
from collections import Counter
from typing import Any

from bench.coach_load import CoachSocket
from bench.procfs import raise_nofile
from bench.ws_load import (
    OURS,
    OURS_PATH,
    PEER,
    CentrifugeSocket,
    CommandError,
    load_setup,
    pool,
    run_on_fastest_loop,
)
from bench.wsclient import RawWebSocket, clock, open_socket

COACH_QUESTION = "@coach How should I pace my long run this week?"


class Stats:
    """One window's counters, shared by every socket of the process."""

    def __init__(self) -> None:
        self.reset((float("inf"), float("-inf")))
        self.seq = 0  # the last post's seq: unique in this process over every window

    def reset(self, window: tuple[float, float]) -> None:
        self.window = window
        self.total = 0  # every delivery of a bench post, the sender's own copy included
        self.in_window = 0  # deliveries to the other members received inside the window
        self.latencies = array.array("d")  # seconds: deliveries to the others of posts sent in the window
        self.foreign = 0  # publications whose text is not a bench post
        self.gaps = 0
        self.duplicate_offsets = 0


def _delivered(stats: Stats, member: int, seqs: array.array, text: str, now: float) -> None:
    """One post received by ``member``: tallied, its seq recorded."""
    try:
        sent_text, seq, sender = text.split(" ", 2)
        sent = float(sent_text)
        seqs.append(int(seq))
        own = int(sender) == member
    except ValueError:
        stats.foreign += 1
        return
    stats.total += 1
    if own:
        return
    start, end = stats.window
    if start <= now <= end:
        stats.in_window += 1
    if start <= sent <= end:
        stats.latencies.append(now - sent)


class OursMember(CentrifugeSocket):
    """A member of one lounge on our gateway (JSON encoding)."""

    def __init__(self, host: str, port: int, path: str, stats: Stats, member: int) -> None:
        super().__init__(host, port, path)
        self.stats = stats
        self.member = member
        self.seqs = array.array("q")

    def publication(self, offset: int, text: str | None, now: float) -> None:
        stats = self.stats
        if offset:
            last = self.offset
            if last and offset != last + 1:
                if offset <= last:
                    stats.duplicate_offsets += 1
                else:
                    stats.gaps += offset - last - 1
            if offset > last:
                self.offset = offset
        if text is not None:
            _delivered(stats, self.member, self.seqs, text, now)


class PeerMember(RawWebSocket):
    """A member of one room of the raw peer: every message is a post's text."""

    def __init__(self, host: str, port: int, path: str, stats: Stats, member: int) -> None:
        super().__init__(host, port, path)
        self.stats = stats
        self.member = member
        self.seqs = array.array("q")

    def on_line(self, line: bytes, now: float) -> None:
        _delivered(self.stats, self.member, self.seqs, line.decode(), now)


class Room:
    """One lounge of this process: its channel, its members' open sockets, the seqs posted to it."""

    def __init__(self, index: int, channel: str) -> None:
        self.index = index
        self.channel = channel
        self.members: list[OursMember | PeerMember] = []
        self.sent: list[int] = []
        self.sent_in_window = 0
        self.next_sender = 0
        self.refused: set[int] = set()  # seqs answered with an error: maybe stored, not expected


async def open_rooms(args: argparse.Namespace, setup: dict[str, Any], stats: Stats) -> tuple[list[Room], Counter]:
    """Every member socket of lounges ``--first`` .. ``--first + --count - 1``."""
    channels = setup["channels"]
    tokens = setup["subscriber_tokens"]
    lounges = len(channels)
    per_lounge = len(tokens) // lounges
    rooms = [Room(i, channels[i]) for i in range(args.first, args.first + args.count)]
    errors: Counter = Counter()
    jobs = [(room, k) for room in rooms for k in range(per_lounge)]

    async def open_one(index: int) -> None:
        room, member = jobs[index]
        sock: Any = None
        try:
            if args.target == PEER:
                sock = await open_socket(
                    PeerMember, args.host, args.port, f"/ws?room={room.index}", args.timeout, stats=stats, member=member
                )
            else:
                sock = await open_socket(
                    OursMember, args.host, args.port, OURS_PATH, args.timeout, stats=stats, member=member
                )
                await sock.call(args.timeout, connect={"token": tokens[room.index + member * lounges], "name": "bench"})
                reply, _ = await sock.call(args.timeout, subscribe={"channel": room.channel})
                sock.offset = reply["subscribe"].get("offset", 0)
        except (OSError, TimeoutError, CommandError) as exc:
            errors[type(exc).__name__ + (f": {exc}" if isinstance(exc, CommandError) else "")] += 1
            if sock is not None:
                sock.abort()
            return
        room.members.append(sock)

    await pool(len(jobs), args.concurrency, open_one)
    for room in rooms:
        room.members.sort(key=lambda s: s.member)
    return rooms, errors


def _ms(seconds: list[float] | array.array) -> list[float]:
    return [round(v * 1000, 3) for v in seconds]


def _check(rooms: list[Room], first_seq: int) -> dict[str, int]:
    """Each member's received seqs against those posted to its lounge (as multisets): an
    acknowledged post missing is a loss; one refused with an error may arrive or not. A
    post of an earlier window (seq below ``first_seq``: refused there, then stored after
    all) arriving now is counted apart, as ``earlier``; any other stranger is unexpected."""
    out = {"missing": 0, "duplicates": 0, "unexpected": 0, "earlier": 0, "members_short": 0}
    for room in rooms:
        sent = sorted(room.sent)
        for sock in room.members:
            got = sorted(sock.seqs)
            if got == sent:
                continue
            received = Counter(got)
            posted = Counter(sent)
            expected = Counter(seq for seq in sent if seq not in room.refused)
            missing = sum((expected - received).values())
            out["missing"] += missing
            out["members_short"] += 1 if missing else 0
            out["duplicates"] += sum(n - 1 for n in received.values() if n > 1)
            strangers = [seq for seq in received if seq not in posted]
            out["earlier"] += sum(1 for seq in strangers if seq < first_seq)
            out["unexpected"] += sum(1 for seq in strangers if seq >= first_seq)
    return out


async def run_rooms(args: argparse.Namespace, rooms: list[Room], stats: Stats, order: dict[str, Any]) -> dict[str, Any]:
    start, warmup, duration = order["start"], order["warmup"], order["duration"]
    measure_from, until = start + warmup, start + warmup + duration
    stats.reset((measure_from, until))
    first_seq = stats.seq + 1
    live = [room for room in rooms if room.members]
    for room in rooms:
        room.sent = []
        room.refused = set()
        room.sent_in_window = 0
        for sock in room.members:
            sock.seqs = array.array("q")
    rate = order["rate"]
    total = max(1, round(rate * (warmup + duration))) if rate > 0 and live else 0
    interval = 1.0 / rate if rate > 0 else 0.0
    acks = array.array("d")
    errors: Counter = Counter()
    pending: list[asyncio.Future] = []
    lag = array.array("d")

    acked_in_window = 0  # successful acks received inside the window (whenever their post was sent)

    def on_ack(room: Room, seq: int, sent: float, in_window: bool, future: asyncio.Future) -> None:
        nonlocal acked_in_window
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            errors[type(exc).__name__] += 1
            room.refused.add(seq)
            return
        reply, at = future.result()
        if "error" in reply:
            errors[f"error {reply['error'].get('code')}: {reply['error'].get('message', '')[:60]}"] += 1
            room.refused.add(seq)
            return
        acked_in_window += measure_from <= at <= until
        if in_window:
            acks.append(at - sent)

    await asyncio.sleep(max(0.0, start - clock()))
    for n in range(total):
        target = start + n * interval
        delay = target - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        room = live[n % len(live)]
        sock = room.members[room.next_sender % len(room.members)]
        room.next_sender += 1
        stats.seq += 1
        seq = stats.seq
        sent = clock()
        lag.append(sent - target)
        in_window = measure_from <= sent <= until
        room.sent.append(seq)
        room.sent_in_window += in_window
        text = f"{sent:.6f} {seq} {sock.member}"
        if isinstance(sock, PeerMember):
            sock.send_text(text.encode())
        else:
            data = {"text": text, "client_id": str(uuid.uuid4())}
            future = sock.request(publish={"channel": room.channel, "data": data})
            future.add_done_callback(functools.partial(on_ack, room, seq, sent, in_window))
            pending.append(future)
    last_sent = clock()
    if pending:
        await asyncio.wait(pending, timeout=order["timeout"])
    # Drained when every member has every acknowledged post of its lounge. The count alone
    # is not enough: a post answered 108 may still be stored and delivered, so deliveries
    # can reach the total while an acknowledged post is still on its way.
    expected_total = sum((len(room.sent) - len(room.refused)) * len(room.members) for room in rooms)
    deadline = clock() + order["drain"]
    while clock() < deadline:
        if stats.total >= expected_total and _check(rooms, first_seq)["missing"] == 0:
            break
        await asyncio.sleep(0.05 if stats.total < expected_total else 0.25)
    drained_after = max(0.0, clock() - until)
    dropped = sum(1 for room in rooms for sock in room.members if sock.done.done())
    return {
        "role": "rooms",
        "sockets": sum(len(room.members) for room in rooms),
        "lounges": len(live),
        "sent": total,
        "sent_in_window": sum(room.sent_in_window for room in rooms),
        "send_span_s": last_sent - start,
        "schedule_lag_ms_max": max(lag, default=0.0) * 1000,
        "ack_ms": _ms(acks) if args.target != PEER else None,
        "acked_in_window": acked_in_window,
        "ack_errors": dict(errors),
        "unanswered": sum(1 for f in pending if not f.done()),
        "offered_deliveries": sum(room.sent_in_window * (len(room.members) - 1) for room in rooms),
        "delivered_in_window": stats.in_window,
        "deliveries_total": stats.total,
        "deliveries_expected": expected_total,
        "drained_after_s": drained_after,
        "latency_ms": _ms(stats.latencies),
        "gaps": stats.gaps,
        "duplicate_offsets": stats.duplicate_offsets,
        "foreign": stats.foreign,
        "dropped_sockets": dropped,
        **_check(rooms, first_seq),
    }


# -- the coach lounges ---------------------------------------------------------------------------


async def open_coach(args: argparse.Namespace, setup: dict[str, Any]) -> tuple[list[list[CoachSocket]], Counter]:
    """Every member socket of the coach lounges, subscribed; one list per lounge, the asker first."""
    errors: Counter = Counter()
    lounges: list[list[CoachSocket]] = []
    for channel, tokens in zip(setup["coach_channels"], setup["coach_tokens"], strict=True):
        members: list[CoachSocket] = []
        for token in tokens:
            sock: Any = None
            try:
                sock = await open_socket(CoachSocket, args.host, args.port, OURS_PATH, args.timeout)
                await sock.call(args.timeout, connect={"token": token, "name": "bench"})
                await sock.call(args.timeout, subscribe={"channel": channel})
            except (OSError, TimeoutError, RuntimeError) as exc:
                errors[type(exc).__name__] += 1
                if sock is not None:
                    sock.abort()
                continue
            members.append(sock)
        lounges.append(members)
    return lounges, errors


async def run_coach(
    args: argparse.Namespace, setup: dict[str, Any], lounges: list[list[CoachSocket]], order: dict[str, Any]
) -> dict[str, Any]:
    start, warmup, duration = order["start"], order["warmup"], order["duration"]
    measure_from, until = start + warmup, start + warmup + duration
    everyone = [sock for members in lounges for sock in members]
    for sock in everyone:
        sock.deltas.clear()
        sock.starts.clear()
        sock.ends.clear()
        sock.errors.clear()
    await asyncio.sleep(max(0.0, start - 0.5 - clock()))
    errors: Counter = Counter()
    asked = 0
    for channel, members in zip(setup["coach_channels"], lounges, strict=True):
        if not members:
            continue
        data = {"text": COACH_QUESTION, "client_id": str(uuid.uuid4())}
        try:
            await members[0].call(order["timeout"], publish={"channel": channel, "data": data})
            asked += 1
        except (OSError, TimeoutError, RuntimeError) as exc:
            errors[type(exc).__name__] += 1
    await asyncio.sleep(max(0.0, until - clock()))
    deltas_in_window = sum(1 for sock in everyone for _, at, _ in sock.deltas if measure_from <= at <= until)
    deadline = clock() + order["drain"] + order.get("reply_tail_s", 0.0)
    while clock() < deadline and not all(sock.ends for sock in everyone):
        await asyncio.sleep(0.1)
    problems: Counter = Counter()
    for sock in everyone:
        seqs = [seq for seq, _, _ in sock.deltas]
        if not sock.ends:
            problems["no ai.end"] += 1
        elif sock.ends[0][3] != "complete":
            problems[f"ended {sock.ends[0][3]}"] += 1
        if seqs != list(range(1, len(seqs) + 1)):
            problems["delta seqs not 1..n"] += 1
    return {
        "role": "coach",
        "sockets": len(everyone),
        "asked": asked,
        "ask_errors": dict(errors),
        "replies_started": sum(1 for members in lounges if members and members[0].starts),
        "replies_ended": sum(1 for members in lounges if members and members[0].ends),
        "deltas_in_window": deltas_in_window,
        "problems": dict(problems),
    }


# -- the line protocol ---------------------------------------------------------------------------


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    setup = load_setup(args.setup)
    loop = asyncio.get_running_loop()
    stats = Stats()
    if args.coach:
        lounges, errors = await open_coach(args, setup)
        _emit({"ready": True, "sockets": sum(map(len, lounges)), "errors": dict(errors)})
    else:
        rooms, errors = await open_rooms(args, setup, stats)
        _emit({"ready": True, "sockets": sum(len(r.members) for r in rooms), "errors": dict(errors)})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        order = json.loads(line)
        if order.get("quit"):
            break
        if args.coach:
            _emit(await run_coach(args, setup, lounges, order))
        else:
            _emit(await run_rooms(args, rooms, stats, order))
    sockets = [s for members in lounges for s in members] if args.coach else [s for r in rooms for s in r.members]
    for sock in sockets:
        sock.close()
    await asyncio.sleep(0.5)
    for sock in sockets:
        if not sock.done.done():
            sock.abort()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rooms_load", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=(OURS, PEER), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--setup", required=True, help="the JSON file of bench.ws_setup.prepare_lounges")
    parser.add_argument("--first", type=int, default=0, help="the first lounge of this process")
    parser.add_argument("--count", type=int, default=0, help="lounges of this process")
    parser.add_argument("--coach", action="store_true", help="hold the coach lounges instead (ours)")
    parser.add_argument("--concurrency", type=int, default=50, help="sockets being opened at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="bound on opening one socket")
    args = parser.parse_args(argv)
    raise_nofile()
    run_on_fastest_loop(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
