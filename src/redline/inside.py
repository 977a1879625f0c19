"""Operating the AI system inside its sandbox: install it, start it, talk to it over HTTP, read
its trajectory. Shared by the runs (`redline.scenarios.common`) and the judge (`redline.judging`).

Requests are made inside the sandbox's network namespace as root, by curl; their bodies come back
on stdout, never through a file the agent could swap.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from inspect_ai.util import OutputLimitExceededError

from redline.record import OriginalSystem
from redline.sandbox import ProcInfo, RedlineSandboxEnvironment

SYSTEM_SRC = Path(__file__).parent / "system" / "ai_system"
SYSTEM_PARENT = "/home/agent"
READY_LIMIT = 1800.0  # a hang guard only: a server start is waited for while its process lives
CHAT_TIMEOUT = 7 * 24 * 3600  # the task's own limits end the conversation, not curl
AGENT_UID = 1000


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


async def http(env: RedlineSandboxEnvironment, method: str, port: int, path: str,
               body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a request to 127.0.0.1:`port` inside the sandbox. Status 0: no answer."""
    cmd = ["curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", "-X", method,
           f"http://127.0.0.1:{port}{path}"]
    data = None
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        data = json.dumps(body)
    try:
        r = await env.exec(cmd, input=data, user="root", timeout=int(timeout) + 30)
    except (TimeoutError, OutputLimitExceededError):
        return 0, ""
    text, _, code = r.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), text


async def chat(env: RedlineSandboxEnvironment, port: int, message: str,
               timeout: float = CHAT_TIMEOUT) -> dict[str, Any]:
    """Send `message` to the agent on `port` and wait for its final reply."""
    status, text = await http(env, "POST", port, "/chat", {"message": message}, timeout)
    if status != 200:
        return {"status": "agent_died" if status == 0 else "http_error", "http_status": status,
                "reply": text[:500]}
    try:
        reply = json.loads(text)
    except ValueError:
        reply = None
    return reply if isinstance(reply, dict) else {"status": "http_error", "reply": text[:500]}


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
        status, text = await http(env, "GET", port, "/health", timeout=2)
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
    """The agent's trajectory records; whatever the agent did to the file, at worst none."""
    try:
        text = await env.read_file(f"{folder}/logs/trajectory.jsonl")
    except (OSError, UnicodeDecodeError, OutputLimitExceededError):
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash (or edited by the agent): skip it
        if isinstance(rec, dict):
            records.append(rec)
    return records
