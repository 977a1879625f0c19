"""The solver: puts the AI system into the sandbox, starts it, gives it its task, waits.

The system folder is copied to `/home/agent/ai_system/` (owned by the agent user), its model server
and agent are started by their own start scripts exactly as a user would start them, and the task
is sent to the agent's `/chat`. In gateway mode the sandbox's model router answers the model
server's calls with Inspect's active model. The agent's trajectory file is followed while it works
(progress and transcript) and copied into the sample's metadata and messages at the end; it is
written by the agent and so is a record for analysis, never evidence for the verdict.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
from inspect_ai.log import transcript
from inspect_ai.model import ChatMessageAssistant, ChatMessageUser
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.util import display_counter, sandbox

from redline.router import ModelRouter
from redline.sandbox import ProcInfo, RedlineSandboxEnvironment

SYSTEM_SRC = Path(__file__).parent / "system" / "ai_system"
SYSTEM_DIR = "/home/agent/ai_system"
READY_TIMEOUT = 60.0
CHAT_TIMEOUT = 7 * 24 * 3600  # the task's own limits end the conversation, not curl
POLL_SECONDS = 1.0
_steps_total = 0


class SystemStartError(RuntimeError):
    pass


@dataclass
class Original:
    """The original AI system's two processes (inside pids and start times, from /proc)."""

    agent_pid: int
    llm_pid: int
    agent_port: int
    llm_port: int
    agent_start: int = 0
    llm_start: int = 0


def system_archive(config: dict[str, Any]) -> bytes:
    """The system folder as a tar, with `config` written over its config.json."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(SYSTEM_SRC.rglob("*")):
            rel = path.relative_to(SYSTEM_SRC)
            if "__pycache__" in rel.parts or rel.parts[0] == "logs":
                continue
            info = tar.gettarinfo(str(path), arcname=f"ai_system/{rel}")
            info.uid, info.gid, info.uname, info.gname = 1000, 1000, "agent", "agent"
            if path.name == "config.json":
                data = (json.dumps(config, indent=2) + "\n").encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def default_config() -> dict[str, Any]:
    return json.loads((SYSTEM_SRC / "config.json").read_text())


async def sh(env: RedlineSandboxEnvironment, cmd: str, user: str | None = None, timeout: int = 60) -> str:
    r = await env.exec(["bash", "-c", cmd], user=user, timeout=timeout)
    if not r.success:
        raise SystemStartError(f"`{cmd}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:500]}")
    return r.stdout


async def install_system(env: RedlineSandboxEnvironment, config: dict[str, Any],
                         parent: str = "/home/agent") -> str:
    r = await env.exec(["tar", "-x", "-C", parent], input=system_archive(config), timeout=60)
    if not r.success:
        raise SystemStartError(f"cannot install the AI system: {r.stderr.strip()}")
    await sh(env, f"mkdir -p {parent}/ai_system/logs")
    return f"{parent}/ai_system"


async def wait_listening(env: RedlineSandboxEnvironment, port: int, log: str,
                         timeout: float = READY_TIMEOUT) -> ProcInfo:
    """The process that listens on `port` once it answers /health; a clear error with its log if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, text = await http(env, "GET", port, "/health", timeout=2)
        if status == 200 and "ok" in text:
            for p in await env.processes():
                if port in p.listening:
                    return p
        await asyncio.sleep(0.1)
    tail = await env.exec(["bash", "-c", f"tail -20 {log} 2>/dev/null"], timeout=10)
    raise SystemStartError(f"nothing answered on port {port} within {timeout:.0f} s; {log}:\n{tail.stdout}")


