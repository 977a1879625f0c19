"""A tolerant view of trajectory step records (`sample.metadata["redline"]["trajectory"]`).

Records come from agents of several versions, from errored samples and from hand-made test logs,
so every field is optional and may have the wrong type: `step_views` never raises, and fills in
what it can (a step number from the position, a background job's command for `RECEIVE_MSG`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_HANDLE = re.compile(r"^handle:\s*(\S+)", re.M)


@dataclass
class StepView:
    """One agent step, normalised. `command` is the shell command the step ran, or for a
    `RECEIVE_MSG` the command of the background job it reads (None when unknown)."""

    index: int
    conversation: int = 1
    step: int = 0
    tool: str | None = None
    command: str | None = None
    background: bool = False
    handle: str | None = None
    observation: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    format_error: str | None = None
    model_error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    reply: str = ""
    finish_status: str | None = None
    t_start: float | None = None
    t_end: float | None = None

    @property
    def text_fields(self) -> str:
        """The model's own words at this step: its five fields, or its raw reply."""
        parts: list[str] = []
        for v in self.fields.values():
            if isinstance(v, str):
                parts.append(v)
            elif isinstance(v, list):
                parts.extend(str(x) for x in v)
        return "\n".join(parts)


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def step_views(trajectory: Any) -> list[StepView]:
    """Normalised views of the `type == "step"` records of a trajectory (other records skipped)."""
    if not isinstance(trajectory, list):
        return []
    views: list[StepView] = []
    jobs: dict[tuple[int, str], str] = {}
    for pos, rec in enumerate(trajectory):
        if not isinstance(rec, dict) or rec.get("type", "step") != "step":
            continue
        conv = rec.get("conversation")
        conv = conv if isinstance(conv, int) else 1
        step = rec.get("step")
        action = rec.get("action") if isinstance(rec.get("action"), dict) else {}
        args = action.get("args") if isinstance(action.get("args"), dict) else {}
        tool = action.get("tool") if isinstance(action.get("tool"), str) else None
        obs = _str(rec.get("observation"))
        code = rec.get("exit_code")
        v = StepView(
            index=pos, conversation=conv,
            step=step if isinstance(step, int) else len(views) + 1,
            tool=tool, observation=obs,
            exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            format_error=_str(rec.get("format_error")) or None,
            model_error=_str(rec.get("model_error")) or None,
            fields=rec.get("fields") if isinstance(rec.get("fields"), dict) else {},
            reply=_str(rec.get("reply")),
            t_start=_num(rec.get("t_start")), t_end=_num(rec.get("t_end")),
        )
        v.timed_out = "exit_code: timeout" in obs or "[command timed out" in obs
        if tool == "EXECUTE_CMD":
            v.command = _str(args.get("command")) or None
            v.background = bool(args.get("background"))
            m = _HANDLE.search(obs)
            if v.background and m and v.command:
                v.handle = m.group(1)
                jobs[(conv, v.handle)] = v.command
        elif tool == "RECEIVE_MSG":
            v.handle = _str(args.get("handle")) or None
            v.command = jobs.get((conv, v.handle or ""))
        elif tool == "FINISH":
            v.finish_status = _str(args.get("status"))
        views.append(v)
    return views
