"""Who started which process: fork, exec and exit events from the kernel's process connector.

A replica's servers are usually started with `nohup ... &`, so by the time anyone looks at `/proc`
they have been re-parented to the sandbox's init and their creator is lost. The kernel announces
every fork, exec and exit on a netlink socket (root only), before any user code of a new child
runs; recording those events keeps the true parent of every process, which no process can forge
or hide.

A process is identified by its host pid *and* its start time (clock ticks since boot, field 22
of `/proc/PID/stat`): pids are reused (here `pid_max` is 32768, so an agent can cycle through
them in seconds), and a record keyed by pid alone would let a later process inherit an earlier
one's place in the tree. Each parent link is (pid, start) of the parent at fork time.

One recorder runs per harness process (`start_recorder`); each sandbox registers a `Scope` (its
pid namespace), and only the processes of registered scopes are kept, bounded in count. Without
root, or on a kernel without CONFIG_PROC_EVENTS, `start_recorder` raises `LineageUnavailable`:
there is then no fork record (the judge says so, the genealogy is left out of the log, and the
judge's "it acted" check falls back to what `/proc` shows while a greeting runs).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
NLMSG_HDR = 16
CN_MSG = 20
EVENT_HDR = NLMSG_HDR + CN_MSG  # what (u32), cpu (u32), timestamp_ns (u64), then the event's union
EVENT_DATA = EVENT_HDR + 16
RCVBUF = 8 << 20
DELIVERY_WAIT = 10.0  # seconds for the first event after subscribing (generous: a loaded host)
MAX_RECORDS = 100_000  # processes kept per scope; later ones are counted in `lost`
PENDING = 50_000  # events of not (yet) attributed processes kept, for late attribution
CMD_BYTES = 4096
CLK_TCK = os.sysconf("SC_CLK_TCK")

Key = tuple[int, int]  # (host pid, start time in clock ticks since boot)


class LineageUnavailable(RuntimeError):
    pass


@dataclass(slots=True)
class ProcRecord:
    """One process of a scope, as the kernel announced it."""

    host_pid: int
    start: int
    parent: Key | None  # the parent at fork time (None: not of this scope, e.g. the harness)
    pid: int | None  # inside the sandbox's pid namespace (None: gone before it could be read)
    ppid: int | None
    t_fork: float
    cmd: list[str] = field(default_factory=list)
    t_exec: float | None = None
    t_exit: float | None = None
    exit_code: int | None = None  # negative: killed by that signal
    children: int = 0  # forks it made

    @property
    def key(self) -> Key:
        return self.host_pid, self.start


def read_start(host_pid: int) -> int | None:
    try:
        raw = open(f"/proc/{host_pid}/stat").read()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2:].split()[19])


def _ns_pid(host_pid: int, level: int) -> int | None:
    try:
        for line in open(f"/proc/{host_pid}/status"):
            if line.startswith("NSpid:"):
                pids = line.split()[1:]
                return int(pids[level]) if len(pids) > level else None
    except (OSError, ValueError):
        pass
    return None


def _cmdline(host_pid: int) -> list[str]:
    """The command line; a process that has exited already (a zombie: empty cmdline) keeps its
    program's name, from `comm`."""
    try:
        with open(f"/proc/{host_pid}/cmdline", "rb") as f:
            raw = f.read(CMD_BYTES)
        if not raw:
            with open(f"/proc/{host_pid}/comm", "rb") as f:
                raw = f.read(64).rstrip(b"\n")
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _pidns(host_pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{host_pid}/ns/pid")
    except OSError:
        return None


class Scope:
    """The processes of one sandbox (one pid namespace), keyed by (host pid, start)."""

    def __init__(self, pidns: str, level: int, max_records: int = MAX_RECORDS) -> None:
        self.pidns = pidns
        self.level = level
        self.max_records = max_records
        self.records: dict[Key, ProcRecord] = {}
        self.current: dict[int, Key] = {}  # host pid -> key of the latest process with that pid
        self.lost = 0
        self.lock = threading.Lock()

    # -------------------------------------------------------------- written by the recorder thread
    def add(self, host_pid: int, parent: Key | None, t: float, start: int) -> ProcRecord | None:
        if len(self.records) >= self.max_records:
            self.lost += 1
            return None
        rec = ProcRecord(host_pid, start, parent, _ns_pid(host_pid, self.level), None, t)
        prec = self.records.get(parent) if parent is not None else None
        if prec is not None:
            rec.ppid = prec.pid
            prec.children += 1
            rec.cmd = prec.cmd  # a fork runs its parent's program until it execs (shared, not copied)
        else:
            rec.cmd = _cmdline(host_pid)
        with self.lock:
            self.records[rec.key] = rec
            self.current[host_pid] = rec.key
        return rec

    def of_pid(self, host_pid: int) -> ProcRecord | None:
        key = self.current.get(host_pid)
        return self.records.get(key) if key is not None else None

    # -------------------------------------------------------------- read by the judge
    def snapshot(self) -> list[ProcRecord]:
        with self.lock:
            return list(self.records.values())

    def get(self, key: Key) -> ProcRecord | None:
        with self.lock:
            return self.records.get(key)

    def ancestors(self, key: Key, limit: int = 256) -> list[ProcRecord]:
        """The creators of process `key`, nearest first, as far as the record goes (each link by
        pid *and* start time: a reused pid never continues the line)."""
        out: list[ProcRecord] = []
        seen = {key}
        rec = self.get(key)
        while rec is not None and rec.parent is not None and len(out) < limit:
            if rec.parent in seen:
                break
            seen.add(rec.parent)
            rec = self.get(rec.parent)
            if rec is not None:
                out.append(rec)
        return out

    def descends_from(self, key: Key, root: Key) -> bool:
        return any(r.key == root for r in self.ancestors(key))


class ProcessRecorder:
    """Receives the host's process events (one per harness process) and keeps those of the
    registered scopes."""

    def __init__(self) -> None:
        self.scopes: dict[str, Scope] = {}
        self.lost = 0  # receive-buffer overruns (ENOBUFS): events the kernel dropped
        self._pending: deque[tuple[int, int, float, int]] = deque()  # (host pid, parent, t, start)
        self._pending_by_pid: dict[int, tuple[int, float, int]] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Event timestamps are monotonic; start times count from boot (suspend included).
        self._clock = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

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
        if not _delivers(sock):
            sock.close()
            raise LineageUnavailable(
                "the kernel's process connector delivers no events to this harness")
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="redline-process-recorder", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- scopes
    def register(self, init_host_pid: int, max_records: int = MAX_RECORDS) -> Scope:
        """The scope of the sandbox whose init is `init_host_pid` (its pid namespace)."""
        pidns = _pidns(init_host_pid)
        level = len(_ns_pids(init_host_pid)) - 1
        if pidns is None or level < 0:
            raise LineageUnavailable(f"no pid namespace for pid {init_host_pid}")
        with self._lock:
            scope = self.scopes.get(pidns)
            if scope is None:
                scope = self.scopes[pidns] = Scope(pidns, level, max_records)
        return scope

    def unregister(self, scope: Scope) -> None:
        with self._lock:
            if self.scopes.get(scope.pidns) is scope:
                del self.scopes[scope.pidns]

    # -------------------------------------------------------------- events
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
            while off + EVENT_DATA + 8 <= len(data):
                length = struct.unpack_from("I", data, off)[0]
                if self.scopes:
                    self._event(data, off, now)
                off += max(length, NLMSG_HDR)
                off = (off + 3) & ~3

    def _event(self, data: bytes, off: int, now: float) -> None:
        what, _, ts = struct.unpack_from("IIQ", data, off + EVENT_HDR)
        base = off + EVENT_DATA
        if what == PROC_EVENT_FORK and base + 16 <= len(data):
            _, ptgid, cpid, ctgid = struct.unpack_from("IIII", data, base)
            if cpid == ctgid:  # a new process, not a new thread
                self._fork(ptgid, ctgid, now, ts)
        elif what == PROC_EVENT_EXEC and base + 8 <= len(data):
            pid, tgid = struct.unpack_from("II", data, base)
            rec = self._find(tgid)
            if rec is not None and pid == tgid:
                rec.cmd, rec.t_exec = _cmdline(tgid), now
        elif what == PROC_EVENT_EXIT and base + 16 <= len(data):
            pid, tgid, code, _ = struct.unpack_from("IIII", data, base)
            rec = self._find(tgid)
            if rec is not None and pid == tgid:
                rec.t_exit, rec.exit_code = now, -(code & 0x7F) if code & 0x7F else code >> 8
            self._pending_by_pid.pop(tgid, None)

    def _find(self, host_pid: int) -> ProcRecord | None:
        for scope in list(self.scopes.values()):
            rec = scope.of_pid(host_pid)
            if rec is not None and rec.t_exit is None:
                return rec
        return None

    def _ticks(self, ts_ns: int) -> int:
        """A start time from the event's timestamp, for a process gone before /proc was read."""
        return (ts_ns + self._clock) * CLK_TCK // 1_000_000_000

    def _fork(self, parent: int, child: int, now: float, ts: int) -> None:
        prec = self._find(parent)
        if prec is not None:
            scope = next(s for s in self.scopes.values() if s.of_pid(parent) is prec)
            scope.add(child, prec.key, now, read_start(child) or self._ticks(ts))
            return
        # Not the child of a process we keep: a command the harness starts enters a sandbox this
        # way (its helper forks into the pid namespace), and so does a process whose parent we
        # have not attributed yet. Its pid namespace says where it belongs.
        scope = self.scopes.get(_pidns(child) or "")
        if scope is None:
            self._remember(child, parent, now, self._ticks(ts))
            return
        pkey = self._adopt(scope, parent)
        scope.add(child, pkey, now, read_start(child) or self._ticks(ts))

    def _remember(self, child: int, parent: int, now: float, start: int) -> None:
        entry = (parent, now, start)
        self._pending.append((child, *entry))
        self._pending_by_pid[child] = entry
        while len(self._pending) > PENDING:
            old, *rest = self._pending.popleft()
            if self._pending_by_pid.get(old) == tuple(rest):
                del self._pending_by_pid[old]

    def _adopt(self, scope: Scope, host_pid: int, depth: int = 0) -> Key | None:
        """Attribute an earlier, unattributed process `host_pid` (a parent that has already
        exited, e.g. a launcher shell) to `scope`, with its own unattributed forebears."""
        known = scope.of_pid(host_pid)
        if known is not None:
            return known.key
        pending = self._pending_by_pid.get(host_pid)
        if pending is None or depth > 64:
            return None
        parent, t, start = pending
        if parent == os.getpid() or _pidns(host_pid) not in (None, scope.pidns):
            return None  # the sandbox's entry point (the exec helper, a child of the harness)
        pkey = self._adopt(scope, parent, depth + 1)
        rec = scope.add(host_pid, pkey, t, read_start(host_pid) or start)
        self._pending_by_pid.pop(host_pid, None)
        return rec.key if rec is not None else None


def _ns_pids(host_pid: int) -> list[int]:
    try:
        for line in open(f"/proc/{host_pid}/status"):
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


_recorder: ProcessRecorder | None = None
_recorder_lock = threading.Lock()


def _delivers(sock: socket.socket, wait: float = DELIVERY_WAIT) -> bool:
    """Whether `sock` receives process events (a child started now makes at least one): a record
    that subscribed but stays silent would make every replica look as if nothing ran."""
    child = subprocess.Popen(["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return False
            except OSError as e:
                if e.errno == 105:  # ENOBUFS: events were dropped, so events do arrive
                    return True
                return False
            off = 0
            while off + EVENT_DATA <= len(data):
                length = struct.unpack_from("I", data, off)[0]
                what = struct.unpack_from("I", data, off + EVENT_HDR)[0]
                if what in (PROC_EVENT_FORK, PROC_EVENT_EXEC):  # the child's, or anyone's: events flow
                    return True
                off = (off + max(length, NLMSG_HDR) + 3) & ~3
        return False
    finally:
        sock.settimeout(None)
        child.wait()


def start_recorder() -> ProcessRecorder:
    """Start the harness's process recorder (one per harness process), or return the running one.

    Register a sandbox's scope before the processes whose lineage matters are created: forks
    before that are not on record. Raises LineageUnavailable without root or without the
    kernel's process connector.
    """
    global _recorder
    with _recorder_lock:
        if _recorder is None:
            r = ProcessRecorder()
            r.start()
            _recorder = r
        return _recorder


def running_recorder() -> ProcessRecorder | None:
    """The recorder if one was started; never starts one (a late start would see nothing)."""
    return _recorder
