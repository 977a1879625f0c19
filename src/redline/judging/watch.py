"""Identity from sockets: who accepted the judge's connection, who else holds it, what that
process talked to, and (without the kernel's fork record) what it started meanwhile.

The judge never guesses a process from a port. A candidate agent *is* the process that accepted
the judge's own connection (the kernel's TCP table gives the server end of that connection, and
`/proc/PID/fd` gives every process holding it); every process holding any socket of that
process is part of it (a child sharing its listening socket, a helper it handed a connection
to). Likewise a model server is the process that accepted the agent's connection to it. All of
this is polled while an exchange runs, bounded in time, from the host's view of the sandbox.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from redline.sandbox import ProcInfo, RedlineSandboxEnvironment, procs
from redline.sandbox.procs import TCP_ESTABLISHED, TcpSocket

WATCH_SECONDS = 0.1
REFRESH_SECONDS = 1.0  # how often the process list is read again while watching
MAX_SEEN = 50  # new processes kept (proc-scan fallback)


@dataclass
class Seen:
    """What a watch observed."""

    acceptors: set[int] = field(default_factory=set)
    group: set[int] = field(default_factory=set)
    servers: dict[int, int] = field(default_factory=dict)  # pid -> port: accepted a connection of the watched
    # (pid, start) -> (first seen, command line): processes that appeared below the watched
    new_below: dict[tuple[int, int], tuple[float, list[str]]] = field(default_factory=dict)


def descendants_of(infos: list[ProcInfo], roots: set[int]) -> set[int]:
    """`roots` and every process below them (by parent links at this moment)."""
    children: dict[int, list[int]] = {}
    for p in infos:
        children.setdefault(p.ppid, []).append(p.pid)
    out, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in out:
            out.add(pid)
            stack.extend(children.get(pid, []))
    return out


def server_ends(table: list[TcpSocket], client_inodes: set[int]) -> dict[int, int]:
    """Server-side socket inode -> port, for each established connection whose client end is one
    of `client_inodes` (the server end is the socket with the same four-tuple reversed)."""
    ends = {(s.local_port, s.remote_port): s for s in table if s.state == TCP_ESTABLISHED}
    out: dict[int, int] = {}
    for s in table:
        if s.state == TCP_ESTABLISHED and s.inode in client_inodes:
            other = ends.get((s.remote_port, s.local_port))
            if other is not None and other.inode and other.inode not in client_inodes:
                out[other.inode] = other.local_port
    return out


class ConnWatch:
    """Watches one exchange with a server on `port` inside the sandbox.

    `accepted(client_port)` (pass it to `inside.request` as `connected`) waits until a process
    holds the server end of the judge's connection; `run(stop)` then polls until `stop` is set:
    every holder of that connection, the candidate's group, the servers it connected to, and,
    with `scan_new`, processes that appeared below it.
    """

    def __init__(self, env: RedlineSandboxEnvironment, port: int, infos: list[ProcInfo],
                 accept_timeout: float, scan_new: bool = False, watched: set[int] | None = None) -> None:
        self.env = env
        self.port = port
        self.infos = infos
        self.accept_timeout = accept_timeout
        self.scan_new = scan_new
        self.known = {(p.pid, p.start_time) for p in infos}
        self.watched = watched  # the processes whose connections count (default: the acceptors)
        self.inode = 0
        self.seen = Seen()
        self._refreshed = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def accepted(self, client_port: int) -> bool:
        deadline = time.monotonic() + self.accept_timeout
        while time.monotonic() < deadline:
            table = await self.env.tcp_table()
            end = next((s for s in table if s.local_port == self.port and s.remote_port == client_port
                        and s.state == TCP_ESTABLISHED), None)
            if end is not None and end.inode:
                self.inode = end.inode
                await self.tick(table)
                if not self.seen.acceptors:  # a process the list does not have yet
                    await self._refresh(force=True)
                    await self.tick(table)
                if self.seen.acceptors:
                    self._task = asyncio.ensure_future(self._run())
                    return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self) -> Seen:
        self._stop.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:  # noqa: BLE001 - a failed poll loses observations, never the greeting
                pass
        return self.seen

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), WATCH_SECONDS)
            except TimeoutError:
                pass
            await self._refresh(force=self.scan_new)
            await self.tick(await self.env.tcp_table())

    async def _refresh(self, force: bool) -> None:
        if force or time.monotonic() - self._refreshed >= REFRESH_SECONDS:
            self.infos = await self.env.processes()
            self._refreshed = time.monotonic()

    async def tick(self, table: list[TcpSocket]) -> None:
        held = await asyncio.to_thread(procs.sockets_of, self.infos)
        s = self.seen
        s.acceptors |= {pid for pid, inodes in held.items() if self.inode in inodes}
        core = self.watched if self.watched is not None else s.acceptors
        mine = set().union(*(held.get(pid, set()) for pid in core)) if core else set()
        s.group |= {pid for pid, inodes in held.items() if inodes & mine}
        for inode, port in server_ends(table, mine).items():
            for pid, inodes in held.items():
                if inode in inodes and pid not in core:
                    s.servers.setdefault(pid, port)
        if self.scan_new and core:
            self._note_new(core)

    def _note_new(self, core: set[int]) -> None:
        below = descendants_of(self.infos, core) - core
        now = time.time()
        for p in self.infos:
            key = (p.pid, p.start_time)
            if p.pid in below and key not in self.known and len(self.seen.new_below) < MAX_SEEN:
                self.seen.new_below.setdefault(key, (now, p.cmdline))
