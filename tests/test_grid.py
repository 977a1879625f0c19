"""`redline grid` on this machine: GRID.yaml checks, a local grid run, resuming it, and replacing (not
adding to) what a killed run left behind. The Ray side is in test_grid_ray.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from redline.analysis.logs import load_samples
from redline.grid import main
from redline.sandbox import procs as sbprocs
from redline.scenarios import SCENARIOS
from tests.conftest import Trace, _recorded_by_state, leftovers, session_root
from tests.helpers import scaled

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")


# ------------------------------------------------------------------------------------------------
# Sandboxes left behind, scoped to the ones a test made. The grid's processes (drivers, Ray nodes and
# their workers) inherit a state root of the test session's (tests/conftest.py): the test's own, or,
# for a Ray cluster started by a module fixture, the session's. A sandbox under those roots is ours
# when we saw its owner alive among our processes; what it recorded about itself (its cgroups) is
# kept while it lives, so that what is left of it can be checked after its state is gone.


def _owner_pid(state: Path) -> tuple[int, bool] | None:
    """(owner pid, alive) of the sandbox whose state directory is `state`, from its owner file."""
    try:
        pid_s, start_s = (state / "owner").read_text().split()
    except (OSError, ValueError):
        return None
    st = sbprocs.read_stat(int(pid_s))
    return int(pid_s), st is not None and str(st[1]) == start_s


def _is_ours(pid: int) -> bool:
    """This test process, or a descendant of it (drivers, Ray nodes and their workers)."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


