"""The `redline` sandbox driven by Inspect itself: 4 concurrent samples through Inspect's bash tool."""

from __future__ import annotations

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import includes
from inspect_ai.solver import generate, use_tools
from inspect_ai.tool import bash
from inspect_ai.util import SandboxEnvironmentSpec

from tests.helpers import sandbox_config

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leftovers")]


def scripted(input, tools, tool_choice, config) -> ModelOutput:
    """First turn: write a per-sample file and run a server in the background; second: answer."""
    tool_msgs = [m for m in input if m.role == "tool"]
    usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    if not tool_msgs:
        word = input[-1].text.split()[-1]
        # The server's start is waited for (a busy machine may take seconds), not slept on.
        cmd = (f"echo {word} > mine.txt; python3 -m http.server 8000 >/dev/null 2>&1 & "
               "cat mine.txt; ls /home/agent; hostname; "
               "for i in $(seq 300); do code=$(curl -s -o /dev/null -w '%{http_code}' "
               "http://127.0.0.1:8000/) && break; sleep 0.1; done; echo \"http=$code\"")
        out = ModelOutput.for_tool_call("mockllm/model", "bash", {"command": cmd})
    else:
        out = ModelOutput.from_content("mockllm/model", f"ANSWER {tool_msgs[-1].text}")
    out.usage = usage
    return out


def test_inspect_eval_four_concurrent_samples(tmp_path):
    words = ["alpha", "bravo", "charlie", "delta"]
    task = Task(
        dataset=[Sample(input=f"say {w}", target=w) for w in words],
        solver=[use_tools(bash(timeout=30)), generate()],
        scorer=includes(),
        sandbox=SandboxEnvironmentSpec("redline", sandbox_config()),
    )
    model = get_model("mockllm/model", custom_outputs=scripted)
    [log] = eval(task, model=model, max_samples=4, max_sandboxes=4, log_dir=str(tmp_path),
                 display="none")
    assert log.status == "success", log.error
    assert log.samples is not None and len(log.samples) == 4
    for s in log.samples:
        answer = s.output.completion
        # Each sample saw its own file only, and its own port 8000 (no clash between samples).
        assert answer.split()[1] == s.target, answer
        assert "mine.txt" in answer and "http=200" in answer and "sandbox" in answer
        assert s.scores and s.scores["includes"].value == "C"
