"""The `redline` Inspect sandbox provider: a thin async layer over `core.Sandbox`."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    sandboxenv,
)
from inspect_ai.util._sandbox.limits import SandboxEnvironmentLimits
from pydantic import BaseModel
from typing_extensions import override

from redline.sandbox import files, procs
from redline.sandbox.cgroups import preflight
from redline.sandbox.config import RedlineSandboxConfig, load_config
from redline.sandbox.core import FILE_TIMEOUT, READ_LIMIT, OutputTooLarge, Sandbox
from redline.sandbox.sweep import live_sandboxes, sweep

logger = logging.getLogger(__name__)
T = TypeVar("T")


@sandboxenv(name="redline")
class RedlineSandboxEnvironment(SandboxEnvironment):
    """A contained Linux sandbox: namespaces, copy-on-write allowlisted root, cgroup caps, only `lo`."""

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__()
        self.sandbox = sandbox
        # Harness services bound to this sandbox (e.g. its model router), closed before it is destroyed.
        self.on_cleanup: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return RedlineSandboxConfig(**config)

    @classmethod
    def default_concurrency(cls) -> int | None:
        # Each sample runs two servers plus the agent's work; 2 per core keeps the host responsive.
        return max(2, 2 * (os.cpu_count() or 1))

    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        cfg = load_config(config)
        # Before any sample starts: a host that cannot cap sandboxes is one clear error here.
        preflight(cfg)
        removed = sweep(Path(cfg.state_root))
        if removed:
            logger.warning("redline: removed %d stale sandbox(es) of dead runs", len(removed))
        # The containment self-check against this exact config, before the first sample.
        from redline import selfcheck

        await selfcheck.before_task(cfg)

    @classmethod
    async def sample_init(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, metadata: dict[str, str]
    ) -> dict[str, SandboxEnvironment]:
        cfg = load_config(config)
        from redline import selfcheck

        selfcheck.require(cfg)  # a failed containment self-check: no sandbox, the sample errors
        sb = Sandbox.create(cfg)
        return {"default": cls(sb)}

    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        for env in environments.values():
            if isinstance(env, RedlineSandboxEnvironment):
                for close in reversed(env.on_cleanup):
                    try:
                        await close()
                    except Exception:  # noqa: BLE001 - the sandbox must be destroyed regardless
                        logger.exception("redline: a cleanup hook failed")
                env.sandbox.destroy()

    @classmethod
    async def task_cleanup(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool
    ) -> None:
        if cleanup:
            sweep(Path(load_config(config).state_root))

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        root = Path(RedlineSandboxConfig.model_fields["state_root"].default)
        removed = sweep(root, only_id=id)
        alive = live_sandboxes(root)
        print(f"redline: removed {len(removed)} leftover sandbox(es)")
        if alive:
            print(f"redline: {len(alive)} sandbox(es) still owned by running harnesses: {alive}")

    # ------------------------------------------------------------- contract
    @override
    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        data = input.encode() if isinstance(input, str) else input
        limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
        try:
            r = await self.sandbox.run(
                cmd, input=data, user=user, cwd=cwd, env=env, timeout=timeout, output_limit=limit
            )
        except OutputTooLarge as e:
            raise OutputLimitExceededError(
                SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR, e.tail
            ) from None
        if r.exec_errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC):
            raise PermissionError(r.exec_errno, f"cannot execute {cmd[0]}", cmd[0])
        return ExecResult(
            success=r.returncode == 0,
            returncode=r.returncode,
            stdout=r.stdout.decode(errors="replace"),
            stderr=r.stderr.decode(errors="replace"),
        )

    async def _file(self, op: Callable[[int, float], T], user: str | None, timeout: float) -> T:
        fut = self.sandbox.file_op(op, user, timeout)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except TimeoutError:
            raise TimeoutError(f"sandbox file access took more than {timeout} s") from None

    @override
    async def write_file(self, file: str, contents: str | bytes) -> None:
        await self.write_file_as(file, contents, user=None)

    async def write_file_as(self, file: str, contents: str | bytes, user: str | None,
                            timeout: float = FILE_TIMEOUT) -> None:
        """Write as `user` (default: the agent user, so the agent owns what the harness gives it).

        Resolved inside the sandbox root; parents are created; only a regular file (or a new one)
        is written: a FIFO, socket or device at `file` is a PermissionError, never a hang.
        """
        path = self._path(file)
        data = contents.encode() if isinstance(contents, str) else contents
        try:
            await self._file(lambda root, dl: files.write(root, path, data, dl), user, timeout)
        except (FileNotFoundError, IsADirectoryError, PermissionError, TimeoutError):
            raise
        except NotADirectoryError as e:
            raise PermissionError(f"cannot write {path}: a parent is not a directory") from e
        except OSError as e:
            raise PermissionError(f"cannot write {path}: {e.strerror or e}") from e

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    @override
    async def read_file(self, file: str, text: bool = True) -> str | bytes:
        """Inspect's read, as the agent user, inside the sandbox root only (see files.py)."""
        path = self._path(file)
        limit = SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
        try:
            data = await self._file(lambda root, dl: files.read(root, path, limit, dl), None, FILE_TIMEOUT)
        except files.FileTooLarge:
            raise OutputLimitExceededError(SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, None) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError, TimeoutError):
            raise
        except NotADirectoryError:
            raise FileNotFoundError(f"{path} not found in sandbox") from None
        except OSError as e:  # symlink loops, magic links refused, ...
            raise PermissionError(f"cannot read {path}: {e.strerror or e}") from e
        return data.decode("utf-8") if text else data

    async def read_bytes(self, file: str, limit: int = READ_LIMIT, timeout: float = FILE_TIMEOUT,
                         user: str | None = None, truncate: bool = False) -> bytes | None:
        """Hostile data -> no data: at most `limit` bytes of a regular file inside the sandbox,
        read as `user` (default: the agent) within `timeout` seconds; None when the file is
        missing, unreadable, not a regular file, larger than `limit` (unless `truncate`: then
        its first `limit` bytes), or slow. For the judge and solver's reads of agent files."""
        path = self._path(file)
        try:
            return await self._file(lambda root, dl: files.read(root, path, limit, dl, truncate),
                                    user, timeout)
        except (OSError, TimeoutError, RuntimeError):
            return None

    def _path(self, file: str) -> str:
        return file if file.startswith("/") else f"{self.sandbox.home}/{file}"

    # ------------------------------------------------------------- harness extras
    @property
    def channel_dir(self) -> Path:
        return self.sandbox.channel_dir

    @property
    def containment(self) -> dict[str, Any]:
        """The containment record of this sample's sandbox, for the eval log."""
        return self.sandbox.containment

    def cgroup_events(self) -> dict[str, int | None]:
        """{"oom_kill", "memory_max", "pids_max"} counters of this sandbox's caps (None: not capped)."""
        return self.sandbox.events()

    def disk_usage(self) -> tuple[int, int, bool] | None:
        """(bytes used, size, full) of this sandbox's writable layer (the disk cap); None once gone."""
        return self.sandbox.disk_usage()

    async def processes(self) -> list[procs.ProcInfo]:
        return await asyncio.to_thread(self.sandbox.processes)

    async def listening_ports(self) -> dict[int, int]:
        return await asyncio.to_thread(self.sandbox.listening_ports)

    async def connections(self) -> list[procs.Connection]:
        return await asyncio.to_thread(self.sandbox.connections)

    def host_pid_to_inner(self, host_pid: int) -> int | None:
        return self.sandbox.host_pid_to_inner(host_pid)

    async def tcp_socket(self) -> socket.socket:
        """A harness-owned TCP socket in the sandbox's network namespace (not connected)."""
        return await asyncio.wrap_future(self.sandbox.socket_future())

    async def unix_peer_inode(self, fd: int) -> int | None:
        """The inode of the far end of a Unix connection a sandbox process made to a harness
        socket (the kernel files the accepted socket under the connecting side's network
        namespace, so the question is asked from inside it)."""
        try:
            nl = await asyncio.wrap_future(self.sandbox.socket_future(
                socket.AF_NETLINK, socket.SOCK_DGRAM, procs.NETLINK_SOCK_DIAG))
        except OSError:
            return None
        with nl:
            return await asyncio.to_thread(procs.unix_peer_inode, fd, nl)

    async def socket_holders(self, inodes: set[int], infos: list[procs.ProcInfo] | None = None
                             ) -> dict[int, list[int]]:
        """inode -> inside pids of the processes holding that socket (all of them)."""
        listed = infos if infos is not None else await self.processes()
        return await asyncio.to_thread(procs.holders, listed, inodes)

    async def tcp_table(self) -> list[procs.TcpSocket]:
        """The sandbox's TCP sockets (its network namespace's /proc/net/tcp{,6})."""
        return await asyncio.to_thread(procs.tcp_table, self.sandbox.init_pid)

    def signal_masks(self, pid: int, infos: list[procs.ProcInfo]) -> tuple[int, int] | None:
        """(caught, ignored) signal masks of inside pid `pid` (see procs.signal_masks)."""
        host = next((p.host_pid for p in infos if p.pid == pid), None)
        return procs.signal_masks(host) if host is not None else None

    async def kill(self, pids: list[int], sig: int = signal.SIGKILL) -> list[int]:
        return self.sandbox.kill(pids, sig)
