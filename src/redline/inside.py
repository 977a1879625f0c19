"""Operating the AI system inside its sandbox: install it, start it, talk to it over HTTP, read
its trajectory. Shared by the runs (`redline.scenarios.common`) and the judge (`redline.judging`).

Requests go over sockets the harness itself opens in the sandbox's network namespace (no process
inside is needed, so a full pids cap cannot stop them and the agent cannot see them), bounded in
time and bytes; everything read back is hostile data (`redline.hostile`).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import tarfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redline.hostile import clean_json, clean_text
from redline.record import OriginalSystem
from redline.sandbox import ProcInfo, RedlineSandboxEnvironment

SYSTEM_SRC = Path(__file__).parent / "system" / "ai_system"
SYSTEM_PARENT = "/home/agent"
READY_LIMIT = 1800.0  # a hang guard only: a server start is waited for while its process lives
CHAT_TIMEOUT = 7 * 24 * 3600  # the task's own limits end the conversation, not curl
AGENT_UID = 1000
REPLY_LIMIT = 1 << 20  # bytes of an HTTP reply the harness reads; more is "no answer"
TRAJECTORY_LIMIT = 16 << 20  # bytes of the agent's trajectory file the harness reads
TRAJECTORY_TIMEOUT = 10.0


class SystemStartError(RuntimeError):
    pass


def default_config() -> dict[str, Any]:
    """The AI system's own config.json, as shipped."""
    return json.loads((SYSTEM_SRC / "config.json").read_text())


def _add(tar: tarfile.TarFile, path: Path, arcname: str, config: dict[str, Any]) -> None:
    info = tar.gettarinfo(str(path), arcname=arcname)
    info.uid, info.gid, info.uname, info.gname = AGENT_UID, AGENT_UID, "agent", "agent"
    if path.name == "config.json":
        data = (json.dumps(config, indent=2) + "\n").encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    elif path.is_file():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def system_archive(config: dict[str, Any]) -> bytes:
    """The system folder as a tar, with `config` written over its config.json."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(SYSTEM_SRC.rglob("*")):
            rel = path.relative_to(SYSTEM_SRC)
            if "__pycache__" not in rel.parts and rel.parts[0] != "logs":
                _add(tar, path, f"ai_system/{rel}", config)
    return buf.getvalue()


async def sh(env: RedlineSandboxEnvironment, cmd: str, user: str | None = None, timeout: int = 60) -> str:
    r = await env.exec(["bash", "-c", cmd], user=user, timeout=timeout)
    if not r.success:
        raise SystemStartError(f"`{cmd}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:500]}")
    return r.stdout


async def install_system(env: RedlineSandboxEnvironment, config: dict[str, Any],
                         parent: str = SYSTEM_PARENT) -> str:
    """Copy the AI system into the sandbox, owned by the agent; returns its folder."""
    r = await env.exec(["tar", "-x", "-C", parent], input=system_archive(config), timeout=60)
    if not r.success:
        raise SystemStartError(f"cannot install the AI system: {r.stderr.strip()}")
    await sh(env, f"mkdir -p {parent}/ai_system/logs")
    return f"{parent}/ai_system"


@dataclass
class HttpReply:
    """What came back from a server inside the sandbox (hostile data, read bounded).

    `status` 0 means no usable answer; `note` says why (refused, timeout, not accepted, too
    large). `client_port` is the harness's end of the connection (the judge finds the process
    that accepted it by that port)."""

    status: int
    text: str = ""
    note: str = ""
    client_port: int = 0


class _TooLarge(Exception):
    pass


def _request_bytes(method: str, path: str, body: dict[str, Any] | None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n")
    if body is not None:
        head += "Content-Type: application/json\r\n"
    return (head + "\r\n").encode() + data


async def _read_reply(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.x reply, reading at most `limit` bytes of it."""
    budget = [limit]

    async def line() -> bytes:
        raw = await reader.readline()
        budget[0] -= len(raw)
        if budget[0] < 0:
            raise _TooLarge
        return raw

    parts = (await line()).split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    while (h := await line()) not in (b"\r\n", b"\n", b""):
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while (size := int((await line()).split(b";")[0].strip() or b"0", 16)) > 0:
            if size > budget[0]:
                raise _TooLarge
            body += await reader.readexactly(size)
            budget[0] -= size
            await line()
        return status, bytes(body)
    length = headers.get("content-length", "")
    if length.isdigit():
        if int(length) > budget[0]:
            raise _TooLarge
        return status, await reader.readexactly(int(length))
    body = await reader.read(budget[0] + 1)  # until the server closes
    if len(body) > budget[0]:
        raise _TooLarge
    return status, body


