"""What the harness may do to shape a sandbox's device for a scenario (issue 15): paths hidden from
the base (`hide_paths`, overlay whiteouts) and harness-owned listeners inside the sandbox's network
(`Sandbox.listen`). Neither may weaken containment. All real sandboxes, checked from the host."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from redline.sandbox import RedlineSandboxConfig, Sandbox
from tests.helpers import sandbox_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftovers")]

HIDDEN = ["/usr/bin/ss", "/usr/bin/netstat", "/usr/bin/lsof", "/usr/bin/python",
          "/usr/lib/python3/dist-packages"]


async def sh(sb: Sandbox, cmd: str, user: str | None = None) -> str:
    r = await sb.run(["bash", "-c", cmd], user=user, timeout=60)
    return r.stdout.decode() + r.stderr.decode()


def test_hidden_paths_are_absent_and_nothing_else_changes():
    sb = Sandbox.create(sandbox_config(hide_paths=HIDDEN))
    try:
        out = asyncio.run(sh(sb, "for p in ss netstat lsof python; do command -v $p || echo NO $p; done; "
                                 "ls /usr/lib/python3/dist-packages 2>&1 | head -1; "
                                 "stat -c '%U %G %a' /usr/bin /usr/lib/python3; ls /usr/bin | wc -l; "
                                 "command -v python3 ip curl"))
        lines = out.splitlines()
        assert lines[:4] == ["NO ss", "NO netstat", "NO lsof", "NO python"], out
        assert "No such file or directory" in lines[4], out
        # The directories on the way look as they did (the host's root shows as nobody inside) ...
        assert lines[5:7] == ["nobody nogroup 755", "nobody nogroup 755"], out
        # ... and hold everything else.
        present = [p for p in Path("/usr/bin").iterdir() if str(p) not in HIDDEN]
        assert int(lines[7]) == len(present), out
        assert [Path(x).name for x in lines[8:]] == ["python3", "ip", "curl"], out
        # Neither the agent nor root inside can put anything in their place.
        for user in (None, "root"):
            out = asyncio.run(sh(sb, "touch /usr/bin/ss; ln -s python3 /usr/bin/python; mkdir /usr/bin/x; "
                                     "echo LEFT $(ls /usr/bin/ss /usr/bin/python /usr/bin/x 2>/dev/null "
                                     "| wc -l)",
                                 user=user))
            assert out.count("Permission denied") == 3 and "LEFT 0" in out, (user, out)
    finally:
        sb.destroy()


def test_hide_paths_are_checked():
    for bad, why in [("usr/bin/ss", "absolute"), ("/usr/bin/../bin/ss", "normalised"),
                     ("/etc/passwd", "not under a base path"), ("/usr", "not under a base path")]:
        with pytest.raises(ValidationError, match=why):
            RedlineSandboxConfig(hide_paths=[bad])
    # A path through a symlink would replace the link in the merged view: refused when made.
    link = next((p for p in Path("/usr/lib").iterdir() if p.is_symlink() and p.is_dir()), None)
    if link is not None:
        with pytest.raises(ValueError, match="symlink"):
            Sandbox.create(sandbox_config(hide_paths=[f"{link}/anything"]))


def test_a_harness_listener_is_inside_only_and_has_no_process():
    sb = Sandbox.create(sandbox_config())
    listener = sb.listen(9001)
    try:
        async def serve_once() -> None:
            loop = asyncio.get_running_loop()
            listener.setblocking(False)
            conn, _ = await loop.sock_accept(listener)
            await loop.sock_recv(conn, 4096)
            await loop.sock_sendall(conn, b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nbusy")
            conn.close()

        async def go() -> str:
            server = asyncio.ensure_future(serve_once())
            out = await sh(sb, "curl -s -m 10 http://127.0.0.1:9001/; echo; ss -ltnH; "
                               "python3 -m http.server 9001 --bind 127.0.0.1 2>&1 | tail -1")
            await asyncio.wait_for(server, 10)
            return out

        lines = asyncio.run(go()).splitlines()
        assert lines[0] == "busy"
        assert "127.0.0.1:9001" in lines[1]
        assert "Address already in use" in lines[-1]
        # No process of the sandbox owns it: the judge and the agent's kill see none.
        assert 9001 not in sb.listening_ports()
        # The host's loopback does not have it (only the sandbox's network does).
        with socket.socket() as probe:
            probe.settimeout(2)
            host_side = probe.connect_ex(("127.0.0.1", 9001))
        assert host_side != 0 or _someone_else_on_host(9001)
        with pytest.raises(OSError):
            sb.listen(9001)  # busy: the kernel says so
    finally:
        listener.close()
        sb.destroy()


def _someone_else_on_host(port: int) -> bool:
    """A host service of another engineer could hold the port on the host's loopback; then the
    check above proves nothing either way, and this says so instead of failing."""
    return any(f":{port:04X} " in line and " 0A " in line
               for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
