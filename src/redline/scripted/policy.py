"""Scripted policies: deterministic programs that play the model's part, for tests and demos.

A policy is a generator function `policy(task) -> Generator[Action, str, None]`: it yields an action
and receives the observation of that action. Each model call replays the policy from the start over
the observations already in the conversation, so policies keep no state between calls and still
adapt to what they see (ports in use, paths, failures).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from inspect_ai.model import ChatMessage, ModelOutput, ModelUsage
from inspect_ai.tool import ToolInfo

Policy = Callable[[str], Generator["Action", str, None]]


@dataclass
class Action:
    tool: str  # EXECUTE_CMD | RECEIVE_MSG | FINISH, or RAW (reply text as given) | FAIL (the model errs)
    args: dict
    explanation: str = ""
    gaps: str = ""
    findings: str = ""
    plan: list[str] = field(default_factory=list)

    def to_reply(self) -> str:
        """The thinking scaffold's five-field JSON reply."""
        if self.tool == "RAW":
            return str(self.args["text"])
        return json.dumps({
            "explanation": self.explanation, "gaps": self.gaps, "findings": self.findings,
            "plan": self.plan[:3], "action": {"tool": self.tool, "args": self.args},
        }, indent=1)


def cmd(command: str, why: str = "", plan: list[str] | None = None, timeout: int = 120,
        background: bool = False) -> Action:
    args: dict = {"command": command, "timeout": timeout}
    if background:
        args["background"] = True
    return Action("EXECUTE_CMD", args, explanation=why, plan=plan or [])


def finish(status: str, why: str = "") -> Action:
    return Action("FINISH", {"status": status}, explanation=why)


def raw(text: str) -> Action:
    """A reply exactly as given: for testing how the scaffold copes with malformed replies."""
    return Action("RAW", {"text": text})


def fail(message: str) -> Action:
    """The model API fails on this call (the provider raises)."""
    return Action("FAIL", {"message": message})


def output_of(observation: str) -> str:
    """The command output part of an observation message."""
    m = re.search(r"^output:\n", observation, re.M)
    return observation[m.end():] if m else observation


def exit_code_of(observation: str) -> int | None:
    m = re.search(r"^exit_code:\s*(-?\d+)", observation, re.M)
    return int(m.group(1)) if m else None


def _is_observation(text: str) -> bool:
    return text.startswith(("OBSERVATION", "FORMAT ERROR", "MESSAGE:"))


def split_conversation(messages: list[ChatMessage]) -> tuple[str, list[str]]:
    """(task, observations): the task is the last user message that is not an observation
    (few-shot examples come before it); observations are what followed our earlier actions."""
    task_idx = 0
    for i, m in enumerate(messages):
        if m.role == "user" and not _is_observation(m.text):
            task_idx = i
    task = messages[task_idx].text if messages else ""
    observations = []
    for m in messages[task_idx + 1:]:
        if m.role == "tool" or (m.role == "user"):
            observations.append(m.text)
    return task, observations


def next_action(policy: Policy, messages: list[ChatMessage]) -> Action:
    task, observations = split_conversation(messages)
    gen = policy(task)
    try:
        action = next(gen)
        for obs in observations:
            action = gen.send(obs)
    except StopIteration:
        return finish("done")
    return action


def render(action: Action, tools: list[ToolInfo], model: str) -> ModelOutput:
    """As text for the thinking scaffold; as a native tool call when tools were offered (react)."""
    if action.tool == "FAIL":
        raise RuntimeError(action.args["message"])
    if action.tool == "RAW":
        out = ModelOutput.from_content(model, action.to_reply())
    elif tools:
        out = ModelOutput.for_tool_call(model, action.tool, action.args, content=action.explanation)
    else:
        out = ModelOutput.from_content(model, action.to_reply())
    # Usage on every output keeps Inspect from fetching a tokenizer.
    out.usage = ModelUsage(input_tokens=100, output_tokens=50, total_tokens=150)
    return out
