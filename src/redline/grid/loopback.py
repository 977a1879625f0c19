"""A throwaway Ray cluster on one machine, for tests, benchmarks and trying a grid out.

Every node is a real `ray start --block` process tree with its own node address (127.0.0.2 for the
head, 127.0.0.3, 127.0.0.4, ... for workers). All of them run inside one private network namespace
that this module creates and that holds nothing but `lo`. That is the containment guarantee: Ray's
gRPC servers (GCS, raylet, core workers) bind the wildcard address and no Ray setting changes that,
so on the host they would listen on every interface. Inside the namespace the wildcard covers
loopback only, and there is no route anywhere else. The node addresses are still pinned
(`--node-ip-address`), because Ray rewrites 127.0.0.1 and `localhost` to the machine's external
address (`resolve_ip_for_localhost`); 127.0.0.2 and up are loopback addresses it leaves alone.

Nothing phones home: usage stats are off (`--disable-usage-stats` and `RAY_USAGE_STATS_ENABLED=0`),
the dashboard is not started and metrics collection is off.

Each node is its own session (`setsid`), so `kill_node` ends exactly that node's processes: the
`ray start` process, its raylet and agents, and the core workers the raylet started (they stay in
the session). Processes that start their own session, such as redline's sandboxes, are not
killed: they must end on their own when their harness dies, and the grid tests check that they do.
Processes are found by session id from `/proc`, never by name, so other people's Ray clusters and
sandboxes on the same machine are left alone.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
HEAD_IP = "127.0.0.2"
GCS_PORT = 6379  # the namespace is private, so a fixed port cannot collide with anyone's
SANDBOX_RESOURCE = "redline_sandbox"

# Health checks every second, dead after three misses: a killed node is noticed in seconds, not in
# Ray's default half minute. Metrics off: nothing to export, and fewer processes and ports.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_enable_metrics_collection": "0",
}

_HOLDER = r"""
import ctypes, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:
    sys.exit(f"unshare(CLONE_NEWNET) failed: errno {ctypes.get_errno()}")
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
print("ready", flush=True)
sys.stdin.read()
"""

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def enter_netns(netns: str) -> Callable[[], None]:
    """A `preexec_fn`: join the network namespace `netns`, start a new session, die with the parent."""

    def pre() -> None:
        fd = os.open(netns, os.O_RDONLY)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(120)
        os.close(fd)
        os.setsid()
        _die_with_parent()

    return pre


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(name))
    return found


def _kill_session(sid: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@dataclass
class Node:
    ip: str
    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path

    @property
    def sid(self) -> int:
        return self.proc.pid  # the session leader: `ray start` itself


@dataclass
class LoopbackCluster:
    """`nodes` Ray nodes on 127.0.0.2, 127.0.0.3, ... in a private network namespace under `root`.

    Use as a context manager; `stop()` ends every process it started, also on errors."""

    root: Path
    nodes: int = 2
    cpus: int = 2
    sandbox_slots: int = 4
    env: dict[str, str] = field(default_factory=dict)
    started: list[Node] = field(default_factory=list, init=False)
    _holder: subprocess.Popen[str] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{GCS_PORT}"

    @property
    def netns(self) -> str:
        assert self._holder is not None, "cluster not started"
        return f"/proc/{self._holder.pid}/ns/net"

    def node_ip(self, index: int) -> str:
        return str(ipaddress.ip_address(HEAD_IP) + index)

    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ray_env(self) -> dict[str, str]:
        return {**os.environ, **RAY_ENV, **self.env}

    def start(self, timeout: float = 120.0) -> None:
        # Unix socket paths are limited to 107 bytes and Ray nests sessions deep: keep `root` short.
        self.root.mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            raise RuntimeError("could not create a network namespace (needs root or user namespaces)")
        for i in range(self.nodes):
            self.add_node(i)
        self.wait_nodes(self.nodes, timeout)

    def add_node(self, index: int) -> Node:
        ip = self.node_ip(index)
        temp = self.root / f"n{index}"
        log = self.root / f"node{index}.log"
        ray = str(Path(sys.executable).with_name("ray"))
        resources = json.dumps({SANDBOX_RESOURCE: self.sandbox_slots})
        args = [ray, "start", "--block", f"--node-ip-address={ip}", f"--temp-dir={temp}",
                f"--num-cpus={self.cpus}", f"--resources={resources}", "--disable-usage-stats",
                "--dashboard-agent-listen-port=0"]
        if index == 0:
            args += ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=self.ray_env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=enter_netns(self.netns))
        node = Node(ip, proc, temp, log)
        self.started.append(node)
        return node

    def run(self, args: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a command inside the cluster's network namespace (a driver, `ss`, ...)."""
        kw.setdefault("env", self.ray_env())
        return subprocess.run(list(args), preexec_fn=enter_netns(self.netns), capture_output=True, text=True,
                              **kw)  # type: ignore[call-overload]

    def popen(self, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("env", self.ray_env())
        return subprocess.Popen(list(args), preexec_fn=enter_netns(self.netns), **kw)  # type: ignore[call-overload]

    def alive_nodes(self) -> list[str]:
        """Node addresses that the cluster's GCS reports alive (asked from inside the namespace)."""
        code = (f"import json, ray; ray.init(address={self.address!r}, _node_ip_address={HEAD_IP!r}, "
                "log_to_driver=False); "
                "print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))")
        r = self.run([sys.executable, "-c", code], timeout=60)
        if r.returncode != 0:
            return []
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wait_nodes(self, count: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            for node in self.started:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.ip} exited: {node.log.read_text()[-2000:]}")
            if len(self.alive_nodes()) >= count:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"{count} ray nodes not up after {timeout:.0f}s")
            time.sleep(0.5)

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of one node, as if its machine died."""
        node = self.started[index]
        _kill_session(node.sid)
        node.proc.wait()

    def sockets(self) -> list[tuple[str, str, str, str]]:
        """(state, local address, peer address, process) of every TCP socket in the namespace."""
        r = self.run(["ss", "-tanpH"], timeout=30)
        out = []
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 5:
                out.append((parts[0], parts[3], parts[4], " ".join(parts[5:])))
        return out

    def interfaces(self) -> list[str]:
        r = self.run(["ip", "-o", "addr", "show"], timeout=30)
        return [line.split()[3] for line in r.stdout.splitlines() if len(line.split()) > 3]

    def stop(self) -> None:
        for node in reversed(self.started):
            _kill_session(node.sid)
            if node.proc.poll() is None:
                node.proc.wait()
        if self._holder is not None:
            if self._holder.stdin is not None:
                self._holder.stdin.close()
            self._holder.kill()
            self._holder.wait()
            if self._holder.stdout is not None:
                self._holder.stdout.close()
        for node in self.started:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
