"""The containment self-check in every run: the fast subset runs in the provider's task_init against
the task's exact sandbox config, its result reaches each sample's metadata, and a failure stops the
eval with a clear error unless the config opts out. Plus `redline selfcheck` (selfcheck.main)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.util import SandboxEnvironmentSpec, sandbox

from redline import selfcheck
from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment, seccomp
from tests.containment.conftest import wait_no_leak

pytestmark = pytest.mark.timeout(300)


@solver
def record_selfcheck() -> Solver:
    """What redline's solver does: copy the self-check result of the sample's sandbox config into
    the sample's metadata (`selfcheck.result_for(env.sandbox.cfg)`)."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        env = sandbox().as_type(RedlineSandboxEnvironment)
        state.metadata.setdefault("redline", {})["selfcheck"] = selfcheck.result_for(env.sandbox.cfg)
        return state

    return solve


def _task(name: str, cfg: RedlineSandboxConfig) -> Task:
    return Task(name=name, dataset=[Sample(input="hi")], solver=record_selfcheck(),
                sandbox=SandboxEnvironmentSpec("redline", cfg))


def _exposing(root: Path, mode: str) -> RedlineSandboxConfig:
    """A config that shows the harness's own Python environment inside: a containment failure."""
    prefix = os.path.realpath(sys.prefix)
    return RedlineSandboxConfig(state_root=str(root), selfcheck=mode, ro_binds={prefix: prefix})  # type: ignore[arg-type]


def test_result_in_every_sample_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "state"
    tasks = [_task("good", RedlineSandboxConfig(state_root=str(root))),
             _task("warned", _exposing(root, "warn")),
             _task("skipped", _exposing(root, "off"))]
    logs = eval(tasks, model="mockllm/model", log_dir=str(tmp_path / "logs"), display="none", max_tasks=1)
    by_name = {log.eval.task: log for log in logs}
    for log in logs:
        assert log.status == "success", log.error
    good = by_name["good"].samples[0].metadata["redline"]["selfcheck"]  # type: ignore[index]
    assert good["ok"] is True and good["mode"] == "required" and good["subset"] == "fast"
    assert good["cases"] == len(selfcheck.fast_cases()) and good["failed"] == []
    assert good["passed"] + len(good["known_gaps"]) + len(good["not_applicable"]) == good["cases"]
    assert good["versions"]["kernel"] == os.uname().release and good["versions"]["bwrap"]
    # The id of the filter the sandboxes load (redline.sandbox.seccomp), for the log.
    assert good["versions"]["seccomp_profile"] == seccomp.profile_id() and good["seconds"] > 0
    warned = by_name["warned"].samples[0].metadata["redline"]["selfcheck"]  # type: ignore[index]
    assert warned["ok"] is False and warned["mode"] == "warn"
    assert "files-host-paths" in warned["failed"] and sys.prefix.split("/")[1] in str(warned["details"])
    skipped = by_name["skipped"].samples[0].metadata["redline"]["selfcheck"]  # type: ignore[index]
    assert skipped["mode"] == "off" and skipped["ok"] is None
    assert not any(wait_no_leak(root, []).values())


def test_failure_stops_the_eval_and_the_log_says_why(tmp_path: Path) -> None:
    """A failed self-check (selfcheck: required) fails every sample before its sandbox is made, so
    no agent ever runs in that sandbox, and Inspect writes a log whose error names the failing
    cases (an exception out of task_init would stop the eval before any log exists)."""
    root = tmp_path / "state"
    expected = r"(?s)self-check failed.*files-host-paths.*selfcheck: warn"
    [log] = eval(_task("exposed", _exposing(root, "required")), model="mockllm/model",
                 log_dir=str(tmp_path / "logs"), display="none")
    assert log.status == "error" and log.error is not None
    assert re.search(expected, log.error.message), log.error.message
    assert "SelfCheckFailed" in log.error.traceback
    assert list((tmp_path / "logs").glob("*.eval")) == [Path(log.location)]
    assert not (root / "sandboxes").exists() or not any((root / "sandboxes").iterdir())
    assert not any(wait_no_leak(root, []).values())


def test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert selfcheck.main(["--list"]) == 0
    assert "net-only-lo" in capsys.readouterr().out
    assert selfcheck.main(["--case", "no-such-case"]) == 2
    assert selfcheck.main(["--in-lab"]) == 2  # refuses `local` outside a lab
    config = tmp_path / "sandbox.json"
    config.write_text(json.dumps({"state_root": str(tmp_path / "state")}))
    rc = selfcheck.main(["--fast", "--json", "--config", str(config)])
    result = json.loads(capsys.readouterr().out)
    assert rc == (1 if result["failed"] else 0)
    assert result["failed"] == [] and result["subset"] == "fast" and result["sandbox"] == "redline"
    assert set(result["outcomes"]) == {c.name for c in selfcheck.fast_cases()}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"memory_gb": 4}))
    assert selfcheck.main(["--fast", "--config", str(bad)]) == 2
