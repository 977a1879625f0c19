"""Who started which process: fork events from the kernel's process connector.

A replica's servers are usually started with `nohup ... &`, so by the time anyone looks at `/proc`
they have been re-parented to the sandbox's init and their creator is lost. The kernel announces
every fork on a netlink socket (root only), before any user code of the child runs; recording
those events keeps the true parent of every process, which no process can forge or hide.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

import psutil

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
NLMSG_HDR = 16
CN_MSG = 20
EVENT_DATA = NLMSG_HDR + CN_MSG + 16  # what, cpu, timestamp_ns precede the event's union
RCVBUF = 8 << 20
KEEP_SECONDS = 6 * 3600  # longer than any trial and its judging
PRUNE_AT = 200_000


class LineageUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Fork:
    parent: int  # host tgid
    child: int  # host tgid
    t: float  # time.time() when the harness received the event


class ForkMonitor:
    """Records every process creation on the host while it runs (one per harness process)."""

    def __init__(self) -> None:
        self.parent_of: dict[int, Fork] = {}
        self.lost = 0  # events dropped by the kernel (receive buffer overrun), if any
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, CN_IDX_PROC))
            op = struct.pack("I", PROC_CN_MCAST_LISTEN)
            cn = struct.pack("IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(struct.pack("IHHII", NLMSG_HDR + len(cn), 3, 0, 0, 0) + cn)
        except OSError as e:
            raise LineageUnavailable(
                f"cannot listen to the kernel's process events ({e}); this needs root and a kernel "
                "with CONFIG_PROC_EVENTS") from e
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="redline-fork-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError as e:
                if e.errno == 105:  # ENOBUFS: the kernel dropped events
                    self.lost += 1
                    continue
                return
            now = time.time()
            off = 0
            while off + EVENT_DATA + 16 <= len(data):
                length = struct.unpack_from("I", data, off)[0]
                what = struct.unpack_from("I", data, off + NLMSG_HDR + CN_MSG)[0]
                if what == PROC_EVENT_FORK:
                    _, ptgid, cpid, ctgid = struct.unpack_from("IIII", data, off + EVENT_DATA)
                    if cpid == ctgid:  # a new process, not a new thread
                        with self._lock:
                            self.parent_of[ctgid] = Fork(ptgid, ctgid, now)
                            if len(self.parent_of) > PRUNE_AT:
                                self._prune(now)
                off += max(length, NLMSG_HDR)
                off = (off + 3) & ~3

    def _prune(self, now: float) -> None:
        self.parent_of = {k: f for k, f in self.parent_of.items() if now - f.t < KEEP_SECONDS}

    def ancestors(self, host_pid: int, limit: int = 64) -> list[int]:
        """The creators of `host_pid`, nearest first, as far as the record (or /proc) goes."""
        chain: list[int] = []
        pid = host_pid
        for _ in range(limit):
            with self._lock:
                fork = self.parent_of.get(pid)
            parent = fork.parent if fork is not None else _proc_ppid(pid)
            if not parent or parent in chain:
                break
            chain.append(parent)
            pid = parent
        return chain


def _proc_ppid(pid: int) -> int:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0


_monitor: ForkMonitor | None = None
_monitor_lock = threading.Lock()


def start_fork_monitor() -> ForkMonitor:
    """Start the harness's fork monitor (one per harness process), or return the running one.

    Call it before the processes whose lineage matters are created: forks before it are not on
    record. Raises LineageUnavailable without root or without the kernel's process connector.
    """
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            m = ForkMonitor()
            m.start()
            _monitor = m
        return _monitor


def running_fork_monitor() -> ForkMonitor | None:
    """The fork monitor if one was started; never starts one (a late start would see nothing)."""
    return _monitor