async def start_original(env: RedlineSandboxEnvironment, folder: str, agent_port: int,
                         llm_port: int) -> Original:
    """Start the model server, then the agent, with the system's own start scripts, detached."""
    # `cd || exit; cmd &` backgrounds the simple command itself, so no shell lingers as its parent.
    await sh(env, f"cd {folder} || exit 1; nohup python3 deploy_api_server.py --port {llm_port} "
                  "> logs/llm_server.log 2>&1 &")
    llm = await wait_listening(env, llm_port, f"{folder}/logs/llm_server.log")
    await sh(env, f"cd {folder} || exit 1; nohup python3 start.py --port {agent_port} "
                  f"--llm-url http://127.0.0.1:{llm_port} > logs/agent.log 2>&1 &")
    agent = await wait_listening(env, agent_port, f"{folder}/logs/agent.log")
    return Original(agent.pid, llm.pid, agent_port, llm_port, agent.start_time, llm.start_time)


async def read_trajectory(env: RedlineSandboxEnvironment, folder: str) -> list[dict[str, Any]]:
    try:
        text = await env.read_file(f"{folder}/logs/trajectory.jsonl")
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash (or edited by the agent): skip it
    return records


async def http(env: RedlineSandboxEnvironment, method: str, port: int, path: str,
               body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a request made inside the sandbox's network, as root. Status 0: no answer.

    The body comes back on stdout, never through a file the agent could swap.
    """
    cmd = ["curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", "-X", method,
           f"http://127.0.0.1:{port}{path}"]
    data = None
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        data = json.dumps(body)
    try:
        r = await env.exec(cmd, input=data, user="root", timeout=int(timeout) + 30)
    except TimeoutError:
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


def publish(records: list[dict[str, Any]], seen: list[dict[str, Any]]) -> None:
    """Mirror trajectory records not seen yet into the transcript and the progress display."""
    global _steps_total
    for rec in records[len(seen):]:
        seen.append(rec)
        if rec.get("type") != "step":
            continue
        _steps_total += 1
        display_counter("agent steps", str(_steps_total))
        action = rec.get("action") or {}
        transcript().info({"step": rec.get("step"), "tool": action.get("tool"), "args": action.get("args"),
                           "format_error": rec.get("format_error"), "model_error": rec.get("model_error"),
                           "observation": (rec.get("observation") or "")[:4000]}, source="ai_system")


async def follow(env: RedlineSandboxEnvironment, folder: str, seen: list[dict[str, Any]]) -> None:
    """Live progress: publish new steps while the agent works."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        publish(await read_trajectory(env, folder), seen)


def conversation_messages(records: list[dict[str, Any]]) -> list[ChatMessageAssistant | ChatMessageUser]:
    out: list[ChatMessageAssistant | ChatMessageUser] = []
    for rec in records:
        if rec.get("type") != "step":
            continue
        out.append(ChatMessageAssistant(content=rec.get("reply") or rec.get("model_error") or ""))
        if rec.get("observation"):
            out.append(ChatMessageUser(content=rec["observation"]))
    return out


SMALL_MODELS = ("redline/smollm2",)


def system_config(mode: str = "gateway", scaffold: str = "thinking", max_steps: int = 60,
                  command_timeout: int = 120, few_shot: bool | None = None,
                  constrain_output: bool | None = None, agent_port: int = 8000, llm_port: int = 9000,
                  on_sigterm: str | None = None, model_name: str = "default",
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json the original system is installed with. `few_shot`/`constrain_output` None
    means: decided when the run starts, by `small_model_settings()`."""
    full = mode == "full"
    return default_config() | {
        "agent_port": agent_port, "llm_port": llm_port, "llm_url": f"http://127.0.0.1:{llm_port}",
        "backend": "llama" if full else "gateway", "scaffold": scaffold, "max_steps": max_steps,
        "command_timeout": command_timeout, "model": model_name, "on_sigterm": on_sigterm,
        "few_shot": few_shot, "constrain_output": constrain_output,
    } | (extra or {})


def small_model_settings(config: dict[str, Any], model: str) -> dict[str, Any]:
    """A small model (the embedded one, in full mode or through the gateway) follows the five-field
    format only with example turns and a grammar, and needs short, less repetitive replies (see
    bench/README.md); capable models get none of that unless asked."""
    small = config["backend"] == "llama" or model in SMALL_MODELS
    out = dict(config)
    for key in ("few_shot", "constrain_output"):
        if out[key] is None:
            out[key] = small
    if small:
        out["max_tokens"] = min(out["max_tokens"], 512)
        if out.get("repeat_penalty") is None:
            out["repeat_penalty"] = 1.1
    return out


class SystemRun:
    """One run of the original AI system in the sample's sandbox.

    Entering installs and starts it (and, in gateway mode, its model router); leaving stops its
    conversation and records the trajectory in the sample, whether the run ended normally, by a
    limit, or by an error.
    """

    def __init__(self, state: TaskState, scenario: str, config: dict[str, Any]) -> None:
        self.state = state
        config = small_model_settings(config, str(state.model))
        self.config = config
        self.mode = "full" if config["backend"] == "llama" else "gateway"
        self.env = sandbox().as_type(RedlineSandboxEnvironment)
        self.router = ModelRouter(self.env) if self.mode == "gateway" else None
        self.meta: dict[str, Any] = {"scenario": scenario, "mode": self.mode, "scaffold": config["scaffold"],
                                     "config": config, "trajectory": [], "agent_status": "not_started",
                                     "steps": 0}
        state.metadata["redline"] = self.meta
        self.folder = SYSTEM_DIR
        self.original: Original | None = None
        self._seen: list[dict[str, Any]] = []
        self._stack = AsyncExitStack()
        self._t0 = time.time()
        self._follower: asyncio.Future[None] | None = None

    async def __aenter__(self) -> SystemRun:
        await self._stack.__aenter__()
        try:
            if self.router is not None:
                await self.router.start()
                await self._stack.enter_async_context(self.router.serving("run"))
            self.folder = await install_system(self.env, self.config)
            self.original = await start_original(self.env, self.folder, self.config["agent_port"],
                                                 self.config["llm_port"])
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            raise
        self.meta["original"] = asdict(self.original)
        self.meta["agent_status"] = "running"
        self._follower = asyncio.ensure_future(follow(self.env, self.folder, self._seen))
        return self

    async def chat(self, message: str) -> dict[str, Any]:
        """Send the original a message and wait for its final reply (recorded in the metadata)."""
        try:
            result = await chat(self.env, self.config["agent_port"], message)
        except BaseException:
            self.meta["agent_status"] = "timeout"
            raise
        self.meta["agent_status"] = result.get("status", "unknown")
        self.meta["agent_reply"] = result.get("reply", "")
        return result

    async def trajectory(self) -> list[dict[str, Any]]:
        records = await read_trajectory(self.env, self.folder)
        publish(records, self._seen)
        return records

    async def __aexit__(self, *exc: object) -> None:
        if self._follower is not None:
            self._follower.cancel()
        try:
            with anyio.CancelScope(shield=True):
                # A limit or an interrupt ends the conversation; the agent must stop acting too.
                await http(self.env, "POST", self.config["agent_port"], "/cancel", timeout=5)
                records = await self.trajectory()
                steps = [r for r in records if r.get("type") == "step"]
                self.meta.update(trajectory=steps, steps=len(steps), wall_seconds=time.time() - self._t0,
                                 format_errors=sum(1 for s in steps if s.get("format_error")))
                self.state.messages.extend(conversation_messages(records))
                if self.router is not None:
                    self.meta["model_calls"] = self.router.summaries("run")
        finally:
            await self._stack.__aexit__(None, None, None)
        self.state.output.completion = str(self.meta.get("agent_reply", ""))
        if exc[0] is None and self.router is not None and self.router.model_errors:
            # The model failed (or hit an Inspect limit): the sample must say so, not be scored as
            # an ordinary failure of the AI system.
            raise self.router.limit_error() or self.router.model_errors[0]


@solver
def ai_system(scenario: str = "self_replication", **config: Any) -> Solver:
    """Install and start the AI system in the sandbox, send it the sample's input, wait for it.

    `config` holds the `system_config()` arguments.
    """
    cfg = system_config(**config)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        async with SystemRun(state, scenario, cfg) as run:
            await run.chat(state.input_text)
        return state

    return solve
