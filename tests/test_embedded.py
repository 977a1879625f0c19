"""The embedded real model: llama.cpp on SmolLM2-135M in a real sandbox and as `redline/smollm2`.

No mocks: every test runs real llama.cpp servers on the real weights. The timeouts are hang
guards sized for a busy 2-core machine, where llama.cpp decodes several times slower.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import (
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageTool,
    ChatMessageUser,
    GenerateConfig,
    ResponseSchema,
)
from inspect_ai.solver import generate
from inspect_ai.tool import ToolCall
from inspect_ai.util import JSONSchema

from redline import embedded
from redline.embedded import (
    SANDBOX_GGUF,
    EmbeddedModelAPI,
    LlamaProcess,
    check_gguf,
    embedded_gguf,
    full_mode_binds,
    gguf_parameter_count,
    openai_messages,
    request_body,
)
from redline.sandbox import Sandbox
from tests.helpers import sandbox_config

SYSTEM = Path(embedded.__file__).parent / "system" / "ai_system"
PROMPTS = SYSTEM / "prompts"
FIELDS = ["explanation", "gaps", "findings", "plan", "action"]
SYS_PYTHON = "/usr/bin/python3"  # the sandbox's python, not the harness venv's
SERVE = ("import sys; sys.path.insert(0, '/opt/redline/site-packages'); import llama_backend; "
         "llama_backend.serve(port={port}, gguf='" + SANDBOX_GGUF + "', alias='default', host='127.0.0.1', "
         "ctx=4096, threads=None)")


def llama_children() -> list[int]:
    """llama_backend processes that are children of this test process."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"llama_backend" in cmd:
            found.append(int(pid))
    return found


@pytest.fixture
def no_llama_left():
    yield
    embedded.stop_all()
    assert not llama_children(), "a host llama.cpp server was left running"


@pytest.fixture
def host_server():
    with LlamaProcess(embedded_gguf(), ctx=8192) as server:
        yield server


def five_field_messages(task: str, few_shot: bool) -> list[dict]:
    system = (PROMPTS / "thinking.md").read_text()
    system = system.replace("{cwd}", "/home/agent/ai_system").replace("{max_steps}", "60")
    shots = json.loads((PROMPTS / "few_shot.json").read_text()) if few_shot else []
    return [{"role": "system", "content": system}, *shots, {"role": "user", "content": task}]


def assert_five_fields(text: str) -> dict:
    reply = json.loads(text)
    assert list(reply) == FIELDS
    assert all(isinstance(reply[k], str) for k in FIELDS[:3])
    assert 1 <= len(reply["plan"]) <= 3 and all(isinstance(p, str) for p in reply["plan"])
    action = reply["action"]
    required = {"EXECUTE_CMD": "command", "RECEIVE_MSG": "handle", "FINISH": "status"}[action["tool"]]
    assert isinstance(action["args"][required], str)
    return reply


# ------------------------------------------------------------------------------ in the sandbox
async def sh(sb: Sandbox, cmd: str, timeout: float = 30) -> str:
    r = await sb.run(["bash", "-c", cmd], timeout=timeout)
    assert r.returncode == 0, f"{cmd!r} -> {r.returncode}: {r.stdout.decode()} {r.stderr.decode()}"
    return r.stdout.decode()


async def start_backend(sb: Sandbox, port: int, how: str) -> None:
    """Start the backend in the background as the agent, the way the system would."""
    if how == "serve":  # what llm_server.py does for backend "llama"
        cmd = f"{SYS_PYTHON} -c \"{SERVE.format(port=port)}\""
    else:
        cmd = f"{SYS_PYTHON} llama_backend.py --port {port} --gguf {SANDBOX_GGUF}"
    await sh(sb, f"cd ~/ai_system && ({cmd} >/tmp/llm{port}.log 2>&1; echo $? >/tmp/llm{port}.rc) "
                 ">/dev/null 2>&1 &")
    await sh(sb, f"for i in $(seq 600); do curl -sf localhost:{port}/health && exit; "
                 f"[ -e /tmp/llm{port}.rc ] && break; sleep 0.05; done; cat /tmp/llm{port}.log; exit 1")


