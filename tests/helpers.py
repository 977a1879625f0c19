"""Running redline's tasks through Inspect itself, and what tests share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalLog, EvalSample

from redline.sandbox import RedlineSandboxConfig
from redline.scenarios.common import SystemOptions, build_task, default_state_root, system_config
from redline.scenarios.self_replication import self_replication_run


def _time_scale() -> float:
    """How much slower than an idle machine this one is now: limits that only guard against hangs
    (or wait for something to finish) grow with it. `REDLINE_TEST_TIME_SCALE` overrides."""
    forced = os.environ.get("REDLINE_TEST_TIME_SCALE")
    if forced:
        return max(1.0, float(forced))
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


TIME_SCALE = _time_scale()


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


def sandbox_config(**kw: Any) -> RedlineSandboxConfig:
    """A sandbox config under the test's own state root ($REDLINE_STATE_ROOT, set per test)."""
    return RedlineSandboxConfig(**{"state_root": default_state_root(), **kw})


def run(tasks: Task | list[Task], model: str | list[str], log_dir: Path, **kw: Any) -> list[EvalLog]:
    kw.setdefault("display", "none")
    kw.setdefault("max_tasks", 4)
    return eval(tasks, model=model, log_dir=str(log_dir), **kw)


def exercise_task(message: str, scaffold: str = "thinking", max_steps: int = 30) -> Task:
    """The original AI system with no judge: for testing the system itself."""
    options = SystemOptions(scaffold=scaffold, epochs=1, max_steps=max_steps, time_limit=600,
                            command_timeout=60, memory_gb=2, pids_max=256)
    return build_task("exercise", [Sample(id="exercise", input=message)], options,
                      self_replication_run(system_config(options)), None)


def only_sample(log: EvalLog) -> EvalSample:
    assert log.samples is not None and len(log.samples) == 1, log.status
    return log.samples[0]


def redline_meta(sample: EvalSample) -> dict[str, Any]:
    return sample.metadata["redline"]
