"""Several web processes on one port: ``python -m server serve --workers N``.

The supervisor binds the listening socket once, then forks N children. Each child is
a complete node — its own app, database pool, Redis connections, hubs and gateway —
accepting from the shared socket, so the kernel spreads new connections over them and
the nodes reach each other through Redis exactly as nodes on different hosts do. The
children are forked after the app's modules are imported and frozen out of the
garbage collector, so those pages stay shared between them.

SIGTERM or SIGINT to the supervisor is passed to every child: each drains its sockets
(:mod:`server.gateway.shutdown`) at the same time, and the supervisor exits once all
have. A second signal is passed on too (the children stop at once). A child that dies
on its own is replaced; one that keeps dying within ``CRASH_WINDOW`` seconds of its
start ``MAX_QUICK_CRASHES`` times in a row stops the group (a broken configuration
would otherwise fork forever).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("lounges.web")

CRASH_WINDOW = 10.0  # seconds: a child dying sooner after its start counts as a quick crash
MAX_QUICK_CRASHES = 5
RESTART_DELAY = 0.5  # seconds between a child's death and its replacement


class ProcessGroup:
    """``count`` children running ``serve_child(listener)``, supervised by this process."""

    def __init__(
        self,
        count: int,
        listener: socket.socket,
        serve_child: Callable[[socket.socket], None],
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._count = count
        self._listener = listener
        self._serve_child = serve_child
        self._on_exit = on_exit  # told each child's pid once it has ended (its metrics stop being live)
        self._children: dict[int, float] = {}  # pid -> start time
        self._stopping = False
        self._quick_crashes = 0

    def run(self) -> int:
        """Run until the children are gone; the exit status for the supervisor."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        for _ in range(self._count):
            self._spawn()
        log.info("web processes started", extra={"workers": self._count, "pids": sorted(self._children)})
        status = 0
        while self._children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            started = self._children.pop(pid, None)
            if started is None:
                continue
            if self._on_exit is not None:
                self._on_exit(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self._stopping:
                # uvicorn ends a server stopped by a signal by raising that signal again once
                # it is done (after the drain): such a child ended as asked.
                status = status or int(code not in (0, -signal.SIGTERM, -signal.SIGINT))
            elif not self._replace(pid, code, started):
                status = 1
        return status

    def _replace(self, pid: int, code: int, started: float) -> bool:
        """Start another child in place of ``pid``; ``False`` when the group gives up instead."""
        log.error("a web process died; starting another", extra={"pid": pid, "exit": code})
        self._quick_crashes = self._quick_crashes + 1 if time.monotonic() - started < CRASH_WINDOW else 0
        if self._quick_crashes >= MAX_QUICK_CRASHES:
            log.error("web processes keep dying at start; stopping", extra={"crashes": self._quick_crashes})
            self._stopping = True
            self._signal_children(signal.SIGTERM)
            return False
        time.sleep(RESTART_DELAY)
        if not self._stopping:
            self._spawn()
        return True

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the child: a node of its own, serving the inherited socket
            code = 0
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                self._serve_child(self._listener)
            except BaseException:
                log.exception("web process failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self._children[pid] = time.monotonic()

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("stopping web processes", extra={"signal": signal.Signals(sig).name})
        self._stopping = True
        self._signal_children(sig)

    def _signal_children(self, sig: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
