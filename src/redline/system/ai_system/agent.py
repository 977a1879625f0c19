"""The agent: a language model that works through shell commands, served over HTTP.

`POST /chat {"message": ...}` starts a conversation: the model answers in steps, each step one
tool call (EXECUTE_CMD, RECEIVE_MSG or FINISH), until FINISH or the step limit. Standard library
only, so that it runs on any python3.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("EXECUTE_CMD", "RECEIVE_MSG", "FINISH")
FIELDS = ("explanation", "gaps", "findings", "plan", "action")
REQUIRED_ARGS = {"EXECUTE_CMD": "command", "RECEIVE_MSG": "handle", "FINISH": "status"}
MODEL_TIMEOUT = 1800


def load_config(path: str | Path | None = None) -> dict:
    with open(path or HERE / "config.json") as f:
        return json.load(f)


class ModelError(Exception):
    pass


# ------------------------------------------------------------------------------ model client
class Reply:
    """One model reply: its text, its native tool calls, and why generation stopped."""

    def __init__(self, message: dict, finish_reason: str | None) -> None:
        self.message = message
        self.text: str = message.get("content") or ""
        self.tool_calls: list = message.get("tool_calls") or []
        self.finish_reason = finish_reason

    @property
    def cut_off(self) -> bool:
        """The reply ended because it reached the token limit, not because it was complete."""
        return self.finish_reason == "length"


class LLM:
    """A client of an OpenAI-compatible chat completions endpoint."""

    def __init__(self, url: str, config: dict) -> None:
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.config = config
        self.grammar: str | None = None
        if config.get("constrain_output") and config.get("scaffold", "thinking") == "thinking":
            self.grammar = (HERE / "prompts" / "five_fields.gbnf").read_text()

    def request(self, messages: list[dict], tools: list[dict] | None) -> dict:
        body: dict = {"model": self.config.get("model", "default"), "messages": messages,
                      "temperature": self.config.get("temperature", 0.0)}
        # Unset (null) settings are left to the model server.
        for key in ("max_tokens", "seed", "repeat_penalty"):
            if self.config.get(key) is not None:
                body[key] = self.config[key]
        if tools:
            body["tools"] = tools
        if self.grammar:
            body["grammar"] = self.grammar  # llama.cpp's field for a GBNF grammar
        return body

    def chat(self, messages: list[dict], tools: list[dict] | None = None) -> Reply:
        body = json.dumps(self.request(messages, tools)).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=MODEL_TIMEOUT) as r:
                data = json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise ModelError(f"model server answered HTTP {e.code}: {detail}") from None
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot reach the model server at {self.url}: {e}") from None
        try:
            choice = data["choices"][0]
            return Reply(choice["message"], choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelError(f"malformed model response: {str(data)[:300]}") from None


# ------------------------------------------------------------------------------ tools
def printable(raw: bytes, limit: int) -> str:
    """Text a model can read: undecodable bytes replaced, control characters escaped, long output
    cut in the middle, because both the start (errors) and the end (results) matter."""
    text = raw.decode("utf-8", errors="replace")
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > limit:
        half = limit // 2
        cut = len(text) - 2 * half
        text = f"{text[:half]}\n[... {cut} characters truncated ...]\n{text[-half:]}"
    return text


class Shell:
    """Runs commands in a fresh bash in the working directory, and keeps background jobs."""

    def __init__(self, cwd: Path, limit: int) -> None:
        self.cwd = cwd
        self.limit = limit
        self.jobs: dict[str, tuple[subprocess.Popen, Path, int]] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="agent-"))
        self.current: subprocess.Popen | None = None

    def interrupt(self) -> None:
        """Kill the foreground command (and what it started in its session)."""
        proc = self.current
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self, command: str, timeout: float) -> tuple[int | None, str]:
        # Output goes to a file, not a pipe: a command that leaves a server running in the
        # background would hold a pipe open forever.
        with tempfile.TemporaryFile(dir=self.tmp) as out:
            proc = subprocess.Popen(["bash", "-c", command], cwd=self.cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.current = proc
            try:
                code: int | None = proc.wait(timeout=timeout)
                note = ""
            except subprocess.TimeoutExpired:
                self.interrupt()
                proc.wait()
                code, note = None, f"\n[command timed out after {timeout:g} s and was killed]"
            finally:
                self.current = None
            out.seek(0)
            return code, printable(out.read(), self.limit) + note

    def start(self, command: str) -> str:
        handle = f"bg-{len(self.jobs) + 1}"
        log = self.tmp / f"{handle}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", command], cwd=self.cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.jobs[handle] = (proc, log, 0)
        return handle

    def receive(self, handle: str) -> tuple[str, str]:
        """(status, output written since the last call) of a background job."""
        if handle not in self.jobs:
            known = ", ".join(self.jobs) or "none"
            raise KeyError(f"no background job {handle!r} (known: {known})")
        proc, log, offset = self.jobs[handle]
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read()
        self.jobs[handle] = (proc, log, offset + len(data))
        code = proc.poll()
        return ("running" if code is None else f"exited({code})"), printable(data, self.limit)


# ------------------------------------------------------------------------------ parsing
class FormatError(ValueError):
    pass


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object in `text` (models wrap them in fences and prose)."""
    found, decoder, i = [], json.JSONDecoder(), 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = end
    return found


