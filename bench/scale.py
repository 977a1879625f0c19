"""Scale: many scripted trials at once on one machine, and the same grid on 1 vs 2 Ray nodes.

Part 1, one machine: `redline grid` runs N concurrent `redline/reference` self-replication trials
(one eval set, N sandboxes at once), against 1 trial alone in the same run. Throughput is trials
per minute of the eval's own wall time (Inspect's started/completed stamps, so the command's
Python start-up is not counted); memory is the peak proportional set size (PSS) of the grid's
whole process tree (harness, sandboxes, their agents and model servers), sampled every 0.25 s.

Part 2, Ray: one grid (2 models × 2 scenarios, 32 trials, 8 shards) on a loopback Ray cluster
of 1 node and of 2 nodes on this same machine (`redline.grid.loopback`), with as many shard
slots as shards so that no shard waits for another. The per-shard overhead of Ray is the median
time from the driver's `remote()` to the shard's code running on its fresh worker process.

Needs root (sandboxes, the network namespace) and Ray (`pip install 'redline[grid]'`). Ends with
`figure` lines (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from redline.grid.loopback import LoopbackCluster

ONE_MACHINE = """\
trials: {trials}
models: [redline/reference]
scenarios: [{{task: self_replication, args: {{max_steps: 12, greet_timeout: 60}}}}]
eval: {{max_samples: {trials}, max_sandboxes: {trials}}}
"""
RAY_GRID = """\
trials: 4
models: [redline/reference, redline/idle]
scenarios:
  - {task: self_replication, args: {instruction: [paper, explicit, copy], max_steps: 12, greet_timeout: 60}}
  - {task: shutdown_avoidance, args: {max_steps: 14, greet_timeout: 60}}
eval: {max_sandboxes: 3}
ray: {shard_trials: 2, num_cpus: 0.25}
"""


def _children(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PeakMemory:
    """Peak PSS of a process tree, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, sum(_pss(p) for p in _children(self.pid)))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _logs(log_dir: Path) -> list[Any]:
    from inspect_ai.log import read_eval_log

    return [read_eval_log(str(p)) for p in sorted(log_dir.rglob("*.eval"))]


def one_machine(root: Path, trials: int) -> dict[str, Any]:
    """Run `trials` concurrent trials as one local grid; the eval's wall time, outcomes, peak memory."""
    grid, log_dir = root / f"g{trials}.yaml", root / f"local-{trials}"
    grid.write_text(ONE_MACHINE.format(trials=trials))
    proc = subprocess.Popen([sys.executable, "-m", "redline.grid", str(grid), "--log-dir", str(log_dir),
                             "--display", "none", "--no-report"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    memory = PeakMemory(proc.pid)
    _, err = proc.communicate(timeout=1800)
    peak = memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"grid of {trials} failed: {err.decode(errors='replace')[-2000:]}")
    (log,) = _logs(log_dir)
    start = datetime.fromisoformat(log.stats.started_at).timestamp()
    wall = datetime.fromisoformat(log.stats.completed_at).timestamp() - start
    samples = log.samples or []
    ok = sum(1 for s in samples if s.error is None and s.scores["judge"].value["success"] == 1)
    return {"trials": len(samples), "successes": ok, "failures": len(samples) - ok, "wall_s": wall,
            "per_min": 60 * len(samples) / wall, "peak_mib": peak / 2**20,
            "trial_s": statistics.median(s.total_time or 0 for s in samples)}


def on_ray(root: Path, nodes: int) -> dict[str, Any]:
    """The Ray grid on a loopback cluster of `nodes` nodes; wall time and shard start-up latency."""
    grid, log_dir = root / "ray.yaml", root / f"ray-{nodes}"
    grid.write_text(RAY_GRID)
    with LoopbackCluster(root / f"c{nodes}", nodes=nodes, cpus=2, sandbox_slots=8) as cluster:
        t = time.monotonic()
        r = cluster.run([sys.executable, "-m", "redline.grid", str(grid), "--ray", cluster.address,
                         "--node-ip-address", "127.0.0.2", "--log-dir", str(log_dir), "--display", "none",
                         "--no-report"], timeout=1800)
        wall = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit(f"ray grid on {nodes} node(s) failed: {r.stderr[-2000:]}")
    results = json.loads((log_dir / "grid.json").read_text())["runs"][-1]["results"].values()
    starts = [x["started_at"] - x["submitted_at"] for x in results]
    evals = [x["eval_seconds"] for x in results]
    done = sum(int(x["done"]) for x in results)
    return {"nodes": nodes, "wall_s": wall, "trials": done, "shards": len(starts),
            "shard_start_s": statistics.median(starts), "shard_eval_s": statistics.median(evals),
            "node_ips": sorted({x["node"] for x in results})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=128, help="concurrent trials on one machine (default 128)")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-local", action="store_true", help="only the Ray part")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rgb", dir="/tmp"))
    try:
        print(f"load average before: {os.getloadavg()}", flush=True)
        alone = many = None
        if not args.skip_local:
            alone = one_machine(root, 1)
            print(f"1 trial alone: {alone}", flush=True)
            many = one_machine(root, args.trials)
            print(f"{args.trials} concurrent: {many}", flush=True)
        ray = [] if args.skip_ray else [on_ray(root, 1), on_ray(root, 2)]
        for r in ray:
            print(f"ray, {r['nodes']} node(s): {r}", flush=True)
        print(f"load average after: {os.getloadavg()}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if alone is not None and many is not None:
        local_figures(alone, many)
    if ray:
        ray_figures(*ray)


def local_figures(alone: dict[str, Any], many: dict[str, Any]) -> None:
    print(f"figure one_machine_trials {many['trials']} trials")
    print(f"figure one_machine_failures {many['failures']} trials")
    print(f"figure one_machine_trials_per_min {many['per_min']:.1f} trials/min")
    print(f"figure one_trial_alone_per_min {alone['per_min']:.1f} trials/min")
    print(f"figure concurrency_speedup {many['per_min'] / alone['per_min']:.1f} x")
    print(f"figure one_machine_peak_memory {many['peak_mib']:.0f} MiB")
    print(f"figure one_trial_alone_peak_memory {alone['peak_mib']:.0f} MiB")
    print(f"figure memory_per_concurrent_trial {many['peak_mib'] / many['trials']:.1f} MiB")
    print(f"figure trial_wall_concurrent_median {many['trial_s']:.1f} s")
    print(f"figure trial_wall_alone {alone['trial_s']:.1f} s")


def ray_figures(one: dict[str, Any], two: dict[str, Any]) -> None:
    print(f"figure ray_1_node_wall {one['wall_s']:.1f} s")
    print(f"figure ray_2_node_wall {two['wall_s']:.1f} s")
    print(f"figure ray_2_vs_1_node_speedup {one['wall_s'] / two['wall_s']:.2f} x")
    print(f"figure ray_shard_start_overhead_1_node {one['shard_start_s']:.1f} s")
    print(f"figure ray_shard_start_overhead_2_nodes {two['shard_start_s']:.1f} s")


if __name__ == "__main__":
    main()
