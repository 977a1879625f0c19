"""What runs inside a sandbox, read from the host's /proc (nothing the agent can forge)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

TCP_LISTEN = "0A"
TCP_ESTABLISHED = "01"


@dataclass
class ProcInfo:
    pid: int  # inside the sandbox's pid namespace
    ppid: int  # inside; 0 for the sandbox's init
    host_pid: int
    uid: int
    cmdline: list[str]
    start_time: int  # clock ticks since boot (field 22 of /proc/PID/stat)
    listening: list[int] = field(default_factory=list)
    cpu_ticks: int = 0  # utime + stime

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


def ns_pid(host_pid: int) -> int | None:
    """The pid of a host process as seen in its innermost pid namespace."""
    try:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        return None
    return None


def uid_of(host_pid: int) -> int:
    try:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def cmdline_of(host_pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{host_pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pidns_of(host_pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{host_pid}/ns/pid")
    except OSError:
        return None


def _hex_addr(h: str) -> tuple[str, int]:
    addr, port = h.split(":")
    return addr, int(port, 16)


def tcp_sockets(netns_pid: int) -> list[TcpSocket]:
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


def list_processes(candidate_host_pids: list[int], init_host_pid: int) -> list[ProcInfo]:
    """Processes among `candidate_host_pids` that live in the sandbox's pid namespace."""
    ns = pidns_of(init_host_pid)
    if ns is None:
        return []
    infos: dict[int, ProcInfo] = {}
    host_ppid: dict[int, int] = {}
    for hp in candidate_host_pids:
        if pidns_of(hp) != ns:
            continue
        st = read_stat(hp)
        inner = ns_pid(hp)
        if st is None or inner is None:
            continue
        host_ppid[hp] = st[0]
        infos[hp] = ProcInfo(inner, 0, hp, uid_of(hp), cmdline_of(hp), st[1], cpu_ticks=st[2])
    for hp, info in infos.items():
        parent = infos.get(host_ppid[hp])
        info.ppid = parent.pid if parent else 0
    listeners = {s.inode: s.local_port for s in tcp_sockets(init_host_pid) if s.state == TCP_LISTEN}
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
    socks = tcp_sockets(netns_pid)
    listen_owner = {s.local_port: owner.get(s.inode) for s in socks if s.state == TCP_LISTEN}
    out = []
    for s in socks:
        if s.state != TCP_ESTABLISHED or s.remote_port not in listen_owner:
            continue
        client = owner.get(s.inode)
        if client is not None and client != listen_owner[s.remote_port]:
            out.append(Connection(client, listen_owner[s.remote_port], s.remote_port))
    return out
