"""Network plumbing between sandboxes, and host services inside a sandbox's network namespace.

Everything here acts inside network namespaces of sandboxes this harness created, never on the
host's own interfaces, routes or sysctls:

- `in_netns(sb, fn)` runs `fn` on a thread of its own that has entered the sandbox's network
  namespace (a thread's network namespace is its own: the rest of the harness stays in the
  host's). Processes that `fn` starts (`ip`) inherit it. Before `fn` runs, the thread checks that
  it is in the sandbox's namespace and not the host's.
- `Link.create(a, b, ...)`: a veth pair between two sandboxes. The request is made from inside
  `a`'s namespace and the peer is placed into `b`'s by a descriptor of that namespace, so neither
  end ever exists in the host's namespace. Addresses go on the two ends only; there are no routes
  beyond the link's own subnet and no forwarding (nothing inside has `CAP_NET_ADMIN`, and a
  sandbox's `/proc/sys` is read-only). Deleting either end deletes both, and so does the end of
  either sandbox (its namespace goes with it).
- `HostListener.open(sb, port)`: `Sandbox.listen`'s socket (bound inside the sandbox's namespace,
  served by the harness, for example with `asyncio.start_server(sock=...)`: the agent sees a port,
  but no process behind it that it could see or kill), tracked for the leftover checks.
- `set_unprivileged_port_start(sb, port)`: the lowest port the sandbox's unprivileged users may
  bind (a per-namespace sysctl; e.g. 22 for an SSH server run by the agent user).
- `open_plumbing()`: the links and listeners of this process that are still open (for leftover
  checks: teardown must close them all).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from redline.sandbox.core import PATH, Sandbox, SandboxError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
IP_TIMEOUT = 20.0
NETNS_TIMEOUT = 30.0
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_open: dict[int, Link | HostListener] = {}
_open_lock = threading.Lock()


def _track(obj: Link | HostListener, is_open: bool) -> None:
    with _open_lock:
        if is_open:
            _open[id(obj)] = obj
        else:
            _open.pop(id(obj), None)


def open_plumbing() -> list[str]:
    """What of this process's links and host listeners is still open, one line each."""
    with _open_lock:
        return sorted(str(o) for o in _open.values())


def _netns_fd(sb: Sandbox) -> int:
    """A descriptor of the sandbox's network namespace (its init's, checked to be alive after the
    open, so that a recycled pid can never hand us another process's namespace)."""
    if not sb.alive:
        raise SandboxError(f"sandbox {sb.id} is not running")
    fd = os.open(f"/proc/{sb.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        signal.pidfd_send_signal(sb.pidfd, 0)
    except OSError:
        os.close(fd)
        raise SandboxError(f"sandbox {sb.id} is not running") from None
    return fd


def in_netns(sb: Sandbox, fn: Callable[[], T], timeout: float = NETNS_TIMEOUT) -> T:
    """`fn()` run on a fresh thread inside the sandbox's network namespace (the thread ends after)."""
    fd = _netns_fd(sb)
    want = os.fstat(fd)
    out: list[tuple[bool, object]] = []

    def job() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns into sandbox {sb.id}'s network namespace: {os.strerror(e)}")
            here = os.stat("/proc/thread-self/ns/net")
            if (here.st_dev, here.st_ino) != (want.st_dev, want.st_ino):
                raise SandboxError(f"not in sandbox {sb.id}'s network namespace")  # never act on the host's
            out.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.append((False, e))

    try:
        t = threading.Thread(target=job, name=f"redline-netns-{sb.id}", daemon=True)
        t.start()
        t.join(timeout)
    finally:
        os.close(fd)
    if not out:
        raise TimeoutError(f"work in sandbox {sb.id}'s network namespace took more than {timeout} s")
    ok, value = out[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _ip(*args: str, pass_fds: tuple[int, ...] = (), check: bool = True) -> str:
    """Run iproute2's `ip` (in the calling thread's network namespace)."""
    exe = shutil.which("ip", path=PATH)
    if exe is None:
        raise SandboxError("iproute2's `ip` is needed to link sandboxes (Debian package iproute2)")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=IP_TIMEOUT, pass_fds=pass_fds,
                       env={"PATH": PATH, "LANG": "C"}, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise SandboxError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")
    return r.stdout


def _addr_up(name: str, address: str, prefix: int) -> None:
    _ip("addr", "add", f"{address}/{prefix}", "dev", name)
    _ip("link", "set", name, "up")


@dataclass
class Link:
    """A veth pair between two sandboxes' network namespaces (see the module docstring)."""

    a: Sandbox
    b: Sandbox
    name_a: str
    name_b: str
    address_a: str
    address_b: str
    prefix: int
    closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, a: Sandbox, b: Sandbox, address_a: str, address_b: str, prefix: int = 30,
               name_a: str = "eth0", name_b: str = "eth0") -> Link:
        """Join `a` and `b`: interface `name_a` with `address_a/prefix` in `a`, `name_b` with
        `address_b/prefix` in `b`, both up. Blocking (a few `ip` calls)."""
        fd_b = _netns_fd(b)
        try:
            in_netns(a, lambda: _ip("link", "add", name_a, "type", "veth", "peer", "name", name_b,
                                    "netns", f"/proc/self/fd/{fd_b}", pass_fds=(fd_b,)))
        finally:
            os.close(fd_b)
        link = cls(a, b, name_a, name_b, address_a, address_b, prefix)
        _track(link, True)
        try:
            in_netns(a, lambda: _addr_up(name_a, address_a, prefix))
            in_netns(b, lambda: _addr_up(name_b, address_b, prefix))
        except BaseException:
            link.close()
            raise
        return link

    def close(self) -> None:
        """Delete the pair (both ends). Idempotent; nothing to do once either sandbox is gone."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.a.alive and self.b.alive:
                in_netns(self.a, lambda: _ip("link", "del", self.name_a, check=False))
        except (OSError, SandboxError, TimeoutError):
            pass  # a sandbox ended meanwhile: its namespace took the pair with it
        finally:
            _track(self, False)

    def __str__(self) -> str:
        return (f"link {self.a.id}:{self.name_a} {self.address_a}/{self.prefix} <-> "
                f"{self.b.id}:{self.name_b} {self.address_b}/{self.prefix}")


@dataclass
class HostListener:
    """A listening TCP socket inside a sandbox's network namespace, owned by the harness."""

    sandbox: Sandbox
    host: str
    port: int
    sock: socket.socket

    @classmethod
    def open(cls, sb: Sandbox, port: int, host: str = "127.0.0.1", backlog: int = 64) -> HostListener:
        """`Sandbox.listen`'s socket, non-blocking for an asyncio server, and tracked until closed."""
        sock = sb.listen(port, host, backlog)
        sock.setblocking(False)
        listener = cls(sb, host, port, sock)
        _track(listener, True)
        return listener

    def close(self) -> None:
        """Close the socket (idempotent; a server that took it over may have closed it already)."""
        self.sock.close()
        _track(self, False)

    def __str__(self) -> str:
        return f"listener {self.host}:{self.port} in sandbox {self.sandbox.id}"


def set_unprivileged_port_start(sb: Sandbox, port: int) -> None:
    """The lowest port that processes without capabilities may bind in the sandbox (the
    namespace's own `net.ipv4.ip_unprivileged_port_start`; the host's is untouched)."""
    in_netns(sb, lambda: Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").write_text(f"{port}\n"))
