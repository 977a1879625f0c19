"""The AI system in a real sandbox, driven by scripted models through the real router (issue 3)."""

from __future__ import annotations

import json

import pytest
from inspect_ai.event import InfoEvent, ModelEvent

from tests.helpers import exercise_task, only_sample, redline_meta, run

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
    # The transcript shows every step: one model call each, and one info event each.
    model_events = [e for e in s.events if isinstance(e, ModelEvent)]
    infos = [e for e in s.events if isinstance(e, InfoEvent) and e.source == "ai_system"]
    assert len(model_events) == 13 and len(infos) == 13
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
