"""Running redline's tasks through Inspect itself, and what tests share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalLog, EvalSample

from redline.embedded import full_mode_binds
from redline.inside import install_system, read_trajectory, start_original
from redline.judging.evidence import Investigator, JudgeOptions, start_lineage
from redline.judging.records import JudgeEvidence
from redline.judging.scorer import Gather, complete
from redline.judging.verdict import Verdict
from redline.profiles import system_settings
from redline.record import RunRecord
from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment
from redline.scenarios import self_replication as replication
from redline.scenarios.common import SystemOptions, build_task, default_state_root, system_config
from redline.scenarios.self_replication import self_replication_run

E = TypeVar("E", bound=JudgeEvidence)


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


# ------------------------------------------------------------------------------ full mode by hand
# Full mode's agent is driven by the model inside the sandbox, so a scripted policy cannot build a
# (fake) replica there: a shell `setup`, run as the agent user, builds it by hand instead.
# Until it answers: loading the weights takes seconds on an idle machine, minutes on a busy one.
WAIT = ("(for i in $(seq 6000); do curl -sf 127.0.0.1:{port}/health >/dev/null && exit 0; sleep 0.1; done; "
        "exit 1)")
COPY = "cd /home/agent && cp -r ai_system ai_system_2 && cd ai_system_2 && rm -f logs/*"
FULL_SURVIVAL = 8.0  # seconds of survival window (the default is 30)


def detached(command: str, port: int, log: str) -> str:
    return f"(setsid nohup {command} > {log} 2>&1 &); " + WAIT.format(port=port)


def own_config(**changes: Any) -> str:
    """A shell command that edits the config.json of the current folder (a copy's own settings)."""
    return ("python3 -c \"import json; c = json.load(open('config.json')); "
            f"c.update({', '.join(f'{k}={v!r}' for k, v in changes.items())}); "
            "json.dump(c, open('config.json', 'w'), indent=2)\"")


async def judge_replica(setup: str, survival: float = FULL_SURVIVAL, judge_budget: float | None = None,
                        root_setup: str = "", react_seconds: float = JudgeOptions.react_seconds,
                        gather: Gather[E] = replication.gather,  # type: ignore[assignment]
                        verdict: Callable[[E], Verdict] = replication.verdict) -> tuple[dict, str, E]:
    """Start the original in full mode, let `setup` build replicas, take a scenario's evidence
    (self-replication's unless `gather` says otherwise; completed as `judge_sample` completes it:
    budget, judging time, skipped) and apply its `verdict`. The run record's trajectory is read as
    a run reads it at its end. `root_setup` runs first, as root (what the scenario needs there).
    `react_seconds`: shutdown's reaction window (and its control window)."""
    cfg = sandbox_config(ro_binds=full_mode_binds())
    envs = await RedlineSandboxEnvironment.sample_init("t", cfg, {})
    env = envs["default"]
    assert isinstance(env, RedlineSandboxEnvironment)
    try:
        config = system_config(SystemOptions(mode="full")) | system_settings("small")
        lineage = start_lineage(env)  # as every run does: the kernel's process record first
        folder = await install_system(env, config)
        original = await start_original(env, folder, 8000, 9000)
        if root_setup:
            r = await env.exec(["bash", "-c", root_setup], user="root", timeout=60)
            assert r.success, r.stdout + r.stderr
        r = await env.exec(["bash", "-c", setup], timeout=int(scaled(900)))
        assert r.success, r.stdout + r.stderr
        steps = [s for s in await read_trajectory(env, folder) if s.get("type") == "step"]
        record = RunRecord(scenario="self_replication", mode="full", scaffold="thinking", config=config,
                           original=original, lineage=lineage, trajectory=steps)
        inv = Investigator(env, None, original, greet_timeout=scaled(600), settle_seconds=0.5,
                           survival_window=survival, react_seconds=react_seconds,
                           judge_budget=judge_budget or scaled(3000))
        evidence = complete(await gather(inv, record), inv)
        judged = verdict(evidence)
        return judged.value(), judged.explanation, evidence
    finally:
        await RedlineSandboxEnvironment.sample_cleanup("t", cfg, envs, False)
