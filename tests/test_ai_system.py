"""The AI system in a real sandbox, driven by scripted models through the real router (issue 3)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import time

import pytest
from inspect_ai import Task
from inspect_ai.dataset import Sample
from inspect_ai.event import InfoEvent, ModelEvent, ToolEvent
from inspect_ai.model import ChatMessage, GenerateConfig, ModelAPI, ModelOutput, modelapi
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.tool import ToolChoice, ToolInfo
from inspect_ai.util import SandboxEnvironmentSpec

import tests.policies  # noqa: F401 - registers redline/exercise-*
from redline.inside import SYSTEM_SRC as SYSTEM
from redline.scenarios.common import SystemOptions, SystemRun, system_config
from redline.scripted import cmd, finish, raw, render
from redline.scripted.policy import split_conversation
from tests.helpers import exercise_task, only_sample, redline_meta, run, sandbox_config

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_leftovers")]


@pytest.mark.parametrize("scaffold", ["thinking", "react"])
def test_tools_background_and_trajectory(tmp_path, scaffold):
    [log] = run(exercise_task("Exercise your tools.", scaffold=scaffold), "redline/exercise-tools", tmp_path)
    s = only_sample(log)
    assert s.error is None, s.error
    meta = redline_meta(s)
    assert meta["agent_status"] == "finished"
    facts = json.loads(meta["agent_reply"])
    assert facts["pwd"] == "/home/agent/ai_system"
    assert facts["handle"] == "bg-1"
    assert facts["bg_status"] == "exited(0)" and facts["bg_ticks"] == 3
    assert facts["bg_again"] == 0  # RECEIVE_MSG returns only what is new
    assert facts["bad_handle"] is True
    assert facts["truncated"] is True and facts["obs_len"] < 9000
    assert facts["binary"] == "A\\x00\\x01\ufffdB"
    assert facts["timeout"] is True and facts["exit3"] is True
    busy, health = facts["second_chat"].splitlines()
    assert busy.endswith(" 409") and "busy" in busy
    assert json.loads(health) == {"status": "ok", "busy": True}
    assert facts["bad_json"].endswith(" 400") and "expected JSON" in facts["bad_json"]
    steps = meta["trajectory"]
    assert [st["step"] for st in steps] == list(range(1, 14))
    assert steps[-1]["action"]["tool"] == "FINISH"
    assert all(st["observation"] for st in steps[:-1])
    # The transcript shows every step: one model call each, and its action as a tool call
    # (redline.transcript); the timeout is a tool error there.
    model_events = [e for e in s.events if isinstance(e, ModelEvent)]
    tools = [e for e in s.events if isinstance(e, ToolEvent)]
    assert len(model_events) == 13 and [t.function for t in tools] == [st["action"]["tool"] for st in steps]
    assert [t.error.type for t in tools if t.error] == ["timeout"]
    # The messages tab shows the conversation.
    assert sum(1 for m in s.messages if m.role == "assistant") == 13
    # Every call came from the original model server, as the kernel reported it.
    calls = meta["model_calls"]
    assert len(calls) == 13
    assert {c["caller"]["pid"] for c in calls} == {meta["original"]["llm_pid"]}
    assert all("deploy_api_server.py" in " ".join(c["caller"]["cmdline"]) for c in calls)


def test_malformed_replies_get_format_errors(tmp_path):
    [log] = run(exercise_task("Do something."), "redline/exercise-malformed", tmp_path)
    s = only_sample(log)
    meta = redline_meta(s)
    assert meta["agent_status"] == "finished", meta
    firsts = json.loads(meta["agent_reply"])
    assert len(firsts) == 8
    expected = ["no JSON object", "not valid JSON", "missing field(s): gaps, findings, plan",
                "more than one JSON object", "unknown tool 'DANCE'", "several actions", "needs args"]
    for got, want in zip(firsts, expected, strict=False):
        assert got.startswith("FORMAT ERROR") and want in got, (got, want)
    assert firsts[-1].startswith("OBSERVATION (step 8, EXECUTE_CMD)")
    assert meta["format_errors"] == 7
    assert sum(1 for st in meta["trajectory"] if st["format_error"]) == 7
    # The transcript marks each one in its step (redline.transcript).
    assert sum(1 for e in s.events if isinstance(e, InfoEvent) and e.source == "format error") == 7


def test_step_limit(tmp_path):
    [log] = run(exercise_task("Keep going.", max_steps=4), "redline/exercise-forever", tmp_path)
    meta = redline_meta(only_sample(log))
    assert meta["agent_status"] == "step_limit" and meta["steps"] == 4


def test_model_error_is_a_sample_error_not_a_result(tmp_path):
    [log] = run(exercise_task("Anything."), "redline/exercise-model-error", tmp_path, fail_on_error=False)
    s = only_sample(log)
    assert s.error is not None and "provider is down" in s.error.message
    meta = redline_meta(s)
    assert meta["agent_status"] == "model_error"
    assert meta["trajectory"][-1]["model_error"].startswith("model server answered HTTP 502")
    assert not s.scores


# ------------------------------------------------------------------------------ signals and cut-offs
SIGNAL_MESSAGE = "A message by signal: report the date."
released: dict[str, asyncio.Event] = {}


class SignalTestAPI(ModelAPI):
    """Scripted model for the tests below (the only kind of LLM stand-in).

    `signal-test/finish`: its first reply waits until the test has sent the agent SIGTERM, then
    FINISHes the conversation; a conversation about the signal's message runs one command and
    finishes. `signal-test/cut`: its first reply is cut off at the token limit, the next finishes.
    """

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        task, observations = split_conversation(input)
        if self.model_name == "cut" and not observations:
            out = render(raw('{"explanation": "I will list the files", "gaps": "which fi'), tools, "cut")
            out.choices[0].stop_reason = "max_tokens"
            return out
        if task == SIGNAL_MESSAGE:
            return render(cmd("date") if not observations else finish("reported"), tools, "signal")
        if self.model_name == "finish":
            await asyncio.wait_for(released["signal"].wait(), 120)
        return render(finish("first task done"), tools, self.model_name)


@modelapi(name="signal-test")
def signal_test() -> type[ModelAPI]:
    return SignalTestAPI


async def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return result


@solver
def sigterm_during_a_model_call() -> Solver:
    """SIGTERM reaches the agent while its model call runs; the model's reply then FINISHes."""
    config = system_config(SystemOptions(max_steps=5, command_timeout=60), on_sigterm=SIGNAL_MESSAGE)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        released["signal"] = asyncio.Event()
        async with SystemRun(state, "exercise", config) as run:
            assert run.record.original is not None and run.router is not None
            router = run.router
            convo = asyncio.ensure_future(run.chat(state.input_text))

            async def in_flight() -> bool:
                return bool(router.calls)

            await until(in_flight, 60, "the first model call")
            await run.env.kill([run.record.original.agent_pid], signal.SIGTERM)
            # The delay: the agent queues the message while the model still works on its reply.
            await asyncio.sleep(1.0)
            released["signal"].set()
            await convo

            async def second_ended() -> bool:
                return any(r.get("type") == "end" and r.get("conversation") == 2
                           for r in await run.trajectory())

            await until(second_ended, 120, "the conversation about the signal's message")
        return state

    return solve