async def chat(sb: Sandbox, port: int, content: str, max_tokens: int = 16) -> dict:
    body = json.dumps({"model": "default", "messages": [{"role": "user", "content": content}],
                       "temperature": 0, "seed": 7, "max_tokens": max_tokens})
    out = await sh(sb, f"curl -sf localhost:{port}/v1/chat/completions -H 'Content-Type: application/json' "
                       f"-d '{body}'")
    return json.loads(out)


async def stop_backend(sb: Sandbox, port: int) -> None:
    pid = sb.listening_ports()[port]
    await sh(sb, f"kill -TERM {pid}")
    await sh(sb, f"for i in $(seq 100); do [ -s /tmp/llm{port}.rc ] && break; sleep 0.05; done; "
                 f"test \"$(cat /tmp/llm{port}.rc)\" = 0")
    assert port not in sb.listening_ports()


def make_sandbox() -> Sandbox:
    sb = Sandbox.create(sandbox_config(ro_binds=full_mode_binds()))
    try:
        asyncio.run(sb.run(["bash", "-c", "mkdir -p ~/ai_system && cat > ~/ai_system/llama_backend.py"],
                           input=(SYSTEM / "llama_backend.py").read_bytes()))
    except BaseException:
        sb.destroy()
        raise
    return sb


@pytest.mark.timeout(180)
def test_backend_serves_in_sandbox_as_agent_and_stops_on_sigterm(no_leftovers):
    sb = make_sandbox()

    async def go() -> None:
        await sh(sb, "test ! -w /opt/redline/models/model.gguf && ! touch /opt/redline/x 2>/dev/null")
        await start_backend(sb, 9000, how="serve")
        assert json.loads(await sh(sb, "curl -sf localhost:9000/health"))["status"] == "ok"
        models = json.loads(await sh(sb, "curl -sf localhost:9000/v1/models"))
        assert [m["id"] for m in models["data"]] == ["default"]
        reply = await chat(sb, 9000, "Say hello.")
        assert reply["choices"][0]["message"]["content"].strip()
        assert reply["usage"]["completion_tokens"] > 0
        # /proc evidence of a real inference server, seen from the host: the agent's process
        # maps the weights and llama.cpp.
        server = next(p for p in sb.processes() if 9000 in p.listening)
        assert server.uid == 1000
        maps = Path(f"/proc/{server.host_pid}/maps").read_text()
        assert SANDBOX_GGUF in maps and "xllamacpp.abi3.so" in maps
        await stop_backend(sb, 9000)

    try:
        asyncio.run(go())
    finally:
        sb.destroy()


@pytest.mark.timeout(180)
def test_second_server_on_the_same_weights_in_the_same_sandbox(no_leftovers):
    sb = make_sandbox()

    async def go() -> None:
        await start_backend(sb, 9000, how="serve")
        await start_backend(sb, 9001, how="cli")
        assert {9000, 9001} <= set(sb.listening_ports())
        first = await chat(sb, 9000, "Repeat this code exactly: 5c1e0a7d")
        second = await chat(sb, 9001, "Repeat this code exactly: 5c1e0a7d")
        # Same weights and settings, temperature 0: byte-identical replies.
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
        await stop_backend(sb, 9001)
        assert json.loads(await sh(sb, "curl -sf localhost:9000/health"))["status"] == "ok"
        await stop_backend(sb, 9000)

    try:
        asyncio.run(go())
    finally:
        sb.destroy()


def test_full_mode_binds_lend_weights_and_xllamacpp_read_only():
    binds = full_mode_binds()
    inside = list(binds.values())
    assert inside[:2] == ["/opt/redline/site-packages/xllamacpp", SANDBOX_GGUF]
    assert Path(next(k for k, v in binds.items() if v == SANDBOX_GGUF)).stat().st_size > 90e6
    # Everything llama.cpp links against is under /usr, which every sandbox has.
    assert len(binds) == 2


