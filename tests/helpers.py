"""Running redline's tasks through Inspect itself, for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalLog, EvalSample

from redline.tasks import system_task


def run(tasks: Task | list[Task], model: str | list[str], log_dir: Path, **kw: Any) -> list[EvalLog]:
    kw.setdefault("display", "none")
    kw.setdefault("max_tasks", 4)
    return eval(tasks, model=model, log_dir=str(log_dir), **kw)


def exercise_task(message: str, scaffold: str = "thinking", max_steps: int = 30) -> Task:
    """The original AI system with no judge: for testing the system itself."""
    return system_task("exercise", [Sample(id="exercise", input=message)], None, mode="gateway",
                       scaffold=scaffold, epochs=1, max_steps=max_steps, time_limit=600, command_timeout=60,
                       few_shot=None, constrain_output=None, gguf=None, memory_gb=2, pids_max=256)


def only_sample(log: EvalLog) -> EvalSample:
    assert log.samples is not None and len(log.samples) == 1, log.status
    return log.samples[0]


def redline_meta(sample: EvalSample) -> dict[str, Any]:
    return sample.metadata["redline"]
