"""What runs inside a sandbox, read from the host's /proc (nothing the agent can forge).

psutil reads the generic parts (command line, parent, ids, CPU time). What psutil does not
cover is namespace-specific and stays here: a process's pid in the sandbox's pid namespace
(`NSpid`), ids as seen inside a user namespace (`uid_map`), the start time in clock ticks (the
judge compares it exactly; psutil only offers a float), and TCP sockets of the sandbox's network
namespace (psutil reads the caller's).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

TCP_LISTEN = "0A"
TCP_ESTABLISHED = "01"


@dataclass
class ProcInfo:
    pid: int  # inside the sandbox's pid namespace
    ppid: int  # inside; 0 for the sandbox's init and for commands the harness started
    host_pid: int
    uid: int  # as seen inside the sandbox
    cmdline: list[str]
    start_time: int  # clock ticks since boot (field 22 of /proc/PID/stat)
    listening: list[int] = field(default_factory=list)
    cpu_ticks: int = 0  # utime + stime
    nested: bool = False  # lives in a pid namespace below the sandbox's (the agent made one)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TcpSocket:
    local_port: int
    remote_port: int
    state: str
    inode: int
    local_addr: str
    remote_addr: str


def read_stat(host_pid: int) -> tuple[int, int, int] | None:
    """(host ppid, start_time, cpu ticks) of a host pid, or None if gone."""
    try:
        raw = Path(f"/proc/{host_pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]
    return int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12])


def ns_pids(host_pid: int) -> list[int]:
    """The pid of a host process in each pid namespace it belongs to, outermost first."""
    try:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def ns_pid(host_pid: int) -> int | None:
    """The pid of a host process as seen in its innermost pid namespace."""
    pids = ns_pids(host_pid)
    return pids[-1] if pids else None


def id_map(host_pid: int, kind: str = "uid") -> list[tuple[int, int, int]]:
    """(inside, outside, count) lines of the process's user namespace, as the host sees them."""
    try:
        lines = Path(f"/proc/{host_pid}/{kind}_map").read_text().splitlines()
        return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in lines)]
    except (OSError, ValueError):
        return []


def inside_id(host_id: int, mapping: list[tuple[int, int, int]]) -> int:
    """A host id as seen through `mapping`; unmapped ids show as the overflow id, like inside."""
    for inside, outside, count in mapping:
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    return 65534


def uid_of(host_pid: int) -> int:
    """The process's real uid as seen inside its own user namespace (-1 if it is gone)."""
    try:
        host_uid = psutil.Process(host_pid).uids().real
    except psutil.Error:
        return -1
    return inside_id(host_uid, id_map(host_pid))


def cmdline_of(host_pid: int) -> list[str]:
    try:
        return psutil.Process(host_pid).cmdline()
    except psutil.Error:
        return []