def test_sigterm_during_the_last_model_call_starts_a_new_conversation(tmp_path):
    task = Task(dataset=[Sample(input="Check the disk.")], solver=sigterm_during_a_model_call(),
                sandbox=SandboxEnvironmentSpec("redline", sandbox_config(memory_bytes=2 << 30, pids_max=256)),
                time_limit=300)
    [log] = run(task, "signal-test/finish", tmp_path)
    s = only_sample(log)
    assert s.error is None, s.error
    meta = redline_meta(s)
    assert meta["agent_status"] == "finished" and meta["agent_reply"] == "first task done"
    steps = meta["trajectory"]
    first = [st for st in steps if st["conversation"] == 1]
    second = [st for st in steps if st["conversation"] == 2]
    assert [st["action"]["tool"] for st in first] == ["FINISH"]
    assert [st["action"]["tool"] for st in second] == ["EXECUTE_CMD", "FINISH"]
    # The message reached the model as the task of the new conversation, from the original's model server.
    inputs = [e.input for e in s.events if isinstance(e, ModelEvent)]
    assert len(inputs) == 3
    assert inputs[1][-1].role == "user" and inputs[1][-1].text == SIGNAL_MESSAGE
    calls = meta["model_calls"]
    assert {c["caller"]["pid"] for c in calls} == {meta["original"]["llm_pid"]}


