"""Sockets in a rootless sandbox's network namespace, made by a small broker process.

As root, the harness makes its own sockets in a sandbox's network namespace from a short-lived
thread that joins it (`Sandbox.socket_future`). A normal user cannot: joining a network namespace
needs CAP_SYS_ADMIN both in the user namespace that owns it and in the caller's own, and a normal
user has none in the host's. The caller does own the sandbox's user namespace (it made it), so a
process may join that user namespace first (all capabilities in it) and the network namespace
after; but the kernel lets only a single-threaded process change its user namespace, which the
harness (Inspect, asyncio, threads) is not.

So, rootless, each sandbox gets a broker: a fresh single-threaded interpreter that joins the
sandbox's user and network namespaces through the init's pidfd (a recycled pid is never entered)
and then only makes sockets on request, handing each back over a private socket pair
(SCM_RIGHTS); the socket keeps the namespace it was made in. The broker stays in the host's pid
and mount namespaces: the agent cannot see it, signal it or reach its socket pair. It ends when
its socket pair closes (the sandbox's teardown, or the harness's death).
"""

from __future__ import annotations

import array
import os
import socket
import struct
import subprocess
import sys
import threading

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
REPLY_TIMEOUT = 30.0  # a hang guard only: the broker answers in microseconds
_REQ = struct.Struct("=iii")  # family, type, proto
_REP = struct.Struct("=i")  # 0, or the errno of a failure

# The broker's code: run with `python -I -S` (no site, no threads), the pidfd and its end of the
# socket pair and the setns flags passed as argv[1], argv[2] and argv[3].
_BROKER = r"""
import array, ctypes, os, socket, struct, sys
pidfd, chan = int(sys.argv[1]), socket.socket(fileno=int(sys.argv[2]))
libc = ctypes.CDLL(None, use_errno=True)
req, rep = struct.Struct("=iii"), struct.Struct("=i")
if libc.setns(pidfd, int(sys.argv[3])) != 0:
    chan.send(rep.pack(ctypes.get_errno() or 1))
    sys.exit(1)
os.close(pidfd)
chan.send(rep.pack(0))
while True:
    try:
        data = chan.recv(64)
    except OSError:
        break
    if len(data) != req.size:
        break
    try:
        s = socket.socket(*req.unpack(data))
    except OSError as e:
        chan.send(rep.pack(e.errno or 1))
        continue
    chan.sendmsg([rep.pack(0)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno()]))])
    s.close()
"""


class SocketBroker:
    """One rootless sandbox's socket maker (see the module's doc). Thread-safe."""

    def __init__(self, pidfd: int, name: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._chan = ours
        self._chan.settimeout(REPLY_TIMEOUT)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BROKER, str(pidfd), str(theirs.fileno()),
                 str(CLONE_NEWUSER | CLONE_NEWNET)],
                pass_fds=(pidfd, theirs.fileno()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            err = self._reply()
        except OSError as e:
            self.close()
            raise OSError(e.errno, f"the socket broker of sandbox {name} did not start: {e}") from None
        if err:
            self.close()
            raise OSError(err, f"cannot enter sandbox {name}'s network namespace: {os.strerror(err)}")

    def _reply(self) -> int:
        data = self._chan.recv(_REP.size)
        if len(data) != _REP.size:
            raise ConnectionError("the socket broker has gone")
        return int(_REP.unpack(data)[0])

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A new socket in the sandbox's network namespace, owned by the caller."""
        with self._lock:
            self._chan.send(_REQ.pack(family, kind, proto))
            fds = array.array("i")
            data, anc, _, _ = self._chan.recvmsg(_REP.size, socket.CMSG_SPACE(fds.itemsize),
                                                   socket.MSG_CMSG_CLOEXEC)
            for level, kind_, payload in anc:
                if level == socket.SOL_SOCKET and kind_ == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if len(data) != _REP.size:
            for fd in fds:
                os.close(fd)
            raise ConnectionError("the socket broker has gone")
        err = int(_REP.unpack(data)[0])
        if err or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(err or 1, f"the socket broker could not make a socket: {os.strerror(err or 1)}")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        """End the broker (it exits on its socket pair's end) and reap it."""
        self._chan.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
