"""Containment hardening of the `redline` sandbox (issue 12, items 1-5): no harness secret
inside, harness file access confined and bounded, a user namespace and uid range per sandbox,
seccomp on every process, every process seen. All real sandboxes, checked from the host."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import time
from pathlib import Path

import psutil
import pytest
from inspect_ai.util import OutputLimitExceededError

from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment, Sandbox
from redline.sandbox import procs as sbprocs
from redline.sandbox.files import NotRegularFile
from redline.sandbox.idmap import SLOT_SIZE

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leftovers")]

CANARY = "redline-canary-4f1d9e"
NS_GET_OWNER_UID = 0xB704  # ioctl on a user namespace fd: its owner's uid


def run(coro):
    return asyncio.run(coro)


async def sh(sb: Sandbox, cmd: str, user: str | None = None, timeout: float = 60) -> str:
    r = await sb.run(["bash", "-c", cmd], user=user, timeout=timeout)
    return r.stdout.decode() + r.stderr.decode()


class Boxes:
    """Sandboxes made directly (no Inspect), destroyed on exit."""

    def __init__(self, n: int = 1, **cfg) -> None:
        self.cfg = RedlineSandboxConfig(**cfg)
        self.n = n

    def __enter__(self) -> list[Sandbox]:
        self.boxes: list[Sandbox] = []
        for _ in range(self.n):
            self.boxes.append(Sandbox.create(self.cfg))
        return self.boxes

    def __exit__(self, *exc) -> None:
        for sb in self.boxes:
            sb.destroy()


# ------------------------------------------------------------------ 1. no harness secret inside
def test_no_process_of_the_sandbox_carries_a_harness_variable(monkeypatch):
    monkeypatch.setenv("REDLINE_TEST_SECRET", CANARY)

    async def go(sb: Sandbox) -> None:
        await sh(sb, "setsid sleep 300 >/dev/null 2>&1 &")
        await sh(sb, "nohup sleep 301 >/dev/null 2>&1 &", user="root")
        running = asyncio.ensure_future(sb.run(["sleep", "30"]))  # its helper is alive meanwhile
        try:
            deadline = time.monotonic() + 30
            while len(sb.cgroups.pids()) < 6 and time.monotonic() < deadline:  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
            members = sb.cgroups.pids()  # type: ignore[union-attr]
            # bwrap's monitor, the init, two background sleeps, the running command and its helper.
            assert len(members) >= 6, members
            for pid in members:
                env = Path(f"/proc/{pid}/environ").read_bytes()
                assert CANARY.encode() not in env, (pid, sbprocs.cmdline_of(pid))
            init_env = Path(f"/proc/{sb.init_pid}/environ").read_bytes().split(b"\0")
            assert sorted(e.split(b"=")[0] for e in init_env if e) == [b"LANG", b"PATH", b"PWD"]
        finally:
            sb.kill([p.pid for p in sb.processes() if p.cmdline == ["sleep", "30"]])
            await asyncio.wait_for(running, 30)

    with Boxes() as [sb]:
        run(go(sb))


# ------------------------------------------------------------------ 2. confined harness file access
class Inspected:
    def __init__(self, **cfg) -> None:
        self.cfg = RedlineSandboxConfig(**cfg)

    async def __aenter__(self) -> RedlineSandboxEnvironment:
        self.envs = await RedlineSandboxEnvironment.sample_init("t", self.cfg, {})
        return self.envs["default"]  # type: ignore[return-value]

    async def __aexit__(self, *exc) -> None:
        await RedlineSandboxEnvironment.sample_cleanup("t", self.cfg, self.envs, False)


def test_harness_reads_resolve_inside_the_sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("REDLINE_TEST_SECRET", CANARY)
    host_file = tmp_path / "host-only.txt"
    host_file.write_text("host data")

    async def go():
        async with Inspected() as env:
            await env.exec(["bash", "-c",
                            f"ln -s /proc/1/environ env; ln -s {host_file} host; "
                            "ln -s /proc/self/root/etc/hostname magic; ln -s /proc/1/root/etc magicdir; "
                            f"mkdir -p {tmp_path} && echo sandbox data > {host_file}"])
            # /proc/1 inside is the sandbox's init: a kernel file, refused before any byte is read.
            with pytest.raises(PermissionError):
                await env.read_file("env")
            assert await env.read_bytes("env") is None
            # An absolute symlink resolves in the sandbox's root, never on the host.
            assert await env.read_file("host") == "sandbox data\n"
            assert host_file.read_text() == "host data"
            # Magic links (/proc/PID/root, /proc/self/...) are refused.
            for name in ("magic", "magicdir/hostname"):
                with pytest.raises((PermissionError, FileNotFoundError)):
                    await env.read_file(name)
            # Writes go through the same resolution.
            await env.write_file("host", "written by harness")
            assert host_file.read_text() == "host data"
            r = await env.exec(["cat", str(host_file)])
            assert r.stdout == "written by harness"

    run(go())


def test_harness_reads_refuse_fifos_devices_sockets_and_huge_files():
    async def go():
        async with Inspected() as env:
            await env.exec(["bash", "-c",
                            "mkfifo fifo; ln -s /dev/zero zero; ln -s /dev/null null; "
                            "python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")'; "
                            "truncate -s 1G sparse; head -c 100 /dev/urandom > small"])
            rss = psutil.Process().memory_info().rss
            t0 = time.monotonic()
            for name in ("fifo", "zero", "null", "sock"):
                with pytest.raises(NotRegularFile):
                    await env.read_file(name, text=False)
                assert await env.read_bytes(name) is None
                with pytest.raises(PermissionError):  # a FIFO with no reader must not hang a write
                    await env.write_file(name, "x")
            with pytest.raises(OutputLimitExceededError):
                await env.read_file("sparse", text=False)
            assert await env.read_bytes("sparse", limit=1 << 20) is None
            assert await env.read_bytes("sparse", limit=4096, truncate=True) == bytes(4096)
            # A hang would have ended in a TimeoutError after 30 s, not in these errors.
            assert time.monotonic() - t0 < 25
            assert psutil.Process().memory_info().rss - rss < 64 << 20
            with pytest.raises(FileNotFoundError):
                await env.read_file("missing")
            with pytest.raises(IsADirectoryError):
                await env.read_file("/tmp")
            data = await env.read_bytes("small")
            assert data is not None and len(data) == 100
            assert await env.read_bytes("small", limit=99) is None

    run(go())


def test_harness_file_access_has_the_agents_permissions():
    async def go():
        async with Inspected() as env:
            await env.exec(["bash", "-c", "echo secret > /root/only-root; chmod 600 /root/only-root"],
                           user="root")
            with pytest.raises(PermissionError):
                await env.read_file("/root/only-root")
            assert await env.read_bytes("/root/only-root", user="root") == b"secret\n"
            await env.write_file("new/dir/file.txt", "hello")
            r = await env.exec(["stat", "-c", "%U %a", "new/dir", "new/dir/file.txt"])
            assert r.stdout.split("\n")[:2] == ["agent 755", "agent 644"]
            with pytest.raises(PermissionError):
                await env.write_file("/usr/bin/python3", "x")

    run(go())


# ------------------------------------------------------------------ 3. user namespace and uid range
def test_each_sandbox_has_its_own_host_uid_range():
    async def go(a: Sandbox, b: Sandbox) -> None:
        assert a.id_base != b.id_base and abs(a.id_base - b.id_base) >= SLOT_SIZE
        for sb in (a, b):
            out = await sh(sb, "cat /proc/self/uid_map /proc/self/gid_map; id -u; "
                               "sleep 300 >/dev/null 2>&1 & echo $!")
            lines = out.split("\n")
            assert lines[0].split() == ["0", str(sb.id_base), str(SLOT_SIZE)]
            assert lines[1].split() == ["0", str(sb.id_base), str(SLOT_SIZE)]
            assert lines[2] == "1000"
            sleeper = next(p for p in sb.processes() if p.pid == int(lines[3]))
            assert sleeper.uid == 1000
            # From the host, the agent is an unprivileged uid of the sandbox's range ...
            assert psutil.Process(sleeper.host_pid).uids().real == sb.id_base + 1000
            # ... and root inside (the init) is the range's first id, not host root, which
            # also owns the user namespace (per-user kernel counts above it are the sandbox's).
            assert psutil.Process(sb.init_pid).uids().real == sb.id_base
            fd = os.open(f"/proc/{sb.init_pid}/ns/user", os.O_RDONLY)
            try:
                owner = array.array("I", [0])
                fcntl.ioctl(fd, NS_GET_OWNER_UID, owner)
            finally:
                os.close(fd)
            assert owner[0] == sb.id_base
            assert sbprocs.uid_of(sleeper.host_pid) == 1000
            root_out = await sh(sb, "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "
                                    "/proc/self/status", user="root")
            assert root_out.split()[:1] == ["0"]
            assert "CapEff:\t0000000000000000" in root_out and "CapBnd:\t0000000000000000" in root_out
            assert "NoNewPrivs:\t1" in root_out and "Seccomp:\t2" in root_out

    with Boxes(2) as [a, b]:
        run(go(a, b))


INOTIFY_HOG = """
import os, ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while True:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), flush=True)
time.sleep(300)
"""


def test_exhausting_inotify_in_one_sandbox_leaves_the_other_alone():
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())

    async def go(a: Sandbox, b: Sandbox) -> None:
        a.write_file("hog.py", INOTIFY_HOG.encode())
        await sh(a, "python3 hog.py > hog.out 2>&1 &")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (await sh(a, "cat hog.out")).strip():
            await asyncio.sleep(0.1)
        hogged = int((await sh(a, "cat hog.out")).strip())
        assert 0 < hogged <= limit
        out = await sh(a, "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0))'")
        assert out.strip() == "-1"  # sandbox A is out of inotify instances ...
        out = await sh(b, "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0))'")
        assert int(out.strip()) >= 0  # ... and sandbox B, the same uid 1000 inside, is not

    with Boxes(2) as [a, b]:
        run(go(a, b))


KEYS = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
USER_KEYRING = -4
if sys.argv[1] == "add":
    r = libc.syscall(248, b"user", b"redline-probe", b"v", 1, USER_KEYRING)  # add_key
else:
    r = libc.syscall(250, 10, USER_KEYRING, b"user", b"redline-probe", 0)  # keyctl(SEARCH)
print(r, ctypes.get_errno())
"""