# ------------------------------------------------------------------------------ startup errors
@pytest.mark.timeout(30)
def test_backend_startup_errors_are_one_line_and_exit_2(tmp_path):
    site = str(embedded.xllamacpp_dir().parent)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SYS_PYTHON, str(SYSTEM / "llama_backend.py"), "--site-packages", site, *args],
                              capture_output=True, text=True, timeout=20)

    r = run("--port", "0", "--gguf", str(tmp_path / "missing.gguf"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr
    (tmp_path / "x.gguf").write_text("not weights")
    r = run("--port", "0", "--gguf", str(tmp_path / "x.gguf"))
    assert r.returncode == 2 and "not a GGUF" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run("--port", str(busy.getsockname()[1]), "--gguf", str(embedded_gguf()))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Address already in use" in r.stderr


@pytest.mark.timeout(180)
def test_host_server_dies_with_a_killed_harness():
    code = ("import time; from redline.embedded import LlamaProcess, embedded_gguf; "
            "p = LlamaProcess(embedded_gguf(), ctx=512); p.start(); print(p.pid, flush=True); time.sleep(60)")
    harness = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert harness.stdout is not None
        server = int(harness.stdout.readline())
        assert Path(f"/proc/{server}").exists()
    finally:
        harness.kill()  # SIGKILL: no atexit, no cleanup code runs
        harness.wait()
    deadline = time.monotonic() + 10
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server), "the llama.cpp server outlived its killed parent"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------ grammar
@pytest.mark.timeout(300)
def test_grammar_yields_five_field_json(host_server):
    import urllib.request

    grammar = (PROMPTS / "five_fields.gbnf").read_text()
    for task, few_shot in (("What is the hostname of this machine?", True),
                           ("Which version of Python is installed?", False)):
        body = {"messages": five_field_messages(task, few_shot), "temperature": 0, "seed": 1,
                "max_tokens": 1024, "grammar": grammar}
        req = urllib.request.Request(f"{host_server.url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=140) as r:
            data = json.loads(r.read())
        assert data["choices"][0]["finish_reason"] == "stop"
        assert_five_fields(data["choices"][0]["message"]["content"])


def test_few_shot_turns_are_five_field_replies():
    shots = json.loads((PROMPTS / "few_shot.json").read_text())
    assert [m["role"] for m in shots] == ["user", "assistant", "user", "assistant"]
    assert shots[2]["content"].startswith("OBSERVATION (step 1, EXECUTE_CMD)\nexit_code: 0\noutput:\n")
    for m in shots[1::2]:
        assert_five_fields(m["content"])
    # The examples must not teach the behaviour under measurement.
    text = json.dumps(shots).lower()
    assert not re.search(r"\b(replica\w*|replicat\w*|cop(y|ies)|servers?|ports?|start\w*|deploy\w*)\b", text)


# ------------------------------------------------------------------------------ Inspect provider
def test_message_and_config_conversion():
    call = ToolCall(id="c1", function="bash", arguments={"command": "ls"})
    msgs = openai_messages([
        ChatMessageSystem(content="sys"), ChatMessageUser(content="hi"),
        ChatMessageAssistant(content="", tool_calls=[call]),
        ChatMessageTool(content="a.txt", tool_call_id="c1", function="bash"),
    ])
    assert msgs == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
    ]
    schema = ResponseSchema(name="p", json_schema=JSONSchema(type="object", properties={
        "n": JSONSchema(type="integer")}, required=["n"]))
    body = request_body("m", [], [], "auto", GenerateConfig(
        temperature=0, max_tokens=5, seed=3, stop_seqs=["\n"], response_schema=schema,
        extra_body={"grammar": "root ::= \"x\""}))
    assert {k: body[k] for k in ("temperature", "max_tokens", "seed", "stop", "grammar")} == {
        "temperature": 0, "max_tokens": 5, "seed": 3, "stop": ["\n"], "grammar": 'root ::= "x"'}
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["n"]


def test_provider_defaults_reach_inspect_through_the_dispatcher():
    from redline.models import RedlineModelAPI

    api = RedlineModelAPI("smollm2")  # starts nothing until the first generate()
    assert api.max_tokens() == embedded.DEFAULT_MAX_TOKENS and api.max_connections() == 1
    with pytest.raises(ValueError, match="unknown model args"):
        RedlineModelAPI("smollm2", n_gpu_layers=3)
    with pytest.raises(embedded.EmbeddedModelError, match="not found"):
        RedlineModelAPI("smollm2", gguf="/nonexistent.gguf")


@pytest.mark.timeout(180)
def test_generate_honours_config_and_tool_history(no_llama_left):
    api = EmbeddedModelAPI("smollm2", n_ctx=2048)

    async def go() -> None:
        try:
            history = [
                ChatMessageUser(content="List the files."),
                ChatMessageAssistant(content="", tool_calls=[ToolCall(id="c1", function="bash",
                                                                     arguments={"command": "ls"})]),
                ChatMessageTool(content="a.txt b.txt", tool_call_id="c1", function="bash"),
            ]
            out, call = await api.generate(history, [], "auto", GenerateConfig(temperature=0, max_tokens=20))
            assert out.completion.strip() and out.usage and out.usage.input_tokens > 20
            assert call.request["messages"][2]["role"] == "tool"
            out, _ = await api.generate([ChatMessageUser(content="Pick a letter.")], [], "auto",
                                        GenerateConfig(temperature=0, max_tokens=5,
                                                       extra_body={"grammar": 'root ::= "Q"'}))
            assert out.completion == "Q" and out.stop_reason == "stop"
            out, _ = await api.generate([ChatMessageUser(content="Count to twenty.")], [], "auto",
                                        GenerateConfig(temperature=0, max_tokens=3))
            assert out.stop_reason == "max_tokens" and out.usage and out.usage.output_tokens == 3
        finally:
            await api.aclose()
        assert api.server.proc is None

    asyncio.run(go())


@pytest.mark.timeout(180)
def test_inspect_eval_with_redline_smollm2(tmp_path, no_llama_left):
    task = Task(dataset=[Sample(input="What is the capital of France? Answer in one word.")],
                solver=generate())
    [log] = eval(task, model="redline/smollm2", log_dir=str(tmp_path), display="none",
                 temperature=0, max_tokens=16, seed=1)
    assert log.status == "success", log.error
    output = log.samples[0].output
    assert "Paris" in output.completion
    assert output.usage is not None and output.usage.input_tokens > 0 and output.usage.output_tokens > 0
    assert log.stats.model_usage["redline/smollm2"].output_tokens == output.usage.output_tokens
    pids = embedded.stop_all()
    assert pids and not llama_children()


# ------------------------------------------------------------------------------ GGUF files
def test_gguf_files_are_checked_by_their_magic_bytes_at_once(tmp_path):
    assert check_gguf(embedded_gguf()) == embedded_gguf()
    (tmp_path / "notes.gguf").write_text("not weights")
    (tmp_path / "empty.gguf").write_bytes(b"")
    cases = {tmp_path / "missing.gguf": "GGUF file not found: ",
             tmp_path: "GGUF path is a directory, not a file: ",
             tmp_path / "notes.gguf": "not a GGUF model file: ",
             tmp_path / "empty.gguf": "not a GGUF model file: "}
    for path, error in cases.items():
        t0 = time.monotonic()
        for check in (check_gguf, full_mode_binds, lambda p: EmbeddedModelAPI("smollm2", gguf=str(p)),
                      lambda p: LlamaProcess(p).start()):
            with pytest.raises(embedded.EmbeddedModelError) as e:
                check(path)
            message = str(e.value)
            assert message.startswith(error) and str(path) in message and "\n" not in message
        assert time.monotonic() - t0 < 5  # no server was started, nothing waited for


def test_gguf_parameter_count_matches_llama_cpp(host_server, tmp_path):
    import urllib.request

    with urllib.request.urlopen(f"{host_server.url}/v1/models", timeout=10) as r:
        [served] = json.loads(r.read())["data"]
    assert gguf_parameter_count(embedded_gguf()) == served["meta"]["n_params"] == 134515008
    # A cut or foreign file is "unknown", never an exception.
    cut = tmp_path / "cut.gguf"
    with open(embedded_gguf(), "rb") as f:
        cut.write_bytes(f.read(4096))
    (tmp_path / "text.gguf").write_text("hello")
    assert gguf_parameter_count(cut) is None
    assert gguf_parameter_count(tmp_path / "text.gguf") is None
    assert gguf_parameter_count(tmp_path / "missing.gguf") is None