async def request(env: RedlineSandboxEnvironment, method: str, port: int, path: str,
                  body: dict[str, Any] | None = None, timeout: float = 10, limit: int = REPLY_LIMIT,
                  connected: Callable[[int], Awaitable[bool]] | None = None) -> HttpReply:
    """One HTTP request to 127.0.0.1:`port` inside the sandbox, over a socket the harness owns in
    the sandbox's network namespace. Bounded: `timeout` seconds in all, `limit` bytes of reply.
    `connected(client_port)`, if given, runs once the connection is up and before the request
    is sent; False aborts it (the judge uses it to see who accepted the connection)."""
    try:
        sock = await env.tcp_socket()
    except OSError as e:
        return HttpReply(0, note=f"no socket: {e}")
    try:
        return await asyncio.wait_for(_exchange(sock, method, port, path, body, limit, connected), timeout)
    except TimeoutError:
        return HttpReply(0, note=f"no answer within {timeout:g} s", client_port=_port_of(sock))
    except _TooLarge:
        return HttpReply(0, note=f"a reply over {limit} bytes", client_port=_port_of(sock))
    except (OSError, ValueError, EOFError, asyncio.IncompleteReadError) as e:
        return HttpReply(0, note=f"{type(e).__name__}: {e}", client_port=_port_of(sock))
    finally:
        sock.close()


def _port_of(sock: socket.socket) -> int:
    try:
        return int(sock.getsockname()[1])
    except OSError:
        return 0


async def _exchange(sock: socket.socket, method: str, port: int, path: str, body: dict[str, Any] | None,
                    limit: int, connected: Callable[[int], Awaitable[bool]] | None) -> HttpReply:
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    client_port = _port_of(sock)
    if connected is not None and not await connected(client_port):
        return HttpReply(0, note="the connection was never accepted", client_port=client_port)
    reader, writer = await asyncio.open_connection(sock=sock.dup(), limit=1 << 16)
    try:
        writer.write(_request_bytes(method, path, body))
        await writer.drain()
        status, data = await _read_reply(reader, limit)
    finally:
        writer.close()
    return HttpReply(status, data.decode("utf-8", errors="replace"), client_port=client_port)


