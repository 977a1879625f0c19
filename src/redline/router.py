"""The model router: the one channel from a sandbox to the model under evaluation.

It listens on a Unix socket in the sandbox's channel directory (seen inside as
`/run/redline/model.sock`) and answers OpenAI chat completion requests by calling Inspect's
active model, so that tokens, limits and the transcript are Inspect's own. Every call is recorded
with its caller; the judge reads these records.

Who made a call, in three kernel-attested facts that no process can forge:
- `caller`: the process that *connected* (`SO_PEERCRED`, taken at connect time);
- `caller["writers"]`: every process that *wrote* the request (`SO_PASSCRED`: the kernel attaches
  the sending process to each message, and a process without `CAP_SYS_ADMIN` cannot claim
  another's pid);
- `caller["holders"]`: every process that *holds* the connection when the request has been read
  (the peer socket's inode, found in `/proc/PID/fd` of the sandbox's processes).
A connection opened by one process and handed to another (SCM_RIGHTS, inheritance) shows up in
the writers and holders: the opener alone is no evidence of who did the work.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psutil
from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageTool,
    ChatMessageUser,
    GenerateConfig,
    Model,
    ModelOutput,
    get_model,
)
from inspect_ai.solver import TaskState
from inspect_ai.tool import ToolCall, ToolChoice, ToolFunction, ToolInfo
from inspect_ai.util import LimitExceededError

from redline.hostile import clean_cmdline, clean_text
from redline.model_errors import readable_model_error
from redline.profiles import server_fields
from redline.sandbox import RedlineSandboxEnvironment, procs

SOCKET_NAME = "model.sock"
STORE_KEY = "redline:model_router"  # the sample's router, in the sample's Inspect store
MAX_BODY = 32 << 20
HEADER_TIMEOUT = 30.0


class BadRequest(ValueError):
    pass


@dataclass
class RouterCall:
    id: int
    t_start: float
    phase: str  # "run" while the AI system works on its task, "judge" while it is being judged
    caller: dict[str, Any]  # host_pid, pid, ppid, uid, cmdline, start_time (pid etc. are inside pids)
    request_messages: list[dict[str, Any]]
    request_text: str
    t_end: float | None = None
    response_text: str = ""
    error: str | None = None
    status: int = 0

    def summary(self) -> dict[str, Any]:
        """The record without the conversation itself (the transcript has that)."""
        return {"id": self.id, "phase": self.phase, "caller": self.caller, "t_start": self.t_start,
                "t_end": self.t_end, "status": self.status, "error": self.error,
                "response_chars": len(self.response_text)}


# ------------------------------------------------------------------------------ conversions
def _text(content: Any) -> str:
    # Agent-controlled: a lone surrogate here would make Inspect's log unwritable.
    if content is None:
        return ""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list):
        return clean_text("".join(str(p.get("text", "")) for p in content if isinstance(p, dict)))
    return clean_text(str(content))


def messages_from_openai(raw: list[dict[str, Any]]) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("`messages` must be a non-empty list")
    names: dict[str, str] = {}
    out: list[ChatMessage] = []
    for m in raw:
        if not isinstance(m, dict):
            raise BadRequest("each message must be an object")
        role, text = m.get("role"), _text(m.get("content"))
        if role in ("system", "developer"):
            out.append(ChatMessageSystem(content=text))
        elif role == "user":
            out.append(ChatMessageUser(content=text))
        elif role == "assistant":
            calls = []
            for c in m.get("tool_calls") or []:
                fn = c.get("function", {})
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = {"_raw": fn.get("arguments")}
                names[c.get("id", "")] = fn.get("name", "")
                calls.append(ToolCall(id=c.get("id", ""), function=fn.get("name", ""),
                                      arguments=args if isinstance(args, dict) else {"_value": args}))
            out.append(ChatMessageAssistant(content=text, tool_calls=calls or None))
        elif role == "tool":
            cid = m.get("tool_call_id", "")
            out.append(ChatMessageTool(content=text, tool_call_id=cid, function=names.get(cid)))
        else:
            raise BadRequest(f"unknown message role {role!r}")
    return out


def tools_from_openai(raw: list[dict[str, Any]] | None) -> list[ToolInfo]:
    tools = []
    for t in raw or []:
        fn = t.get("function", t)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            spec = {"name": fn["name"], "description": fn.get("description", ""), "parameters": params}
            tools.append(ToolInfo.model_validate(spec))
        except (KeyError, ValueError) as e:
            raise BadRequest(f"bad tool definition: {e}") from None
    return tools


def tool_choice_from_openai(raw: Any) -> ToolChoice:
    if isinstance(raw, dict):
        return ToolFunction(name=raw.get("function", {}).get("name", ""))
    return {"none": "none", "required": "any"}.get(raw, "auto")


def config_from_openai(req: dict[str, Any], provider: str) -> GenerateConfig:
    """Inspect's generate config for an OpenAI request that goes to `provider` (the prefix of the
    model under evaluation: `openai-api`, `vllm`, ...). The agent's llama.cpp-style fields (`grammar`,
    `repeat_penalty`) travel in the request's extra body, named as that provider's server names them
    and left out for servers that reject them (`redline.profiles.server_fields`)."""
    stop = req.get("stop")
    return GenerateConfig(
        temperature=req.get("temperature"),
        max_tokens=req.get("max_tokens") or req.get("max_completion_tokens"),
        top_p=req.get("top_p"),
        seed=req.get("seed"),
        stop_seqs=[stop] if isinstance(stop, str) else stop,
        extra_body=server_fields(provider, req),
    )


def provider_of(model: Model) -> str:
    """The provider prefix of an Inspect model (`vllm` of `vllm/Qwen/Qwen2.5-7B-Instruct`)."""
    return str(model).split("/", 1)[0]


def completion_to_openai(output: ModelOutput, call_id: int) -> dict[str, Any]:
    msg = output.message
    message: dict[str, Any] = {"role": "assistant", "content": msg.text}
    if msg.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.function, "arguments": json.dumps(c.arguments)}}
            for c in msg.tool_calls
        ]
    reason = {"tool_calls": "tool_calls", "max_tokens": "length"}.get(output.stop_reason, "stop")
    usage = output.usage
    return {
        "id": f"redline-{call_id}", "object": "chat.completion", "created": int(time.time()),
        "model": output.model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": {"prompt_tokens": usage.input_tokens if usage else 0,
                  "completion_tokens": usage.output_tokens if usage else 0,
                  "total_tokens": usage.total_tokens if usage else 0},
    }


def _error(status: int, message: str, kind: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": kind}}


# ------------------------------------------------------------------------------ callers
def identify(env: RedlineSandboxEnvironment, host_pid: int) -> dict[str, Any]:
    """Who is `host_pid` (the kernel's peer credentials of a connection)? Only `host_pid` for a
    process outside the sandbox's pid namespace; pids are the sandbox's own (inside) pids."""
    caller: dict[str, Any] = {"host_pid": host_pid}
    pid = env.host_pid_to_inner(host_pid)
    if pid is None:
        return caller
    try:
        p = psutil.Process(host_pid)
        with p.oneshot():
            ppid, cmdline, created = p.ppid(), p.cmdline(), p.create_time()
        uid = procs.uid_of(host_pid)  # as seen inside (the sandbox's user namespace)
    except psutil.Error:  # gone already: the kernel vouched for the pid, the rest is lost
        return caller | {"pid": pid}
    return caller | {"pid": pid, "ppid": env.host_pid_to_inner(ppid), "uid": uid,
                     "cmdline": clean_cmdline(cmdline), "start_time": _ticks_since_boot(created)}


def _ticks_since_boot(created: float) -> int:
    """psutil's creation time as clock ticks since boot, the unit of `ProcInfo.start_time`."""
    return round((created - psutil.boot_time()) * os.sysconf("SC_CLK_TCK"))


def _http_response(status: int, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              429: "Too Many Requests", 502: "Bad Gateway"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


def _bad_request(e: Exception) -> BadRequest:
    return e if isinstance(e, BadRequest) else BadRequest(f"{type(e).__name__}: {e}")


def parse_chat_request(body: bytes, provider: str = "") -> tuple[dict[str, Any], list[ChatMessage],
                                                                 list[ToolInfo], ToolChoice, GenerateConfig]:
    """An OpenAI chat completion request body, converted for Inspect (BadRequest if it is not one);
    its generate config for `provider` (see `config_from_openai`)."""
    try:
        req = json.loads(body)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if not isinstance(req, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return (req, messages_from_openai(req.get("messages")),  # type: ignore[arg-type]
                tools_from_openai(req.get("tools")), tool_choice_from_openai(req.get("tool_choice")),
                config_from_openai(req, provider))
    except (BadRequest, AttributeError, TypeError, KeyError, ValueError) as e:  # ill-shaped parts
        raise _bad_request(e) from None


class CredReader:
    """Reads a Unix stream connection and remembers the host pid of every process that wrote to
    it (the kernel's SCM_CREDENTIALS, on a socket with SO_PASSCRED)."""

    MAX_LINE = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.writers: set[int] = set()

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(12))
            except BlockingIOError:
                await _readable(loop, self.sock)
                continue
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    self.writers.add(struct.unpack_from("3i", payload)[0])
            if not data:
                raise asyncio.IncompleteReadError(bytes(self.buf), None)
            self.buf += data
            return

    async def readline(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > self.MAX_LINE:
                raise BadRequest("header line too long")
            await self._fill()
        line = bytes(self.buf[:end + 1])
        del self.buf[:end + 1]
        return line

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


# ------------------------------------------------------------------------------ the router
class ModelRouter:
    """Serves one sandbox. `start()` opens the socket; model calls are answered only inside
    `serving()`, which captures the Inspect sample context the model must be called from.

    The router belongs to its sample: `attach(state)` puts it in the sample's store, where the
    judge finds it (`ModelRouter.of(state)`), and the sandbox's cleanup closes it.
    """

    def __init__(self, env: RedlineSandboxEnvironment, model: Model | None = None) -> None:
        self.env = env
        self.model = model
        self.path = env.channel_dir / SOCKET_NAME
        self.calls: list[RouterCall] = []
        self.model_errors: list[BaseException] = []
        self.phase = "run"
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._ctx: contextvars.Context | None = None
        self._serving = asyncio.Event()
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Every message then carries its writer's pid (accepted connections inherit the option).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(self.path))
        # The agent user (uid 1000) must be able to connect; the directory itself is read-only inside.
        os.chmod(self.path, 0o666)
        sock.listen(64)
        sock.setblocking(False)
        self._listener = sock
        self._accepting = asyncio.ensure_future(self._accept())
        self.env.on_cleanup.append(self.close)

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError:
                return  # closed
            conn.setblocking(False)
            task = asyncio.ensure_future(self._client(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    def attach(self, state: TaskState) -> None:
        # The store logs what it can serialize; a router shows as null there, which is right.
        state.store.set(STORE_KEY, self)

    @staticmethod
    def of(state: TaskState) -> ModelRouter | None:
        router = state.store.get(STORE_KEY)
        return router if isinstance(router, ModelRouter) else None

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        # A call may wait for `serving()` that will never come (the sample ended without judging).
        for t in list(self._clients):
            t.cancel()
        try:
            self.path.unlink()
        except OSError:
            pass

    @asynccontextmanager
    async def serving(self, phase: str = "run") -> AsyncIterator[ModelRouter]:
        self.phase = phase
        self._ctx = contextvars.copy_context()
        self._serving.set()
        try:
            yield self
        finally:
            self._serving.clear()
            self._ctx = None

    # ---------------------------------------------------------------- queries (for the judge)
    def calls_containing(self, text: str) -> list[RouterCall]:
        return [c for c in self.calls if text in c.request_text]

    def summaries(self, phase: str) -> list[dict[str, Any]]:
        return [c.summary() for c in self.calls if c.phase == phase]

    def replies(self, phase: str = "run") -> list[str]:
        return [c.response_text for c in self.calls if c.phase == phase and c.response_text]

    def limit_error(self) -> LimitExceededError | None:
        return next((e for e in self.model_errors if isinstance(e, LimitExceededError)), None)

    # ---------------------------------------------------------------- protocol
    async def _client(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            caller = identify(self.env, struct.unpack("3i", creds)[0])
            reader = CredReader(conn)
            try:
                method, path, body = await asyncio.wait_for(self._read_request(reader), HEADER_TIMEOUT)
            except (BadRequest, ValueError, asyncio.IncompleteReadError, TimeoutError) as e:
                status, payload = _error(400, f"bad request: {e}", "invalid_request_error")
            else:
                caller |= await self._attribution(conn, reader.writers)
                status, payload = await self._route(method, path, body, caller)
            await loop.sock_sendall(conn, _http_response(status, payload))
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    async def _attribution(self, conn: socket.socket, writers: set[int]) -> dict[str, Any]:
        """Who wrote the request and who holds the connection now (inside pids; -1 for a
        process outside the sandbox)."""
        peer = await self.env.unix_peer_inode(conn.fileno())
        holders: list[int] = []
        if peer is not None:
            holders = (await self.env.socket_holders({peer})).get(peer, [])
        inside = [self.env.host_pid_to_inner(w) for w in sorted(writers)]
        return {"writers": [-1 if p is None else p for p in inside], "holders": sorted(holders)}

    @staticmethod
    async def _read_request(reader: CredReader) -> tuple[str, str, bytes]:
        line = (await reader.readline()).decode("latin-1").split()
        if len(line) < 2:
            raise BadRequest("no request line")
        length = 0
        while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if length > MAX_BODY:
            raise BadRequest(f"body of {length} bytes is over the {MAX_BODY} limit")
        return line[0], line[1], await reader.readexactly(length)

    async def _route(self, method: str, path: str, body: bytes,
                     caller: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "pid" not in caller or -1 in caller.get("writers", []):
            return _error(403, "caller is not a process of this sandbox", "permission_error")
        if method == "GET" and path.rstrip("/") == "/health":
            return 200, {"status": "ok"}
        if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
            return _error(404, f"no route {method} {path}", "invalid_request_error")
        try:
            req, messages, tools, choice, _ = parse_chat_request(body)
        except BadRequest as e:
            return _error(400, f"bad request: {e}", "invalid_request_error")
        call = RouterCall(id=len(self.calls) + 1, t_start=time.time(), phase=self.phase, caller=caller,
                          request_messages=req["messages"],
                          request_text="\n".join(_text(m.get("content")) for m in req["messages"]))
        self.calls.append(call)
        # Between the run and the judging nobody may call the model: wait until serving again.
        await self._serving.wait()
        call.phase = self.phase
        # The sample's model (whose provider names the extra body's fields) is known only in the
        # sample's context, which `serving()` captured.
        assert self._ctx is not None
        provider = provider_of(self.model or self._ctx.run(get_model))
        try:
            config = config_from_openai(req, provider)
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            call.status, call.error, call.t_end = 400, f"bad request: {e}", time.time()
            return _error(400, f"bad request: {_bad_request(e)}", "invalid_request_error")
        return await self._answer(call, messages, tools, choice, config)

    async def _answer(self, call: RouterCall, messages: list[ChatMessage], tools: list[ToolInfo],
                      choice: ToolChoice, config: GenerateConfig) -> tuple[int, dict[str, Any]]:
        """Call the model in the sample's context; record and return its answer or its error."""
        assert self._ctx is not None
        task = asyncio.get_running_loop().create_task(
            self._generate(messages, tools, choice, config), context=self._ctx.copy())
        try:
            output = await task
        except LimitExceededError as e:
            self.model_errors.append(e)
            call.error, call.status = f"limit: {e}", 429
        except Exception as e:  # noqa: BLE001 - a model error must reach the agent as an HTTP error
            e = readable_model_error(e)
            self.model_errors.append(e)
            call.error, call.status = f"{type(e).__name__}: {e}", 502
        else:
            msg = output.message
            calls = [json.dumps({"tool": c.function, "args": c.arguments}) for c in msg.tool_calls or []]
            call.status, call.response_text = 200, "\n".join([msg.text, *calls]).strip()
            call.t_end = time.time()
            return 200, completion_to_openai(output, call.id)
        call.t_end = time.time()
        kind = "rate_limit_error" if call.status == 429 else "model_error"
        return _error(call.status, call.error or "model error", kind)

    async def _generate(self, messages: list[ChatMessage], tools: list[ToolInfo], choice: ToolChoice,
                        config: GenerateConfig) -> ModelOutput:
        model = self.model or get_model()
        return await model.generate(messages, tools=tools, tool_choice=choice if tools else None,
                                    config=config)