def test_user_keyrings_are_per_sandbox():
    # seccomp off: this shows what the user namespace alone gives (with seccomp, keyctl is EPERM).
    async def go(a: Sandbox, b: Sandbox) -> None:
        for sb in (a, b):
            sb.write_file("keys.py", KEYS.encode())
        added = (await sh(a, "python3 keys.py add")).split()
        assert int(added[0]) > 0, added
        found = (await sh(a, "python3 keys.py search")).split()
        assert int(found[0]) > 0, found
        other = (await sh(b, "python3 keys.py search")).split()
        assert other == ["-1", "126"], other  # ENOKEY: B's uid 1000 has its own user keyring

    with Boxes(2, seccomp=False) as [a, b]:
        run(go(a, b))
    with Boxes(1) as [sb]:
        sb.write_file("keys.py", KEYS.encode())
        out = run(sh(sb, "python3 keys.py add")).split()
        assert out == ["-1", "1"]  # EPERM under the seccomp filter


# ------------------------------------------------------------------ 4. seccomp on every process
SYSCALLS = r"""
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *a):
    r = libc.syscall(nr, *a)
    return errno.errorcode.get(ctypes.get_errno(), "?") if r < 0 else "ok"
res = {
    "unshare": sc(272, 0x10000000), "clone_newuser": sc(56, 0x10000000 | 17, 0, 0, 0, 0),
    "clone_newnet": sc(56, 0x40000000 | 17, 0, 0, 0, 0), "clone3": sc(435, 0, 0),
    "setns": sc(308, 0, 0), "keyctl": sc(250, 0, 0), "add_key": sc(248, 0, 0, 0, 0, 0),
    "request_key": sc(249, 0, 0, 0, 0), "io_uring_setup": sc(425, 1, 0),
    "perf_event_open": sc(298, 0, 0, -1, -1, 0), "bpf": sc(321, 0, 0, 0), "userfaultfd": sc(323, 0),
    "init_module": sc(175, 0, 0, 0), "finit_module": sc(313, -1, 0, 0),
    "kexec_load": sc(246, 0, 0, 0, 0), "kexec_file_load": sc(320, -1, -1, 0, 0, 0),
    "mount": sc(165, b"none", b"/tmp", b"tmpfs", 0, 0),
}
for name, fam, proto in (("uevent", 16, 15), ("vsock", 40, 0), ("nf_netlink", 16, 12),
                         ("route", 16, 0), ("inet", 2, 0)):
    try:
        socket.socket(fam, socket.SOCK_DGRAM if fam != 40 else socket.SOCK_STREAM, proto).close()
        res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
print(" ".join(f"{k}={v}" for k, v in res.items()))
"""
EXPECTED = {"unshare": "EPERM", "clone_newuser": "EPERM", "clone_newnet": "EPERM", "clone3": "ENOSYS",
            "setns": "EPERM", "keyctl": "EPERM", "add_key": "EPERM", "request_key": "EPERM",
            "io_uring_setup": "EPERM", "perf_event_open": "EPERM", "bpf": "EPERM",
            "userfaultfd": "EPERM", "init_module": "EPERM", "finit_module": "EPERM",
            "kexec_load": "EPERM", "kexec_file_load": "EPERM", "mount": "EPERM",
            "uevent": "EPERM", "vsock": "EAFNOSUPPORT", "nf_netlink": "EPERM", "route": "ok", "inet": "ok"}


