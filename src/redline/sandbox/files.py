"""Harness access to sandbox files: inside the sandbox root, as a sandbox user, bounded.

Every path is resolved by `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against the
sandbox init's root (`/proc/INIT/root`): an absolute symlink planted by the agent resolves
inside the sandbox, never onto the host, and `/proc/PID/fd/N`, `/proc/PID/root` and the like
are refused. Files on pseudo file systems (/proc, /sys, ...) and anything but regular files
(FIFOs, sockets, devices) are refused before any byte is read, so no read can hang or grow
without bound; reads stop at `limit` bytes actually read. Each operation runs on a thread of
its own whose file-system identity (fsuid/fsgid, no groups) is the sandbox user's host id, so
the kernel checks permissions as it would for that user; the thread ends with the operation.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
SYS_OPENAT2 = 437  # the same number on every architecture (added after the table unification)
SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(os.uname().machine)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
CHUNK = 1 << 16
NO_ID = 0xFFFFFFFF
_libc.setfsuid.argtypes = [ctypes.c_uint32]
_libc.setfsgid.argtypes = [ctypes.c_uint32]
# statfs magics of pseudo file systems whose "regular files" are kernel interfaces.
PSEUDO_FS = {
    0x9FA0: "proc", 0x62656572: "sysfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
    0x64626720: "debugfs", 0x73636673: "securityfs", 0x1CD1: "devpts", 0xCAFE4A11: "bpf",
    0x74726163: "tracefs", 0x6E736673: "nsfs", 0x50495045: "pipefs", 0x534F434B: "sockfs",
}


class NotRegularFile(PermissionError):
    """The path names a FIFO, socket, device or kernel file: the harness never reads those."""


class FileTooLarge(OSError):
    def __init__(self, path: str, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{path} is larger than {limit} bytes")
        self.limit = limit


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


@dataclass(frozen=True)
class Identity:
    """Host uid/gid whose permissions the harness borrows (the sandbox user's mapped ids)."""

    uid: int
    gid: int


def openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


def _fs_type(fd: int) -> int:
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.f_type & 0xFFFFFFFF


def _check_regular(fd: int, path: str) -> os.stat_result:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EPERM, "not a regular file (FIFO, socket or device)", path)
    kind = PSEUDO_FS.get(_fs_type(fd))
    if kind is not None:
        raise NotRegularFile(errno.EPERM, f"a {kind} kernel file, not a regular file", path)
    return st


def _reopen(fd: int, flags: int, path: str) -> int:
    """Open the very inode an O_PATH descriptor names (no second path lookup to race)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None  # the sandbox path, not /proc/self/...


def _become(who: Identity) -> None:
    """This thread only: file-system ids of `who`, no supplementary groups, hence no fs caps."""
    if SYS_SETGROUPS is not None and _libc.syscall(SYS_SETGROUPS, 0, None) != 0:
        raise OSError(ctypes.get_errno(), "setgroups")
    _libc.setfsgid(who.gid)
    _libc.setfsuid(who.uid)
    # An invalid id (-1) changes nothing and returns the current one.
    if (_libc.setfsuid(NO_ID) & NO_ID, _libc.setfsgid(NO_ID) & NO_ID) != (who.uid, who.gid):
        raise PermissionError("cannot take the sandbox user's file-system identity")


def on_own_thread(fn: Callable[[], T], who: Identity | None) -> concurrent.futures.Future[T]:
    """Run `fn` on a fresh thread (as `who`); its credentials die with it."""
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def body() -> None:
        # A caller that gave up (a timeout cancelled the future) gets nothing; once running, the
        # future cannot be cancelled, so setting its outcome never raises here.
        if not fut.set_running_or_notify_cancel():
            return
        try:
            if who is not None:
                _become(who)
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            fut.set_exception(e)

    threading.Thread(target=body, name="redline-file", daemon=True).start()
    return fut


def read(root: int, path: str, limit: int, deadline: float, truncate: bool = False) -> bytes:
    """At most `limit` bytes of the regular file `path` (resolved inside `root`).

    Over the limit: FileTooLarge, or the first `limit` bytes when `truncate`.
    """
    pfd = openat2(root, path, os.O_PATH)
    try:
        st = _check_regular(pfd, path)
        if st.st_size > limit and not truncate:
            raise FileTooLarge(path, limit)  # (a sparse 1 GB file costs nothing to refuse)
        fd = _reopen(pfd, os.O_RDONLY, path)
    finally:
        os.close(pfd)
    try:
        buf = bytearray()
        while len(buf) <= limit:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {path} took too long")
            chunk = os.read(fd, min(CHUNK, limit + 1 - len(buf)))
            if not chunk:
                return bytes(buf)
            buf += chunk
    finally:
        os.close(fd)
    if truncate:
        return bytes(buf[:limit])
    raise FileTooLarge(path, limit)


def _mkdirs(root: int, parent: str) -> None:
    """`mkdir -p` of `parent`, each level resolved inside `root`."""
    parts = [p for p in parent.split("/") if p]
    for i in range(len(parts)):
        sub = "/" + "/".join(parts[: i + 1])
        try:
            fd = openat2(root, sub, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            up = openat2(root, "/" + "/".join(parts[:i]), os.O_PATH | os.O_DIRECTORY)
            try:
                os.mkdir(parts[i], 0o755, dir_fd=up)
            except FileExistsError:
                pass
            finally:
                os.close(up)
            continue
        os.close(fd)


def _open_for_write(root: int, path: str) -> int:
    for _ in range(3):  # the agent may race us between the two opens below
        try:
            pfd = openat2(root, path, os.O_PATH)
        except FileNotFoundError:
            try:
                return openat2(root, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOCTTY, 0o644)
            except FileExistsError:
                continue
        try:
            _check_regular(pfd, path)
            return _reopen(pfd, os.O_WRONLY | os.O_TRUNC, path)
        finally:
            os.close(pfd)
    raise PermissionError(errno.EAGAIN, "the file kept changing under us", path)


def write(root: int, path: str, data: bytes, deadline: float) -> None:
    """Write `data` to the regular file `path` inside `root`, creating it and its parents."""
    _mkdirs(root, os.path.dirname(path))
    fd = _open_for_write(root, path)
    try:
        view = memoryview(data)
        while view:
            if time.monotonic() > deadline:
                raise TimeoutError(f"writing {path} took too long")
            view = view[os.write(fd, view[:CHUNK]) :]
    finally:
        os.close(fd)
