"""Run by tests/test_rootless.py as a throwaway non-root user: one rootless sandbox, a few escape
attempts against it, then its teardown. Prints one JSON object (the facts the test asserts)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from redline.sandbox import Sandbox, procs
from redline.sandbox.config import RedlineSandboxConfig, default_state_root

PIDS_MAX = 64


async def probe(sb: Sandbox, canary_port: int, canary_file: str) -> dict:
    async def sh(script: str, user: str | None = None) -> tuple[int, str]:
        r = await sb.run(["bash", "-c", script], user=user, timeout=60)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    out: dict = {}
    out["id"] = (await sh("id -u; id -g"))[1].split()
    out["root_id"] = (await sh("id -u", user="root"))[1].split()
    with open(f"/proc/{sb.init_pid}/uid_map") as f:  # as the host sees it
        out["uid_map"] = f.read().split()
    out["caps"] = (await sh("grep CapEff /proc/self/status"))[1].split()[-1]
    # Escapes: a new user namespace, the host's loopback, a host file, /usr, host pids, a fork bomb.
    out["unshare_user"] = (await sh("unshare -U true"))[0]
    out["host_tcp"] = (await sh(f"curl -s -m 3 http://127.0.0.1:{canary_port}/ >/dev/null"))[0]
    out["host_file"] = (await sh(f"cat {canary_file}"))[0]
    out["usr_write"] = (await sh("touch /usr/bin/rl-canary"))[0]
    out["etc_write"] = (await sh("echo x >> /etc/passwd"))[0]
    out["host_pid_seen"] = (await sh(f"kill -0 {os.getpid()}"))[0]
    code = ("import os, time\nmade = 0\nfor _ in range(200):\n try:\n  pid = os.fork()\n except OSError:\n"
            "  break\n if pid == 0:\n  time.sleep(5)\n  os._exit(0)\n made += 1\nprint(made)")
    out["forks"] = int((await sh(f"python3 -c '{code}'"))[1].split()[-1])
    await sh("setsid sleep 300 >/dev/null 2>&1 < /dev/null &")
    out["processes"] = [p.cmdline[:2] for p in sb.processes()]
    sb.write_file("note.txt", b"from the harness")
    out["read_back"] = sb.read_file("note.txt").decode()
    out["read_outside_root"] = sb.read_bytes("/proc/1/root/etc/hostname")
    usage = sb.disk_usage()
    out["disk_size"] = usage[1] if usage else None
    out["containment"] = sb.containment
    out["harness_sockets"] = await harness_sockets(sb, sh)
    return out


async def harness_sockets(sb: Sandbox, sh) -> dict:
    """The harness's own sockets in the sandbox's network namespace (a normal user cannot join it:
    the socket broker makes them): a listener the agent sees, a client that reaches it."""
    lsock = sb.listen(9123)
    try:
        seen = (await sh("cat /proc/net/tcp"))[1]
        client = sb.socket_future().result(30)
        with client:
            client.settimeout(10)
            client.connect(("127.0.0.1", 9123))
            conn, _ = lsock.accept()
            conn.close()
        return {"listener_seen_inside": ":23A3 00000000:0000 0A" in seen, "connected": True}
    finally:
        lsock.close()


def main() -> None:
    canary_port, canary_file = int(sys.argv[1]), sys.argv[2]
    t0 = time.monotonic()
    sb = Sandbox.create(RedlineSandboxConfig(pids_max=PIDS_MAX, disk_bytes=64 << 20))
    created = time.monotonic() - t0
    try:
        out = asyncio.run(probe(sb, canary_port, canary_file))
        hosts = procs.descendants(sb.init_pid)
    finally:
        sb.destroy()
    deadline = time.monotonic() + 10
    while (left := [p for p in hosts if procs.read_stat(p) is not None]) and time.monotonic() < deadline:
        time.sleep(0.05)
    out.update(created_s=created, state_root=sb.cfg.state_root, default_state_root=default_state_root(),
               left=left, state_left=sb.state.exists(), pids_max=PIDS_MAX, euid=os.geteuid())
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