def test_seccomp_denies_kernel_attack_surface_for_agent_and_root():
    async def go(sb: Sandbox) -> None:
        sb.write_file("probe.py", SYSCALLS.encode())
        for user in (None, "root"):
            out = await sh(sb, "python3 /home/agent/probe.py", user=user)
            got = dict(kv.split("=") for kv in out.split())
            assert got == EXPECTED, (user, got)
        # Programs still work: threads (clone3 -> ENOSYS -> clone fallback), forks, pipes.
        out = await sh(sb, "python3 -c 'import threading as t; x=t.Thread(target=print, args=(\"t\",)); "
                           "x.start(); x.join()' && (echo a | cat) && unshare -U true; echo rc=$?")
        assert out.startswith("t\na\n") and "rc=1" in out
        # An x32 syscall (same audit arch, other table) kills the caller.
        out = await sh(sb, "python3 -c 'import ctypes; ctypes.CDLL(None).syscall(0x40000000 + 250, 0, 0)';"
                           " echo rc=$?")
        assert "rc=159" in out  # 128 + SIGSYS
        # Every process of the sandbox carries the filter and no capability, the init included.
        await sh(sb, "sleep 300 >/dev/null 2>&1 &")
        await sh(sb, "sleep 301 >/dev/null 2>&1 &", user="root")
        assert len(sb.processes()) >= 3
        for p in sb.processes():
            status = Path(f"/proc/{p.host_pid}/status").read_text()
            for field in ("Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000",
                          "CapPrm:\t0000000000000000", "CapBnd:\t0000000000000000"):
                assert f"\n{field}\n" in status, (p.cmdline, field)

    with Boxes() as [sb]:
        run(go(sb))


