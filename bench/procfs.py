"""CPU pinning and ``/proc`` readings for benchmark processes (Linux only, stdlib only)."""

from __future__ import annotations

import os
from collections.abc import Callable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def available_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def pin_preexec(cpu: int | None, nofile: int | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child to one CPU (``None``: leave it unpinned) and, with
    ``nofile``, raising its open-file limit to that many (capped at the hard limit)."""
    if cpu is None and nofile is None:
        return None

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nofile is not None:
            raise_nofile(nofile)

    return pin


def raise_nofile(wanted: int | None = None) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to ``wanted`` (default: the hard limit),
    never above the hard limit; returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else wanted
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def nofile_limits() -> tuple[int, int]:
    """(soft, hard) ``RLIMIT_NOFILE`` of this process."""
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kib(pid: int) -> int | None:
    """Resident set size (``VmRSS``) of ``pid`` in KiB; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time consumed so far by ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def scheduled_seconds(pid: int) -> float | None:
    """CPU time of all ``pid``'s threads so far, to the nanosecond: the scheduler's own account
    (``/proc/<pid>/task/*/schedstat``), where :func:`cpu_seconds` counts 10 ms clock ticks.
    ``None`` if it is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    nanoseconds = 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as stat:
                nanoseconds += int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return nanoseconds / 1e9


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, summed over CPUs (``/proc/stat``).

    ``steal`` is time a virtual CPU was ready but the hypervisor ran something
    else: on a VM it is the share of the host other tenants took.
    """
    with open("/proc/stat", "rb") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def machine_busy_percent(interval: float = 1.0) -> float:
    """CPU in use on the machine over ``interval`` seconds, in percent of one CPU (2 busy CPUs: 200)."""
    import time

    busy0, _ = machine_cpu_seconds()
    start = time.perf_counter()
    time.sleep(interval)
    busy1, _ = machine_cpu_seconds()
    return 100 * (busy1 - busy0) / (time.perf_counter() - start)


def wait_for_quiet(max_wait: float, threshold: float = 15.0, interval: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until the machine uses < ``threshold``% of one CPU; returns the last reading.

    On a shared machine this keeps other jobs' bursts out of a run when it can;
    the caller records the reading either way.
    """
    import time

    deadline = time.monotonic() + max_wait
    while True:
        busy = machine_busy_percent(interval)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


# -- a process and its descendants (``serve --workers N``: a supervisor and N forked nodes) ------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``/proc/<pid>/task/<tid>/children``); ``[]`` if it is gone."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as listing:
                found += [int(child) for child in listing.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all its descendants (depth first)."""
    tree = [pid]
    for child in children(pid):
        tree += process_tree(child)
    return tree


def tree_rss_kib(pid: int) -> int | None:
    """``VmRSS`` summed over ``pid`` and its descendants; ``None`` if ``pid`` is gone.

    Pages a forked child still shares with its parent count once per process:
    use differences (before/after), or :func:`pss_kib` for the group's real share.
    """
    readings = [rss_kib(p) for p in process_tree(pid)]
    if readings[0] is None:
        return None
    return sum(r for r in readings if r is not None)


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants; ``None`` if ``pid`` is gone."""
    return _tree_sum(pid, cpu_seconds)


def tree_scheduled_seconds(pid: int) -> float | None:
    """:func:`scheduled_seconds` of ``pid`` and its live descendants; ``None`` if ``pid`` is gone."""
    return _tree_sum(pid, scheduled_seconds)


def _tree_sum(pid: int, reading: Callable[[int], float | None]) -> float | None:
    readings = [reading(p) for p in process_tree(pid)]
    if readings[0] is None:
        return None
    return sum(r for r in readings if r is not None)


def pss_kib(pid: int) -> int | None:
    """Proportional set size of ``pid`` (``/proc/<pid>/smaps_rollup``): shared pages divided
    among the processes sharing them, so a group's PSS adds up to what it really holds."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _socket_inodes(port: int, states: set[str]) -> set[str]:
    """Inodes of the TCP sockets whose *local* port is ``port`` in one of ``states``
    (``/proc/net/tcp`` codes: ``01`` established, ``0A`` listening)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in states:
                        inodes.add(fields[9])
        except FileNotFoundError:
            continue
    return inodes


def _fds_of(pid: int, inodes: set[str]) -> list[int]:
    """``pid``'s file descriptors that are sockets with one of ``inodes``."""
    found: list[int] = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.append(int(name))
    return found


def sockets_by_process(pid: int, port: int) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by ``pid`` and each descendant
    (a server's clients, per process)."""
    inodes = _socket_inodes(port, {"01"})
    return {p: len(_fds_of(p, inodes)) for p in process_tree(pid)}


def accepting(pid: int, port: int) -> bool:
    """Whether ``pid``'s event loop watches its listening socket on ``port``: one of its
    epoll instances lists that descriptor (``tfd:`` lines of ``/proc/<pid>/fdinfo``). A
    forked node does so once it has started up and accepts connections."""
    listening = set(_fds_of(pid, _socket_inodes(port, {"0A"})))
    if not listening:
        return False
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{name}", "rb") as info:
                watched = {int(line.split()[1]) for line in info if line.startswith(b"tfd:")}
        except OSError:
            continue
        if watched & listening:
            return True
    return False
