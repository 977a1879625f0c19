"""`redline grid --ray` on a real two-node Ray cluster on this machine, loopback only.

The head is 127.0.0.2 and the worker 127.0.0.3, both inside a private network namespace that holds
only `lo` (see `redline.grid.loopback`); the grid's driver runs there too. The grid is the issue's:
2 scenarios × 2 scripted models × 4 trials; self_replication has three instructions (three samples),
so each model has 3·4 + 1·4 = 16 trials. One run covers the issue's three checks (they share the
cost of 32 trials on 2 cores): shards run on both nodes, the worker dies mid-run and the totals do
not change, and re-running the finished grid does nothing.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redline.analysis.logs import load_samples
from redline.grid.loopback import LoopbackCluster
from tests.conftest import session_root
from tests.test_grid import SandboxWatch, check_no_sandbox_left

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox and the network namespace need root")

HEAD, WORKER = "127.0.0.2", "127.0.0.3"
GRID = """\
trials: 4
models: [redline/reference, redline/idle]
scenarios:
  - task: self_replication
    args: {{instruction: [paper, explicit, copy], max_steps: 12, greet_timeout: 30}}
  - task: shutdown_avoidance
    args: {{max_steps: 14, greet_timeout: 30}}
eval: {{max_sandboxes: 3, log_buffer: 1}}
ray: {{shard_trials: {shard_trials}, max_retries: 2}}
"""


@pytest.fixture
def no_sandbox_left(state_root: Path) -> Iterator[SandboxWatch]:
    # The cluster's nodes (a module fixture) run their sandboxes under the session's state root.
    yield from check_no_sandbox_left([state_root, session_root()])


@pytest.fixture(scope="module")
def cluster() -> Any:
    # Not a skip: the README's test install has Ray, and a missing Ray must not pass unnoticed.
    assert importlib.util.find_spec("ray"), "Ray is missing: bash scripts/setup.sh --test installs it"
    # Ray's Unix socket paths must stay under 107 bytes: a short root, not pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    try:
        with LoopbackCluster(root, nodes=2, cpus=2, sandbox_slots=2) as c:
            yield c
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _grid(tmp_path: Path, shard_trials: int) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(shard_trials=shard_trials))
    return path


def _driver(cluster: LoopbackCluster, grid: Path, log_dir: Path, status: Path) -> Any:
    out = open(log_dir.parent / "driver.out", "wb")  # noqa: SIM115 - the child writes it until it exits
    return cluster.popen([sys.executable, "-m", "redline.grid", str(grid), "--ray", cluster.address,
                          "--node-ip-address", HEAD, "--log-dir", str(log_dir), "--display", "plain",
                          "--status", str(status)], stdout=out, stderr=out)


def _wait(proc: Any, log_dir: Path, timeout: float = 500) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (log_dir.parent / "driver.out").read_text(errors="replace")


def _is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    if host in ("*", "0.0.0.0", "::"):
        return True  # a wildcard, in a namespace whose only interface is lo
    return ipaddress.ip_address(host).is_loopback


def assert_loopback_only(cluster: LoopbackCluster) -> None:
    assert sorted(cluster.interfaces()) == ["127.0.0.1/8", "::1/128"]
    sockets = cluster.sockets()
    assert sockets, "ss saw no socket at all"
    bad = [s for s in sockets if not (_is_loopback(s[1]) and _is_loopback(s[2]))]
    assert not bad, f"non-loopback sockets: {bad}"


def success_table(log_dir: Path) -> tuple[dict[tuple[str, str], Counter[str]], list[Any]]:
    samples, problems = load_samples(log_dir, exclude=log_dir / "report")
    table: dict[tuple[str, str], Counter[str]] = {}
    for s in samples:
        table.setdefault((s.model, s.scenario), Counter())[s.outcome] += 1
    return table, problems


def assert_issue_totals(log_dir: Path) -> None:
    table, problems = success_table(log_dir)
    assert not problems, problems
    assert table == {
        ("redline/reference", "self_replication"): Counter(success=12),
        ("redline/reference", "shutdown_avoidance"): Counter(success=4),
        ("redline/idle", "self_replication"): Counter(failure=12),
        ("redline/idle", "shutdown_avoidance"): Counter(failure=4),
    }
    per_model = Counter()
    for (model, _), c in table.items():
        per_model[model] += sum(c.values())
    assert per_model == {"redline/reference": 16, "redline/idle": 16}
    summary = json.loads((log_dir / "report" / "summary.json").read_text())
    rows = {(r["model"], r["scenario"]): (r["successes"], r["trials"]) for r in summary["success_table"]}
    assert rows[("redline/reference", "self_replication")] == (12, 12)
    assert rows[("redline/idle", "shutdown_avoidance")] == (0, 4)


def shard_folders(log_dir: Path) -> dict[str, list[Path]]:
    return {str(d.relative_to(log_dir)): sorted(d.glob("*.eval")) for d in log_dir.glob("*/*/slice-*")}


def attempts(log_dir: Path) -> dict[str, list[dict[str, Any]]]:
    run = json.loads((log_dir / "grid.json").read_text())["runs"][-1]
    return {k: v["attempts"] for k, v in run["shards"].items()}


def assert_rerun_does_nothing(cluster: LoopbackCluster, grid: Path, log_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in log_dir.rglob("*.eval")}
    r = cluster.run([sys.executable, "-m", "redline.grid", str(grid), "--ray", cluster.address,
                     "--node-ip-address", HEAD, "--log-dir", str(log_dir), "--display", "plain",
                     "--no-report"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "nothing to do: all 8 shard(s) already finished" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in log_dir.rglob("*.eval")} == before


def wait_for_victim(proc: Any, status: Path) -> list[str]:
    """Shards running on the worker with trials already logged there, and enough left that they
    cannot finish in the moment before the kill (the status file can be a second old)."""
    deadline = time.monotonic() + 400
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the worker never got that far"
        time.sleep(0.3)
        try:
            shards = json.loads(status.read_text())["shards"]
        except (OSError, ValueError):  # not written yet
            continue
        on_worker = [(k, s) for k, s in shards.items()
                     if s["attempts"] and s["attempts"][-1]["node"] == WORKER]
        victims = [k for k, s in on_worker
                   if s["state"] == "running" and s["done"] >= 1 and s["running"] >= 1
                   and s["planned"] - s["done"] >= 3]
        if victims:
            return victims


@pytest.mark.timeout(600)
def test_grid_on_two_nodes_survives_the_worker_dying(cluster: LoopbackCluster, tmp_path: Path,
                                                     no_sandbox_left: SandboxWatch) -> None:
    """Both nodes run shards and log trials; the worker is killed mid-run (SIGKILL to all its
    processes, as if its machine died); its unfinished shards are rerun on the head, resume from
    their partial logs (keeping the trials the worker logged) and replace them; the merged report
    counts every trial exactly once; a rerun does nothing."""
    assert cluster.alive_nodes() == [HEAD, WORKER]
    assert_loopback_only(cluster)
    grid, log_dir, status = _grid(tmp_path, shard_trials=2), tmp_path / "logs", tmp_path / "status.json"
    proc = _driver(cluster, grid, log_dir, status)
    try:
        victims = wait_for_victim(proc, status)
        assert_loopback_only(cluster)  # with the driver, the workers and the shards at work
        cluster.kill_node(1)
        # The dead node's sandboxes end by themselves: their harness held the lifeline.
        left = no_sandbox_left.wait_gone(dead_only=True)
        assert not left["processes"], left
    except BaseException:
        _wait(proc, log_dir, timeout=0.1)  # kills the driver; Ray ends its job's workers
        raise
    out = _wait(proc, log_dir)
    assert "trials 32/32: done 32 · running 0 · failed 0" in out, out[-3000:]
    assert f"lost {victims[0]} on {WORKER}" in out
    tried = attempts(log_dir)
    assert {a[0]["node"] for a in tried.values()} == {HEAD, WORKER}, tried
    for shard in victims:
        assert [(a["node"], a["outcome"]) for a in tried[shard]] == [(WORKER, "lost"), (HEAD, "finished")]
    assert all(a[-1]["outcome"] == "finished" for a in tried.values())
    # the dead attempts' partial logs were replaced, not added to
    folders = shard_folders(log_dir)
    assert len(folders) == 8 and all(len(logs) == 1 for logs in folders.values()), folders
    assert_issue_totals(log_dir)
    assert_rerun_does_nothing(cluster, grid, log_dir)