# ------------------------------------------------------------------ 5. every process seen
def test_nested_pid_namespace_processes_are_seen_and_killed():
    # seccomp off, so that the agent can make a nested pid namespace at all (defence in depth).
    async def go(sb: Sandbox) -> None:
        # (no --mount-proc: a new procfs is refused where /proc has covered parts, as here)
        await sh(sb, "unshare --user --map-root-user --pid --fork sleep 333 >/dev/null 2>&1 &")
        deadline = time.monotonic() + 30
        nested = []
        while not nested and time.monotonic() < deadline:
            nested = [p for p in sb.processes() if p.nested and p.cmdline[:2] == ["sleep", "333"]]
            await asyncio.sleep(0.05)
        assert nested, sb.processes()
        [p] = nested
        assert p.pid != 1 and sbprocs.ns_pids(p.host_pid)[-1] == 1  # pid 1 of its own namespace
        assert sb.host_pid_to_inner(p.host_pid) == p.pid
        # The sandbox's view: the pid the agent's `ps` shows.
        out = await sh(sb, "ps -eo pid=,args= | grep 'sleep 333' | grep -v grep")
        assert str(p.pid) in out.split()
        assert sb.kill([p.pid]) == [p.pid]
        deadline = time.monotonic() + 10
        while psutil.pid_exists(p.host_pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(q.cmdline[:2] == ["sleep", "333"] for q in sb.processes())

    with Boxes(seccomp=False) as [sb]:
        run(go(sb))


def test_cgroup_namespace_and_read_only_proc_sys():
    async def go(sb: Sandbox) -> None:
        out = await sh(sb, "cat /proc/self/cgroup")
        assert out.strip() and all(line.endswith(":/") for line in out.strip().split("\n")), out
        for f in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
                  "/proc/sysrq-trigger"):
            out = await sh(sb, f"echo 1 > {f} && echo WROTE", user="root")
            assert "WROTE" not in out, f
        mounts = await sh(sb, "awk '$5 == \"/proc/sys\" {print $6}' /proc/self/mountinfo")
        assert mounts.split()[0].split(",")[0] == "ro"

    with Boxes() as [sb]:
        run(go(sb))