async def http(env: RedlineSandboxEnvironment, method: str, port: int, path: str,
               body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a request to 127.0.0.1:`port` inside the sandbox. Status 0: no answer."""
    r = await request(env, method, port, path, body, timeout)
    return r.status, r.text


async def chat(env: RedlineSandboxEnvironment, port: int, message: str,
               timeout: float = CHAT_TIMEOUT) -> dict[str, Any]:
    """Send `message` to the agent on `port` and wait for its final reply."""
    status, text = await http(env, "POST", port, "/chat", {"message": message}, timeout)
    if status != 200:
        return {"status": "agent_died" if status == 0 else "http_error", "http_status": status,
                "reply": clean_text(text, 500)}
    try:
        reply = clean_json(json.loads(text))
    except (ValueError, RecursionError):
        reply = None
    return reply if isinstance(reply, dict) else {"status": "http_error", "reply": clean_text(text, 500)}


async def answers(env: RedlineSandboxEnvironment, port: int, path: str = "/health") -> bool:
    status, _ = await http(env, "GET", port, path)
    return status == 200


async def busy(env: RedlineSandboxEnvironment, port: int) -> bool:
    """Is the agent on `port` working on a conversation?"""
    status, text = await http(env, "GET", port, "/health", timeout=5)
    return status == 200 and '"busy": true' in text


async def wait_listening(env: RedlineSandboxEnvironment, port: int, pid: int, log: str,
                         limit: float = READY_LIMIT) -> ProcInfo:
    """The process that listens on `port` once it answers /health. Waits as long as process `pid`
    (its launcher) lives: loading weights takes seconds on an idle machine and minutes on a busy
    one. A clear error with its log if it died, or did not answer within `limit`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        reply = await request(env, "GET", port, "/health", timeout=2)
        if reply.note.startswith("no socket"):  # the harness's fault, not a slow server: no waiting
            raise SystemStartError(f"cannot ask the server for port {port}: {reply.note}")
        status, text = reply.status, reply.text
        procs = await env.processes()
        if status == 200 and "ok" in text:
            for p in procs:
                if port in p.listening:
                    return p
        if not any(p.pid == pid for p in procs):
            return await _start_failed(env, port, log, "exited before it answered")
        await asyncio.sleep(0.1)
    return await _start_failed(env, port, log, f"did not answer within {limit:.0f} s")


async def _start_failed(env: RedlineSandboxEnvironment, port: int, log: str, what: str) -> ProcInfo:
    tail = await env.exec(["bash", "-c", f"tail -20 {log} 2>/dev/null"], timeout=10)
    raise SystemStartError(f"the server for port {port} {what}; {log}:\n{tail.stdout}")


async def launch(env: RedlineSandboxEnvironment, folder: str, command: str, log: str) -> int:
    """Start `command` in `folder`, detached, output to `log`; returns its (inside) pid."""
    # `cd || exit; cmd &` backgrounds the simple command itself, so no shell lingers as its parent.
    out = await sh(env, f"cd {folder} || exit 1; nohup {command} > {log} 2>&1 & echo $!")
    return int(out.split()[-1])


async def start_original(env: RedlineSandboxEnvironment, folder: str, agent_port: int,
                         model_server_port: int) -> OriginalSystem:
    """Start the model server, then the agent, with the system's own start scripts, detached."""
    pid = await launch(env, folder, f"python3 deploy_api_server.py --port {model_server_port}",
                       "logs/llm_server.log")
    server = await wait_listening(env, model_server_port, pid, f"{folder}/logs/llm_server.log")
    pid = await launch(env, folder, f"python3 start.py --port {agent_port} "
                                    f"--llm-url http://127.0.0.1:{model_server_port}", "logs/agent.log")
    agent = await wait_listening(env, agent_port, pid, f"{folder}/logs/agent.log")
    return OriginalSystem(agent_pid=agent.pid, model_server_pid=server.pid, agent_port=agent_port,
                          model_server_port=model_server_port, agent_start=agent.start_time,
                          model_server_start=server.start_time)


async def read_trajectory(env: RedlineSandboxEnvironment, folder: str) -> list[dict[str, Any]]:
    """The agent's trajectory records; whatever the agent did to the file (a FIFO, a symlink to a
    device, a huge or sparse file, lines that are not JSON), at worst none. Read with the
    sandbox's bounded reader: a regular file inside the sandbox, its first TRAJECTORY_LIMIT bytes."""
    data = await env.read_bytes(f"{folder}/logs/trajectory.jsonl", limit=TRAJECTORY_LIMIT,
                                timeout=TRAJECTORY_TIMEOUT, truncate=True)
    records = []
    for line in (data or b"").decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by a crash (or edited by the agent): skip it
        if isinstance(rec, dict):
            records.append(clean_json(rec))
    return records
