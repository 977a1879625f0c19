"""The `redline` sandbox: containment, caps, teardown, and the Inspect contract. All real sandboxes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from inspect_ai.util import OutputLimitExceededError
from pydantic import ValidationError

from redline.record import InfraWatch
from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment, Sandbox, SandboxError
from redline.sandbox.cgroups import CgroupError
from tests.helpers import sandbox_config, scaled

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftovers")]


def run(coro):
    return asyncio.run(coro)


class Box:
    """A provider instance made the way Inspect makes it, torn down the way Inspect does."""

    def __init__(self, **cfg) -> None:
        self.cfg = sandbox_config(**cfg)

    async def __aenter__(self) -> RedlineSandboxEnvironment:
        envs = await RedlineSandboxEnvironment.sample_init("t", self.cfg, {})
        self.envs = envs
        return envs["default"]  # type: ignore[return-value]

    async def __aexit__(self, *exc) -> None:
        await RedlineSandboxEnvironment.sample_cleanup("t", self.cfg, self.envs, False)


async def sh(env: RedlineSandboxEnvironment, cmd: str, **kw):
    return await env.exec(["bash", "-c", cmd], **kw)


def test_background_process_survives_across_execs():
    async def go():
        async with Box() as env:
            r = await sh(env, "sleep 300 >/dev/null 2>&1 & echo $!")
            assert r.success
            pid = r.stdout.strip()
            r2 = await sh(env, f"kill -0 {pid} && ps -o args= -p {pid}")
            assert r2.success and "sleep 300" in r2.stdout
            procs = await env.processes()
            assert any(p.cmdline[:2] == ["sleep", "300"] and p.pid == int(pid) for p in procs)

    run(go())


def test_host_paths_invisible_and_writes_stay_inside(tmp_path):
    marker = tmp_path / "host-secret.txt"
    marker.write_text("secret")
    async def go():
        async with Box() as env:
            for p in ("/root/.bashrc", "/work", "/work/main", str(marker), "/var/tmp/" + marker.name,
                      "/etc/shadow", str(Path(sys.executable).resolve())):
                r = await sh(env, f"ls -d {p}")
                assert not r.success, f"{p} visible inside: {r.stdout}"
            r = await sh(env, "ls -A /tmp /var/tmp /home")
            assert r.stdout.split() == ["/home:", "agent", "/tmp:", "/var/tmp:"]
            # Root inside writes to the copy-on-write layer, never to the host's /usr.
            r = await env.exec(["bash", "-c", "echo x > /usr/redline-probe && cat /usr/redline-probe"],
                               user="root")
            assert r.success and r.stdout == "x\n"
            assert not Path("/usr/redline-probe").exists()
            # The agent cannot even do that.
            r = await sh(env, "echo x > /usr/bin/probe")
            assert not r.success

    run(go())


def test_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    async def go():
        async with Box() as env:
            r = await sh(env, "env; cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'")
            assert "sk-host-secret" not in r.stdout
            assert "OPENAI_API_KEY" not in r.stdout
            r = await env.exec(["printenv", "FOO"], env={"FOO": "bar"})
            assert r.stdout == "bar\n"

    run(go())


def test_network_only_loopback():
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    port = host.getsockname()[1]
    try:
        async def go():
            async with Box() as env:
                r = await sh(env, "ip -o link show | awk -F': ' '{print $2}'")
                assert r.stdout.split() == ["lo"]
                r = await sh(env, "ip route show; ip -6 route show")
                assert "default" not in r.stdout
                r = await sh(env, f"curl -s --max-time 2 http://127.0.0.1:{port}/ ; echo rc=$?")
                assert "rc=7" in r.stdout  # connection refused: the sandbox's lo is its own
                # Its own loopback works.
                r = await sh(env, "python3 -m http.server 8765 >/dev/null 2>&1 & "
                                  "for i in $(seq 50); do curl -s -o /dev/null -w '%{http_code}' "
                                  "http://127.0.0.1:8765/ && break; sleep 0.1; done")
                assert r.stdout.endswith("200")
                ports = await env.listening_ports()
                assert 8765 in ports

        run(go())
    finally:
        host.close()


def test_bound_unix_socket_works(tmp_path):
    path = tmp_path / "svc.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    os.chmod(path, 0o666)
    srv.listen()
    seen = []

    def serve():
        conn, _ = srv.accept()
        seen.append(conn.recv(100))
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        async def go():
            async with Box(unix_sockets={str(path): "/run/svc.sock"}) as env:
                r = await sh(env, "curl -s --max-time 5 --unix-socket /run/svc.sock http://x/ping")
                assert r.stdout == "hello"

        run(go())
        assert seen and seen[0].startswith(b"GET /ping")
    finally:
        srv.close()


def test_fork_bomb_is_capped_and_host_responsive():
    async def go():
        async with Box(pids_max=64) as env:
            # Detached so that it outlives the exec and keeps pressing on the cap.
            await sh(env, "setsid bash -c 'bomb() { bomb | bomb & }; bomb' >/dev/null 2>&1 &")
            await asyncio.sleep(2)
            t0 = time.monotonic()
            subprocess.run(["true"], check=True)
            assert time.monotonic() - t0 < scaled(1.0)
            count = len(await env.processes())
            assert 32 < count <= 64
            r = subprocess.run(["cat", "/proc/loadavg"], capture_output=True, text=True, timeout=5)
            assert r.returncode == 0

    run(go())


def test_memory_hog_is_oom_killed_inside():
    async def go() -> RedlineSandboxEnvironment:
        async with Box(memory_bytes=128 << 20) as env:
            r = await sh(env, "python3 -c 'x = bytearray(1 << 30); print(len(x))'; echo rc=$?", timeout=60)
            assert "rc=137" in r.stdout  # SIGKILL by the OOM killer
            r = await sh(env, "echo alive")
            assert r.stdout == "alive\n"
            # The cap's counters say so (what the run record's `infra` reads), and stay after teardown.
            assert (env.cgroup_events()["oom_kill"] or 0) >= 1
        return env

    env = run(go())
    assert (env.cgroup_events()["oom_kill"] or 0) >= 1 and env.disk_usage() is None


def test_disk_cap():
    async def go():
        async with Box(disk_bytes=32 << 20) as env:
            watch = InfraWatch()
            watch.observe(env.cgroup_events(), env.disk_usage())
            r = await sh(env, "head -c 64M /dev/zero > big; echo rc=$?; du -m big | cut -f1")
            assert "rc=1" in r.stdout
            assert int(r.stdout.split()[-1]) <= 32
            # Seen from the host as the run record sees it: the writable layer is full.
            used, size, full = env.disk_usage() or (0, 0, False)
            assert full and size == 32 << 20 and used == size
            watch.observe(env.cgroup_events(), env.disk_usage())
            await sh(env, "rm big")
            watch.observe(env.cgroup_events(), env.disk_usage())
            rec = watch.record()
            assert rec["disk_full"] and rec["disk_peak_bytes"] == rec["disk_bytes"] == 32 << 20
            assert [e["kind"] for e in rec["events"]] == ["disk_full"] and rec["oom_kills"] == 0
            assert not env.disk_usage()[2]  # type: ignore[index]

    run(go())


def test_agent_cannot_escape():
    victim = subprocess.Popen(["sleep", "300"])
    try:
        async def go():
            async with Box() as env:
                r = await sh(env, "mount -t tmpfs none /tmp 2>&1; echo rc=$?")
                assert "rc=0" not in r.stdout
                r = await sh(env, f"kill -9 {victim.pid} 2>&1; echo rc=$?")
                assert "rc=0" not in r.stdout
                r = await sh(env, "ls /proc/1/root/ 2>&1; echo rc=$?")
                assert "rc=0" not in r.stdout and "Permission denied" in r.stdout
                r = await sh(env, "cat /proc/self/status | grep -E '^(CapEff|CapBnd|NoNewPrivs)'")
                assert "CapEff:\t0000000000000000" in r.stdout
                assert "CapBnd:\t0000000000000000" in r.stdout
                assert "NoNewPrivs:\t1" in r.stdout
                r = await sh(env, "echo 1 > /proc/sys/kernel/sysrq 2>&1; echo rc=$?")
                assert "rc=0" not in r.stdout
                r = await sh(env, "ls /dev")
                assert "vda" not in r.stdout and "sda" not in r.stdout
                # Signals from inside cannot end the sandbox itself.
                await sh(env, "kill -9 -1")
                r = await sh(env, "echo still-here")
                assert r.stdout == "still-here\n"

        run(go())
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_file_contract():
    async def go():
        async with Box() as env:
            await env.write_file("a/b/c.txt", "héllo\r\nworld")
            assert await env.read_file("a/b/c.txt") == "héllo\r\nworld"
            blob = bytes(range(256)) * 10
            await env.write_file("/tmp/blob.bin", blob)
            assert await env.read_file("/tmp/blob.bin", text=False) == blob
            r = await sh(env, "stat -c %U /home/agent/a/b/c.txt")
            assert r.stdout.strip() == "agent"
            with pytest.raises(FileNotFoundError):
                await env.read_file("nope.txt")
            with pytest.raises(IsADirectoryError):
                await env.read_file("a")
            with pytest.raises(IsADirectoryError):
                await env.write_file("a", "x")
            with pytest.raises(PermissionError):
                await env.write_file("/etc/passwd", "x")
            r = await env.exec(["cat"], input="piped", cwd="/tmp")
            assert r.stdout == "piped"
            r = await env.exec(["pwd"], cwd="a/b")
            assert r.stdout == "/home/agent/a/b\n"
            r = await env.exec(["id", "-u"], user="root")
            assert r.stdout == "0\n"
            from inspect_ai.util import SandboxUserUnsupportedError

            with pytest.raises(SandboxUserUnsupportedError):
                await env.exec(["id"], user="mallory")

    run(go())


def test_timeout_and_output_flood_leave_nothing():
    async def go():
        async with Box() as env:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await sh(env, "sleep 100", timeout=1)
            assert time.monotonic() - t0 < scaled(5)
            r = await sh(env, "pgrep -x sleep || echo none")
            assert r.stdout.strip() == "none"
            with pytest.raises(OutputLimitExceededError):
                await sh(env, "yes 'gigabytes of output'", timeout=60)
            r = await sh(env, "pgrep -x yes || echo none")
            assert r.stdout.strip() == "none"

    run(go())


def test_bad_configs_are_clear_errors(tmp_path, state_root):
    with pytest.raises(ValidationError, match="extra"):
        RedlineSandboxConfig(memory_gb=4)
    with pytest.raises(ValidationError, match="does not exist"):
        RedlineSandboxConfig(base_paths=["/no/such/base"])
    with pytest.raises(ValidationError, match="does not exist"):
        RedlineSandboxConfig(ro_binds={"/no/such/file": "/opt/x"})
    fake_root = tmp_path / "cgroup"
    fake_root.mkdir()
    with pytest.raises(CgroupError, match="not mounted"):
        Sandbox.create(sandbox_config(cgroup_root=str(fake_root)))
    assert not list((state_root / "sandboxes").glob("*"))


def test_sigkill_of_harness_then_sweep_leaves_nothing(tmp_path, state_root):
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from redline.sandbox import RedlineSandboxConfig, Sandbox
        async def main():
            boxes = [Sandbox.create(RedlineSandboxConfig(state_root={str(state_root)!r})) for _ in range(3)]
            for b in boxes:
                await b.run(["bash", "-c", "sleep 600 >/dev/null 2>&1 &"])
            print(" ".join(b.id for b in boxes), flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """))
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert len(holder.stdout.readline().split()) == 3
        from tests.conftest import _recorded_by_state, leftovers

        states = sorted((state_root / "sandboxes").iterdir())
        assert len(states) == 3
        # What the child recorded about its sandboxes (cgroups), to check after the sweep.
        traces = [_recorded_by_state(s) for s in states]
        assert all(t.cgroup_dirs for t in traces)
        holder.kill()
        holder.wait()
        # The lifeline ends every process at once...
        deadline = time.monotonic() + scaled(2)
        while leftovers(traces, [state_root])["processes"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leftovers(traces, [state_root])["processes"] == []
        # ...and the sweep (`redline cleanup`; `inspect sandbox cleanup redline` for the default
        # state root) removes the rest.
        r = subprocess.run([str(Path(sys.executable).parent / "redline"), "cleanup", "--state-root",
                            str(state_root)], capture_output=True, text=True, timeout=scaled(60))
        assert r.returncode == 0, r.stderr
        assert "Removed 3 sandbox(es)" in r.stdout
        left = leftovers(traces, [state_root])
        assert not any(left.values()), left
    finally:
        holder.kill()
        holder.wait()


def test_errors_during_create_leave_nothing():
    with pytest.raises(SandboxError):
        # bwrap cannot create a mount point under /proc: creation fails half-way.
        Sandbox.create(sandbox_config(ro_binds={"/etc/hostname": "/proc/nope/x"}))


def test_bind_parents_are_walkable_by_the_agent(tmp_path):
    """bwrap makes missing parents of a bind 0700; the sandbox makes them 0755 instead."""
    (tmp_path / "data.txt").write_text("lent\n")
    async def go():
        async with Box(ro_binds={str(tmp_path / "data.txt"): "/opt/deep/er/data.txt"}) as env:
            r = await sh(env, "cat /opt/deep/er/data.txt; stat -c %a /opt /opt/deep /opt/deep/er")
            assert r.stdout.split() == ["lent", "755", "755", "755"], r.stdout + r.stderr
            r = await sh(env, "echo x > /opt/deep/er/data.txt")
            assert not r.success

    run(go())