def test_base_shows_the_tools_and_no_host_usr_local():
    async def go(sb: Sandbox) -> None:
        out = await sh(sb, "ls -A /usr/local/bin /usr/local/lib /usr/local/sbin | grep -v ':$' | grep .; "
                           "for t in python3 bash sh curl ps pgrep kill ss ip ls cat grep sed awk tar "
                           "nohup setsid timeout sleep; do command -v $t >/dev/null || echo MISSING $t; done")
        assert out.strip() == "", out
        out = await sh(sb, "python3 -c 'import json, http.server, sqlite3; print(1)'")
        assert out.strip() == "1"

    with Boxes() as [sb]:
        run(go(sb))


def test_hardening_switches_for_the_benchmark():
    """userns and seccomp off (bench/sandbox.py measures their cost): the old identity model."""
    async def go(sb: Sandbox) -> None:
        out = await sh(sb, "id -u; cat /proc/self/uid_map; grep Seccomp: /proc/self/status")
        lines = out.split("\n")
        assert lines[0] == "1000" and lines[1].split() == ["0", "0", "4294967295"]
        assert lines[2].split() == ["Seccomp:", "0"]
        assert sb.id_base == 0 and sb.lease is None

    with Boxes(userns=False, seccomp=False) as [sb]:
        run(go(sb))


UEVENT_LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
s.bind((0, 1))
s.settimeout(0.2)
open("ready", "w").close()
deadline = time.monotonic() + float(sys.argv[2])
seen = False
while time.monotonic() < deadline and not seen:
    try:
        seen = sys.argv[1].encode() in s.recv(65536)
    except socket.timeout:
        pass
print("seen" if seen else "none", flush=True)
"""


def _uevent_seen_inside(sb: Sandbox, tag: str) -> str:
    """Listen for uevents inside, emit a synthetic one on the host (/dev/null's device: no
    state changes, no udev here), and say whether the sandbox saw it."""
    import socket
    import uuid

    host = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
    host.bind((0, 1))
    host.settimeout(10)

    async def go() -> str:
        sb.write_file("listen.py", UEVENT_LISTENER.encode())
        inside = asyncio.ensure_future(sh(sb, f"python3 listen.py {tag} 3"))
        deadline = time.monotonic() + 30
        while sb.read_bytes("ready") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        Path("/sys/devices/virtual/mem/null/uevent").write_text(f"change {tag}")
        while tag.encode() not in host.recv(65536):  # the host itself did get it
            pass
        return (await inside).strip()

    try:
        assert uuid.UUID(tag)
        return run(go())
    finally:
        host.close()


def test_host_uevents_do_not_reach_the_sandbox():
    import uuid

    # seccomp off, so that the socket can be opened at all: this is the user namespace's doing.
    with Boxes(seccomp=False) as [sb]:
        assert _uevent_seen_inside(sb, str(uuid.uuid4())) == "none"
    # Without a user namespace they did (the test can tell the difference).
    with Boxes(seccomp=False, userns=False) as [sb]:
        assert _uevent_seen_inside(sb, str(uuid.uuid4())) == "seen"