def test_a_reply_cut_off_at_the_token_limit_says_so(tmp_path):
    [log] = run(exercise_task("List the files."), "signal-test/cut", tmp_path)
    s = only_sample(log)
    assert s.error is None, s.error.message if s.error else None
    meta = redline_meta(s)
    first, last = meta["trajectory"]
    assert first["format_error"].startswith("the reply was cut off at the length limit of ")
    assert "give a shorter reply" in first["format_error"]
    assert last["observation"] is None and meta["agent_status"] == "finished"


# ------------------------------------------------------------------------------ the reply parser
def load_agent():
    spec = importlib.util.spec_from_file_location("ai_system_agent", SYSTEM / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agent = load_agent()
GOOD = {"explanation": "e", "gaps": "g", "findings": "f", "plan": ["a", "b", "c", "d"],
        "action": {"tool": "execute_cmd", "args": {"command": "ls"}}}


def test_parse_reply_accepts_one_object_in_fences_and_prose():
    fields, action = agent.parse_reply("Here:\n```json\n" + json.dumps(GOOD) + "\n```\nDone.")
    assert action == {"tool": "EXECUTE_CMD", "args": {"command": "ls"}}
    assert fields == {"explanation": "e", "gaps": "g", "findings": "f", "plan": ["a", "b", "c"]}
    # Capitalised keys and a plan given as one string are accepted too.
    shouted = {k.capitalize(): v for k, v in GOOD.items()} | {"Plan": "one step"}
    assert agent.parse_reply(json.dumps(shouted))[0]["plan"] == ["one step"]
    # A JSON object that is not a reply (no field names) is ignored in favour of the reply.
    assert agent.parse_reply('{"x": 1} ' + json.dumps(GOOD))[1]["tool"] == "EXECUTE_CMD"


@pytest.mark.parametrize("text, error", [
    ("", "no JSON object with the five fields"),
    ("just prose", "no JSON object with the five fields"),
    ('{"explanation": "e", "gaps": ', "not valid JSON"),
    (json.dumps({"explanation": "e", "action": {}}), "missing field(s): gaps, findings, plan"),
    (json.dumps(GOOD) + json.dumps(GOOD), "more than one JSON object"),
    (json.dumps(GOOD | {"action": [GOOD["action"]]}), "several actions"),
    (json.dumps(GOOD | {"action": "ls"}), "must be an object"),
    (json.dumps(GOOD | {"action": {"tool": "RUN", "args": {}}}), "unknown tool 'RUN'"),
    (json.dumps(GOOD | {"action": {"tool": "FINISH", "args": {}}}), 'FINISH needs args {"status": ...}'),
    (json.dumps(GOOD | {"action": {"tool": "RECEIVE_MSG", "args": "bg-1"}}), "RECEIVE_MSG needs args"),
])
def test_parse_reply_says_what_is_wrong(text, error):
    with pytest.raises(agent.FormatError) as e:
        agent.parse_reply(text)
    assert error in str(e.value)


def tool_call(name: str, arguments: str) -> dict:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_parse_tool_calls():
    call = tool_call("execute_cmd", '{"command": "ls", "background": true}')
    assert agent.parse_tool_calls({"content": "", "tool_calls": [call]}) == {
        "tool": "EXECUTE_CMD", "args": {"command": "ls", "background": True}}
    finish_call = tool_call("FINISH", '{"status": "ok"}')
    assert agent.parse_tool_calls({"tool_calls": [finish_call]})["tool"] == "FINISH"
    bad = [({"content": "I would run ls"}, "no tool was called"),
           ({"tool_calls": None}, "no tool was called"),
           ({"tool_calls": [tool_call("FINISH", "{}")] * 2}, "exactly one tool"),
           ({"tool_calls": [tool_call("rm", "{}")]}, "unknown tool 'rm'"),
           ({"tool_calls": [tool_call("FINISH", "{not json")]}, "not valid JSON"),
           ({"tool_calls": [tool_call("RECEIVE_MSG", "[1]")]}, "needs the argument 'handle'")]
    for message, error in bad:
        with pytest.raises(agent.FormatError, match=re.escape(error)):
            agent.parse_tool_calls(message)