def parse_reply(text: str) -> tuple[dict, dict]:
    """(fields, action) of a thinking-scaffold reply; FormatError says what is wrong."""
    objs = [o for o in json_objects(text) if any(k.lower() in FIELDS for k in o)]
    if not objs:
        if "{" in text:
            start = text.find("{")
            try:
                json.loads(text[start:text.rfind("}") + 1])
            except ValueError as e:
                raise FormatError(f"the JSON object is not valid JSON ({e})") from None
        raise FormatError("no JSON object with the five fields was found")
    if len(objs) > 1:
        raise FormatError("the reply holds more than one JSON object; give exactly one action per reply")
    obj = {k.lower(): v for k, v in objs[0].items()}
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise FormatError(f"missing field(s): {', '.join(missing)}")
    action = obj["action"]
    if isinstance(action, list):
        raise FormatError("`action` holds several actions; give exactly one")
    if not isinstance(action, dict):
        raise FormatError('`action` must be an object like {"tool": "EXECUTE_CMD", "args": {...}}')
    tool = str(action.get("tool", "")).upper()
    if tool not in TOOLS:
        raise FormatError(f"unknown tool {action.get('tool')!r}; the tools are {', '.join(TOOLS)}")
    args = action.get("args", {})
    if not isinstance(args, dict) or REQUIRED_ARGS[tool] not in args:
        raise FormatError(f"{tool} needs args {{\"{REQUIRED_ARGS[tool]}\": ...}}")
    plan = obj["plan"] if isinstance(obj["plan"], list) else [obj["plan"]]
    fields = {"explanation": obj["explanation"], "gaps": obj["gaps"], "findings": obj["findings"],
              "plan": [str(p) for p in plan[:3]]}
    return fields, {"tool": tool, "args": args}


def parse_tool_calls(message: dict) -> dict:
    calls = message.get("tool_calls") or []
    if len(calls) != 1:
        raise FormatError("call exactly one tool per reply" if calls else
                          f"no tool was called; call one of {', '.join(TOOLS)}")
    fn = calls[0].get("function", {})
    tool = str(fn.get("name", "")).upper()
    if tool not in TOOLS:
        raise FormatError(f"unknown tool {fn.get('name')!r}; the tools are {', '.join(TOOLS)}")
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError as e:
        raise FormatError(f"the tool arguments are not valid JSON ({e})") from None
    if not isinstance(args, dict) or REQUIRED_ARGS[tool] not in args:
        raise FormatError(f"{tool} needs the argument {REQUIRED_ARGS[tool]!r}")
    return {"tool": tool, "args": args}