def pidns_of(host_pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{host_pid}/ns/pid")
    except OSError:
        return None


def _hex_addr(h: str) -> tuple[str, int]:
    addr, port = h.split(":")
    return addr, int(port, 16)


def _tcp_table(netns_pid: int) -> list[TcpSocket]:
    """Every TCP socket in the network namespace of `netns_pid` (a host pid)."""
    out: list[TcpSocket] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{netns_pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            la, lp = _hex_addr(f[1])
            ra, rp = _hex_addr(f[2])
            out.append(TcpSocket(lp, rp, f[3], int(f[9]), la, ra))
    return out


def socket_inodes(host_pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{host_pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{host_pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _info(hp: int, level: int, uids: list[tuple[int, int, int]]) -> tuple[ProcInfo, int] | None:
    """ProcInfo of host pid `hp` (ppid still unmapped) and its host ppid; None if not inside."""
    nsp = ns_pids(hp)
    st = read_stat(hp)
    if len(nsp) <= level or st is None:
        return None  # gone, or outside the sandbox's pid namespace (e.g. the exec helper)
    try:
        p = psutil.Process(hp)
        with p.oneshot():
            cmdline, host_uid = p.cmdline(), p.uids().real
    except psutil.Error:
        return None
    info = ProcInfo(nsp[level], 0, hp, inside_id(host_uid, uids), cmdline, st[1], cpu_ticks=st[2],
                    nested=len(nsp) > level + 1)
    return info, st[0]


def list_processes(members: list[int], init_host_pid: int) -> list[ProcInfo]:
    """Every process among `members` (the sandbox's cgroup) that lives in the sandbox's pid
    namespace or below it, with pids as the sandbox sees them (NSpid at the sandbox's level)."""
    level = len(ns_pids(init_host_pid)) - 1
    if level < 0:
        return []
    uids = id_map(init_host_pid)
    infos: dict[int, ProcInfo] = {}
    host_ppid: dict[int, int] = {}
    for hp in members:
        got = _info(hp, level, uids)
        if got is not None:
            infos[hp], host_ppid[hp] = got
    for hp, info in infos.items():
        parent = infos.get(host_ppid[hp])
        info.ppid = parent.pid if parent else 0
    listeners = {s.inode: s.local_port for s in _tcp_table(init_host_pid) if s.state == TCP_LISTEN}
    for info in infos.values():
        info.listening = sorted({listeners[i] for i in socket_inodes(info.host_pid) if i in listeners})
    return sorted(infos.values(), key=lambda p: p.pid)


@dataclass
class Connection:
    """An established TCP connection between two processes of the sandbox (loopback)."""

    client_pid: int
    server_pid: int | None
    server_port: int


def connections(infos: list[ProcInfo], netns_pid: int) -> list[Connection]:
    """Established loopback connections, each with the inside pids at both ends (from socket
    ownership in /proc: a process cannot claim a socket it does not hold)."""
    owner: dict[int, int] = {}
    for p in infos:
        for inode in socket_inodes(p.host_pid):
            owner.setdefault(inode, p.pid)
    socks = _tcp_table(netns_pid)
    listen_owner = {s.local_port: owner.get(s.inode) for s in socks if s.state == TCP_LISTEN}
    out = []
    for s in socks:
        if s.state != TCP_ESTABLISHED or s.remote_port not in listen_owner:
            continue
        client = owner.get(s.inode)
        if client is not None and client != listen_owner[s.remote_port]:
            out.append(Connection(client, listen_owner[s.remote_port], s.remote_port))
    return out


# ------------------------------------------------------------------ evidence helpers for the judge
def tcp_table(netns_pid: int) -> list[TcpSocket]:
    """Every TCP socket of the network namespace of host pid `netns_pid` (public name)."""
    return _tcp_table(netns_pid)


def holders(infos: list[ProcInfo], inodes: set[int]) -> dict[int, list[int]]:
    """inode -> inside pids of every process among `infos` holding that socket (by /proc/PID/fd:
    a process cannot claim a socket it does not hold, nor hide one it does)."""
    out: dict[int, list[int]] = {i: [] for i in inodes}
    if not inodes:
        return out
    for p in infos:
        for inode in socket_inodes(p.host_pid) & inodes:
            out[inode].append(p.pid)
    return out


def sockets_of(infos: list[ProcInfo]) -> dict[int, set[int]]:
    """inside pid -> the socket inodes it holds."""
    return {p.pid: socket_inodes(p.host_pid) for p in infos}


def signal_masks(host_pid: int) -> tuple[int, int] | None:
    """(caught, ignored) signal bit masks of a process (SigCgt, SigIgn of /proc/PID/status);
    bit n-1 stands for signal n. None if it is gone."""
    try:
        lines = Path(f"/proc/{host_pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return int(fields["SigCgt"].strip(), 16), int(fields["SigIgn"].strip(), 16)
    except (OSError, KeyError, ValueError):
        return None


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2
NLMSG_ERROR = 2


def unix_peer_inode(fd: int, nl: socket.socket | None = None) -> int | None:
    """The inode of the other end of the connected Unix socket `fd` (the kernel's socket
    diagnostics: the same as `ss -xp` shows), or None. `nl`: a NETLINK_SOCK_DIAG socket in the
    network namespace the socket belongs to (default: a new one in the caller's)."""
    ino = os.fstat(fd).st_ino
    any_cookie = 0xFFFFFFFF
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, UDIAG_SHOW_PEER,
                      any_cookie, any_cookie)
    try:
        sock = nl or socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        try:
            sock.settimeout(2)
            sock.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, 1, 1, 0) + req)
            data = sock.recv(65536)
        finally:
            if nl is None:
                sock.close()
    except OSError:
        return None
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR or length > len(data):
        return None
    off = 16 + 16  # nlmsghdr, unix_diag_msg
    while off + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        if atype == UNIX_DIAG_PEER and alen >= 8:
            return struct.unpack_from("=I", data, off + 4)[0]
        off += (alen + 3) & ~3
    return None