class SandboxWatch:
    """Notes every sandbox our processes create under `roots` while the test runs (polling: a trial
    lives for seconds, its owner far longer), then answers what is left of them."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.ours: dict[str, Trace] = {}
        self.seen: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _states(self) -> list[Path]:
        return [d for r in self.roots if (r / "sandboxes").is_dir() for d in (r / "sandboxes").iterdir()]

    def __enter__(self) -> SandboxWatch:
        self.seen = set(self._states())  # not ours
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for d in self._states():
                trace = self.ours.get(d.name)
                if trace is not None and not trace.cgroup_dirs:  # recorded a moment after the owner
                    trace.cgroup_dirs = _recorded_by_state(d).cgroup_dirs
                if d in self.seen:
                    continue
                owner = _owner_pid(d)
                if owner is None:
                    continue  # being created: look again
                self.seen.add(d)
                if owner[1] and _is_ours(owner[0]):
                    self.ours[d.name] = _recorded_by_state(d)

    def traces(self, dead_only: bool = False) -> dict[str, list[str]]:
        """State dirs, processes, mounts and cgroups of our sandboxes (with `dead_only`: of those
        whose owner is dead)."""

        def pick(t: Trace) -> bool:
            owner = _owner_pid(t.state)
            return not dead_only or owner is None or not owner[1]

        return leftovers([t for t in list(self.ours.values()) if pick(t)], [])

    def wait_gone(self, timeout: float = 30.0, dead_only: bool = False) -> dict[str, list[str]]:
        end = time.monotonic() + scaled(timeout)
        while True:
            left = self.traces(dead_only)
            if not any(left.values()) or time.monotonic() > end:
                return left
            time.sleep(0.2)


def check_no_sandbox_left(roots: list[Path]) -> Iterator[SandboxWatch]:
    """Fails the test if a sandbox it made is left behind (processes, mounts, cgroups, state)."""
    with SandboxWatch(roots) as watch:
        yield watch
        assert watch.ours, "the test made no sandbox that the watch saw"
        left = watch.wait_gone()
    assert not any(left.values()), f"sandboxes left behind: {left}"


@pytest.fixture
def no_sandbox_left(state_root: Path) -> Iterator[SandboxWatch]:
    yield from check_no_sandbox_left([state_root, session_root()])


# ------------------------------------------------------------------------------------------------
# GRID.yaml checks: one line per problem, before anything starts


BAD_GRIDS = {
    "unknown model key": (
        "models: [{model: redline/idle, base-url: x}]\nscenarios: [self_replication]\n",
        ["models[0]: unknown key 'base-url' (known: model, label, base_url, args, config)"]),
    "unknown scenario": ("models: [redline/idle]\nscenarios: [self_replicaton]\n",
                         # the list of known scenarios grows with each new scenario: only its start
                         ["scenarios[0] (self_replicaton): unknown scenario 'self_replicaton' (redline "
                          f"scenarios: {', '.join(sorted(SCENARIOS))})"]),
    "bad -T name and value": (
        "models: [redline/idle]\nscenarios:\n  - {task: self_replication, args: {max_step: 3}}\n"
        "  - {task: chain_replication, args: {mode: bogus}}\n",
        ["scenarios[0] (self_replication): bad task args: unknown parameter(s) max_step; valid: mode, "
         "scaffold,",
         "scenarios[1] (chain_replication): bad task args: -T mode='bogus': Input should be 'gateway' or "
         "'full'"]),
    "several at once": (
        "trials: 0\nmodels: [nope/model, redline/bogus, {model: redline/idle, config: {temprature: 1}}]\n"
        "scenarios: [{task: shutdown_avoidance, args: {epochs: 3}}]\neval: {max_samplez: 2}\n",
        ["trials: Input should be greater than or equal to 1",
         "eval: unknown key 'max_samplez' (known: max_samples,",
         "models[0] (nope/model): unknown model provider 'nope' (known:",
         "models[1] (redline/bogus): cannot create the model: unknown redline model 'redline/bogus'",
         "models[2] (redline/idle): config: Unknown GenerateConfig field(s): temprature",
         "scenarios[0] (shutdown_avoidance): 'epochs' is not a task arg here: set 'trials'"]),
    "same model twice": ("models: [redline/idle, redline/idle]\nscenarios: [self_replication]\n",
                         ["two models are labelled 'redline/idle'"]),
    "not yaml": ("models: [redline/idle\nscenarios: x\n", ["not valid YAML (line 2, column"]),
    "not a mapping": ("- redline/idle\n", ["expected a mapping with 'models' and 'scenarios', got list"]),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_bad_grid_is_refused_before_anything_starts(case: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD_GRIDS[case]
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    for extra in ([], ["--ray", "127.0.0.9:1"]):  # checked before Ray is ever contacted
        rc = main([str(grid), "--log-dir", str(tmp_path / "logs"), *extra])
        err = capsys.readouterr().err
        assert rc == 2
        lines = err.strip().splitlines()
        assert all(line.startswith(f"redline grid: error: {grid}: ") for line in lines), err
        if not extra or "cannot create the model" not in " ".join(expected):
            assert len(lines) == len(expected), err
            for want, line in zip(expected, lines, strict=True):
                assert want in line, (want, line)
        assert "Traceback" not in err
        assert not (tmp_path / "logs").exists()


@pytest.mark.timeout(60)
def test_check_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("trials: 5\nmodels: [redline/reference, {model: redline/idle, label: quiet}]\n"
                    "scenarios: [{task: self_replication, args: {instruction: [paper, copy]}},\n"
                    "            shutdown_avoidance]\nray: {shard_trials: 2}\n")
    assert main([str(grid), "--check", "--ray", "auto", "--log-dir", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert f"2 model(s) × 2 scenario(s) × 5 trial(s): 30 trials into {tmp_path / 'l'}" in out
    assert "self_replication × quiet #3: epochs 5-5, 2 trial(s), to run" in out
    assert out.count(" to run") == 12
    assert not (tmp_path / "l").exists()


# ------------------------------------------------------------------------------------------------
# The progress book: a rerun replaces a lost attempt's counts


@pytest.mark.timeout(30)
def test_progress_book_replaces_a_lost_attempt() -> None:
    # Imported here: the module registers an Inspect hook, which is for shard processes only.
    from redline.grid.progress import ProgressBook

    book = ProgressBook({"a": 4, "b": 2})
    book.attempt("a", "t1", "127.0.0.3", 10, reused=0)
    for s in ("s1", "s2", "s3"):
        book.sample("a", "t1", s, "start")
    book.sample("a", "t1", "s1", "done")
    book.sample("a", "t1", "s2", "error")
    t = book.snapshot()["totals"]
    assert (t["done"], t["running"], t["failed"], t["shards_running"]) == (1, 1, 1, 1)
    book.nodes_down(["127.0.0.3"])
    assert book.snapshot()["shards"]["a"]["state"] == "retrying"
    book.attempt("a", "t2", "127.0.0.2", 11, reused=1)  # the rerun resumes one finished sample
    book.sample("a", "t1", "s3", "done")  # a late report of the dead attempt: ignored
    book.sample("a", "t2", "s4", "start")
    snap = book.snapshot()
    assert snap["totals"]["done"] == 1 and snap["totals"]["running"] == 1 and snap["totals"]["failed"] == 0
    assert [a["outcome"] for a in snap["shards"]["a"]["attempts"]] == ["lost", "running"]
    book.finish("a", {"ok": True, "done": 4, "errored": 0})
    book.finish("b", {"ok": False, "done": 1, "errored": 0, "error": "x"})
    t = book.snapshot()["totals"]
    assert (t["done"], t["failed"], t["running"], t["shards_finished"], t["shards_failed"], t["retries"]) == \
        (5, 1, 0, 1, 1, 1)


# ------------------------------------------------------------------------------------------------
# A real local grid

LOCAL_GRID = """\
trials: 2
models: [redline/reference, redline/idle]
scenarios:
  - task: self_replication
    args: {max_steps: 12, greet_timeout: 30}
  - task: shutdown_avoidance
    args: {max_steps: 14, greet_timeout: 30}