TOOL_SPECS = [
    {"type": "function", "function": {
        "name": "EXECUTE_CMD", "description": "Run a bash command in the working directory.",
        "parameters": {"type": "object", "properties": {
            "command": {"type": "string"},
            "timeout": {"type": "integer", "description": "seconds (default from config)"},
            "background": {"type": "boolean", "description": "run in the background, return a handle"}},
            "required": ["command"]}}},
    {"type": "function", "function": {
        "name": "RECEIVE_MSG", "description": "New output and status of a background command.",
        "parameters": {"type": "object", "properties": {"handle": {"type": "string"}},
                       "required": ["handle"]}}},
    {"type": "function", "function": {
        "name": "FINISH", "description": "End the task with a final status message.",
        "parameters": {"type": "object", "properties": {"status": {"type": "string"}},
                       "required": ["status"]}}},
]


# ------------------------------------------------------------------------------ the loop
class Inbox:
    """Messages that arrive (by signal) while a conversation runs; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[str] = []

    def put(self, message: str) -> None:
        with self.lock:
            self.messages.append(message)

    def take(self) -> list[str]:
        with self.lock:
            taken, self.messages = self.messages, []
        return taken


class Conversation:
    """The state of one conversation: its messages, its step count and, once over, how it ended."""

    def __init__(self, number: int, messages: list[dict], max_steps: int) -> None:
        self.number = number
        self.messages = messages
        self.max_steps = max_steps
        self.step = 0
        self.format_errors = 0
        self.status: str | None = None  # set when the conversation is over
        self.reply = ""

    def stop(self, status: str, reply: str) -> None:
        self.status, self.reply = status, reply


class Agent:
    """The agent loop: ask the model, run the one action of its reply, show it the observation."""

    def __init__(self, config: dict, llm_url: str) -> None:
        self.config = config
        self.scaffold = config.get("scaffold", "thinking")
        self.tools = TOOL_SPECS if self.scaffold == "react" else None
        self.llm = LLM(llm_url, config)
        self.shell = Shell(HERE, int(config.get("max_output_chars", 8000)))
        self.trajectory = HERE / config.get("trajectory_path", "logs/trajectory.jsonl")
        self.trajectory.parent.mkdir(parents=True, exist_ok=True)
        self.conversations = 0
        self.cancelled = threading.Event()
        self.inbox = Inbox()

    def log(self, record: dict) -> None:
        with open(self.trajectory, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def system_prompt(self) -> str:
        text = (HERE / "prompts" / f"{self.scaffold}.md").read_text()
        return text.replace("{cwd}", str(HERE)).replace("{max_steps}", str(self.config.get("max_steps")))

    def converse(self, message: str, max_steps: int | None = None) -> dict:
        """One conversation: the task message, then model turns until FINISH or the step limit."""
        conv = self.begin(message, max_steps)
        while conv.status is None:
            self.step(conv)
        self.log({"type": "end", "conversation": conv.number, "t": time.time(), "status": conv.status,
                  "reply": conv.reply, "steps": conv.step, "format_errors": conv.format_errors})
        return {"reply": conv.reply, "status": conv.status, "steps": conv.step}

    def begin(self, message: str, max_steps: int | None) -> Conversation:
        self.conversations += 1
        self.log({"type": "task", "conversation": self.conversations, "t": time.time(), "message": message,
                  "scaffold": self.scaffold, "config": self.config, "pid": os.getpid()})
        messages = [{"role": "system", "content": self.system_prompt()}]
        if self.config.get("few_shot") and self.scaffold == "thinking":
            messages += json.loads((HERE / "prompts" / "few_shot.json").read_text())
        messages.append({"role": "user", "content": message})
        return Conversation(self.conversations, messages, int(max_steps or self.config.get("max_steps", 60)))

    def step(self, conv: Conversation) -> None:
        """One turn: the model's reply, its action, the observation (all logged as one record)."""
        if self.cancelled.is_set():
            return conv.stop("cancelled", "The conversation was stopped.")
        if conv.step >= conv.max_steps:
            return conv.stop("step_limit", "The step limit was reached.")
        conv.step += 1
        record: dict = {"type": "step", "conversation": conv.number, "step": conv.step,
                        "t_start": time.time(), "reply": None, "fields": None, "action": None,
                        "format_error": None, "observation": None, "exit_code": None}
        try:
            reply = self.llm.chat(conv.messages, self.tools)
        except ModelError as e:
            record.update(model_error=str(e), t_end=time.time(), tool_seconds=0.0)
            record["model_seconds"] = record["t_end"] - record["t_start"]
            self.log(record)
            return conv.stop("model_error", str(e))
        t_model = time.time()
        action = self.understand(reply, record, conv)
        observation = self.observe(action, record, conv.step)
        record.update(observation=observation, t_end=time.time(), model_seconds=t_model - record["t_start"],
                      tool_seconds=time.time() - t_model)
        self.log(record)
        if action is not None and action["tool"] == "FINISH":
            return conv.stop("finished", str(action["args"]["status"]))
        conv.messages += self.observation_messages(reply, observation or "")

    def understand(self, reply: Reply, record: dict, conv: Conversation) -> dict | None:
        """The action of `reply` (None when it is malformed), with the reply added to the conversation."""
        record["reply"] = reply.text
        try:
            if self.tools:
                fields, action = {"explanation": reply.text}, parse_tool_calls(reply.message)
            else:
                fields, action = parse_reply(reply.text)
            record.update(fields=fields, action=action)
        except FormatError as e:
            conv.format_errors += 1
            action, record["format_error"] = None, self.format_problem(reply, e)
        assistant: dict = {"role": "assistant", "content": reply.text}
        if self.tools:
            record["tool_calls"] = reply.tool_calls or None
            if reply.tool_calls:
                assistant["tool_calls"] = reply.tool_calls
        conv.messages.append(assistant)
        return action

    def format_problem(self, reply: Reply, error: FormatError) -> str:
        if not reply.cut_off:
            return str(error)
        limit = self.config.get("max_tokens")
        at = f" of {limit} tokens" if limit else ""
        return (f"the reply was cut off at the length limit{at} before it was complete ({error}); "
                "give a shorter reply")

    def observe(self, action: dict | None, record: dict, step: int) -> str | None:
        """What the model sees next: the action's result (None after FINISH), after any messages."""
        if action is None:
            observation = f"FORMAT ERROR: {record['format_error']}. Nothing was run; reply again."
        elif action["tool"] == "FINISH":
            return None
        else:
            body, record["exit_code"] = self.act(action)
            observation = f"OBSERVATION (step {step}, {action['tool']})\n{body}"
        messages = self.inbox.take()
        return "\n\n".join(["MESSAGE: " + m for m in messages] + [observation])

    def observation_messages(self, reply: Reply, observation: str) -> list[dict]:
        # Native tool calling wants one tool message per call id; prose gets a user turn.
        calls = reply.tool_calls if self.tools else []
        if not calls:
            return [{"role": "user", "content": observation}]
        return [{"role": "tool", "tool_call_id": c.get("id", ""), "content": observation} for c in calls]

    def act(self, action: dict) -> tuple[str, int | None]:
        tool, args = action["tool"], action["args"]
        if tool == "EXECUTE_CMD":
            default = float(self.config.get("command_timeout", 120))
            timeout = min(float(args.get("timeout") or default), default * 10)
            if args.get("background"):
                handle = self.shell.start(str(args["command"]))
                return f"handle: {handle}\nstatus: running\n(use RECEIVE_MSG to read its output)", None
            code, out = self.shell.run(str(args["command"]), timeout)
            return f"exit_code: {code if code is not None else 'timeout'}\noutput:\n{out}", code
        if tool == "RECEIVE_MSG":
            try:
                status, out = self.shell.receive(str(args["handle"]))
            except KeyError as e:
                return f"error: {e.args[0]}", None
            return f"handle: {args['handle']}\nstatus: {status}\noutput:\n{out}", None
        raise AssertionError(tool)


# ------------------------------------------------------------------------------ HTTP service
class Service:
    """At most one conversation at a time; messages that arrive meanwhile are not lost."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.lock = threading.Lock()  # held while a conversation runs
        # Orders a message's arrival against the end of a conversation: a message is either seen
        # by the running conversation or starts the next one, never dropped in between.
        self.handover = threading.Lock()

    def chat(self, message: str, max_steps: int | None = None) -> dict | None:
        """None when a conversation is already running."""
        if not self.lock.acquire(blocking=False):
            return None
        self.agent.cancelled.clear()
        return self.run(message, max_steps)

    def run(self, message: str, max_steps: int | None = None) -> dict:
        """Run a conversation; the caller holds the lock, which this hands on or releases."""
        try:
            return self.agent.converse(message, max_steps)
        finally:
            self.next_or_release()

    def next_or_release(self) -> None:
        with self.handover:
            messages = self.agent.inbox.take()
            if not messages:
                self.lock.release()
                return
        # Messages came too late for the conversation that just ended: they start the next one
        # (which stops at once if a /cancel came meanwhile: only /chat and a new signal clear it).
        threading.Thread(target=self.run, args=("\n\n".join(messages),), daemon=True).start()

    def notify(self, message: str) -> None:
        """Deliver a message now: into the running conversation, or as a new one."""
        with self.handover:
            if not self.lock.acquire(blocking=False):
                self.agent.inbox.put(message)
                return
        self.agent.cancelled.clear()
        threading.Thread(target=self.run, args=(message,), daemon=True).start()

    def cancel(self) -> bool:
        """Stop the running conversation (and drop waiting messages); True if one was running."""
        self.agent.inbox.take()
        self.agent.cancelled.set()
        self.agent.shell.interrupt()
        return self.lock.locked()


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self.send(200, {"status": "ok", "busy": service.lock.locked()})
            else:
                self.send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") == "/cancel":
                return self.send(200, {"status": "cancelling" if service.cancel() else "idle"})
            if self.path.rstrip("/") != "/chat":
                return self.send(404, {"error": "not found"})
            try:
                body = json.loads(raw or b"{}")
                message = body["message"]
                if not isinstance(message, str):
                    raise TypeError("message must be a string")
            except (ValueError, KeyError, TypeError) as e:
                return self.send(400, {"error": f'expected JSON {{"message": "..."}} ({e})'})
            result = service.chat(message, body.get("max_steps"))
            if result is None:
                return self.send(409, {"error": "busy: a conversation is already running"})
            self.send(200, result)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def deliver(arrivals: queue.SimpleQueue[str], service: Service) -> None:
    while True:
        service.notify(arrivals.get())


def serve(port: int, llm_url: str, config: dict) -> None:
    service = Service(Agent(config, llm_url))
    if config.get("on_sigterm"):
        # A termination signal becomes a message to the agent instead of ending the process.
        # The handler only queues it (SimpleQueue.put is safe there, even when the handler
        # interrupts a lock holder); a thread delivers it.
        arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
        signal.signal(signal.SIGTERM, lambda *_: arrivals.put(config["on_sigterm"]))
        threading.Thread(target=deliver, args=(arrivals, service), daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(service))
    server.daemon_threads = True
    print(f"agent listening on 127.0.0.1:{port}, model at {llm_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Start the agent service.")
    ap.add_argument("--port", type=int, help="port to listen on (default: agent_port in the config)")
    ap.add_argument("--llm-url", help="model server URL (default: llm_url in the config)")
    ap.add_argument("--config", help="config file (default: config.json next to this file)")
    a = ap.parse_args(argv)
    config = load_config(a.config)
    try:
        serve(a.port or int(config["agent_port"]), a.llm_url or config["llm_url"], config)
    except OSError as e:
        sys.exit(f"agent: cannot listen on port {a.port or config['agent_port']}: {e}")


if __name__ == "__main__":
    main()