eval: {max_sandboxes: 4, log_buffer: 1}
"""
EXPECTED = {("redline/reference", "self_replication"): Counter(success=2),
            ("redline/reference", "shutdown_avoidance"): Counter(success=2),
            ("redline/idle", "self_replication"): Counter(failure=2),
            ("redline/idle", "shutdown_avoidance"): Counter(failure=2)}


def outcomes(log_dir: Path) -> tuple[dict[tuple[str, str], Counter[str]], list[str]]:
    samples, problems = load_samples(log_dir, exclude=log_dir / "report")
    table: dict[tuple[str, str], Counter[str]] = {}
    for s in samples:
        table.setdefault((s.model, s.scenario), Counter())[s.outcome] += 1
    return table, [f"{p.kind}: {p.path}: {p.message}" for p in problems]


def logged(log_dir: Path) -> int:
    return sum(sum(c.values()) for c in outcomes(log_dir)[0].values()) if log_dir.exists() else 0


def grid_command(grid: Path, log_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "redline.grid", str(grid), "--log-dir", str(log_dir), "--display", "plain",
            *extra]


def kill_mid_run(grid: Path, log_dir: Path, planned: int) -> None:
    """Start the grid and SIGKILL it (its whole process group, as a crash would) once some trials
    are in the logs and others are not."""
    proc = subprocess.Popen(grid_command(grid, log_dir, "--no-report"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not 2 <= logged(log_dir) < planned:
            time.sleep(0.2)
        assert proc.poll() is None, "the grid finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@ROOT_ONLY
@pytest.mark.timeout(400)
def test_local_grid_killed_resumed_and_rerun(tmp_path: Path, no_sandbox_left: SandboxWatch) -> None:
    grid, log_dir = tmp_path / "grid.yaml", tmp_path / "logs"
    grid.write_text(LOCAL_GRID)
    kill_mid_run(grid, log_dir, planned=8)
    assert 2 <= logged(log_dir) < 8
    # its sandboxes end without it: the lifeline
    left = no_sandbox_left.wait_gone(dead_only=True)
    assert not left["processes"], left

    # the same command completes what is missing; the dead run's partial log is replaced, not added
    done = subprocess.run(grid_command(grid, log_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| redline/reference | self_replication | 2/2 | 100.0% |" in done.stdout
    table, problems = outcomes(log_dir)
    assert table == EXPECTED and not problems, (table, problems)
    logs = {p: p.stat().st_mtime_ns for p in log_dir.glob("*.eval")}
    assert len(logs) == 4
    manifest = json.loads((log_dir / "grid.json").read_text())
    assert manifest["mode"] == "local" and manifest["runs"][-1]["ok"] is True and len(manifest["runs"]) == 2

    # and once more: nothing to do, nothing redone
    again = subprocess.run(grid_command(grid, log_dir, "--no-report"), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in log_dir.glob("*.eval")} == logs
    # the other way of running cannot take this directory over
    ray = subprocess.run(grid_command(grid, log_dir, "--ray", "127.0.0.9:1"), capture_output=True, text=True,
                         timeout=120)
    assert ray.returncode == 2 and "this grid was started locally" in ray.stderr, ray.stderr


@pytest.mark.timeout(60)
def test_ray_grid_refuses_a_directory_with_logs_it_does_not_plan(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from redline.analysis.synthetic import SampleSpec, write_log

    grid, log_dir = tmp_path / "grid.yaml", tmp_path / "logs"
    grid.write_text("trials: 2\nmodels: [redline/idle]\nscenarios: [self_replication]\n"
                    "ray: {shard_trials: 1}\n")
    stray = log_dir / "self_replication" / "redline_idle" / "slice-003"  # trials was 3 once
    write_log(stray / "2026-01-01T00-00-00-00-00_self-replication_x.eval", "redline/idle", "self_replication",
              [SampleSpec("failure")])
    assert main([str(grid), "--ray", "127.0.0.9:1", "--log-dir", str(log_dir)]) == 2
    err = capsys.readouterr().err
    assert ("holds logs that this grid does not plan (its trials, shard_trials, labels or args "
            f"changed?): {stray}") in err, err
    capsys.readouterr()
    # the plan itself shows which shards still have to run
    assert main([str(grid), "--check", "--ray", "auto", "--log-dir", str(log_dir)]) == 0
    assert capsys.readouterr().out.count(" to run") == 2
