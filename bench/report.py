"""Benchmark `redline report` on 1,000 synthetic samples (20-40 steps each) in 8 `.eval` logs.

Baseline, measured in the same run on the same files: `inspect_ai.log.read_eval_log` reading
every log in full (what any analysis of these logs must at least do). Figures:
- `report_1000_samples_s`: wall time of the `redline report LOGDIR` command (a fresh process:
  imports, reading, analysis, 6 figures, 1,000 genealogy SVGs, HTML, Markdown, summary.json).
  Goal: < 10 s. The samples carry every field the report reads: claims, box events, genealogy,
  per-call token usage, the self-check.
- `read_eval_log_1000_samples_s`: the baseline, in-process (imports already paid).
- `report_vs_read_ratio`: the first over the second.
- `report_1000_samples_cpu_s`: CPU seconds (user + system) of that command, which a busy shared
  machine inflates far less than the wall time.

Run from the repo root: `.venv/bin/python bench/report.py [--samples N] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redline.analysis.synthetic import SampleSpec, write_log

MODELS = ("ollama/qwen2.5:72b", "ollama/llama3.1:70b", "openai/gpt-4o", "redline/smollm2")
SCENARIOS = ("self_replication", "shutdown_avoidance")
RATE = {"ollama/qwen2.5:72b": 0.7, "ollama/llama3.1:70b": 0.4, "openai/gpt-4o": 0.6, "redline/smollm2": 0.0}


SELFCHECK = {"cases": 40, "passed": 40, "failed": [], "kernel": "6.18", "bwrap": "0.11.0",
             "seccomp_profile": "default", "seconds": 2.5, "mode": "required"}


def _infra(rng: random.Random) -> dict[str, object]:
    """Box events in about one trial in ten."""
    fired = rng.random() < 0.1
    return {"oom_kills": int(fired and rng.random() < 0.5),
            "pids_max_hits": 3 * int(fired and rng.random() < 0.5), "disk_full": fired and rng.random() < 0.2}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def generate(root: Path, n_samples: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    cells = [(m, s) for m in MODELS for s in SCENARIOS]
    per_cell = [n_samples // len(cells) + (1 if i < n_samples % len(cells) else 0) for i in range(len(cells))]
    paths = []
    for i, ((model, scenario), n) in enumerate(zip(cells, per_cell, strict=True)):
        specs = []
        for _ in range(n):
            r = rng.random()
            outcome = "error" if r < 0.03 else ("success" if rng.random() < RATE[model] else "failure")
            specs.append(SampleSpec(outcome, steps=rng.randint(20, 40), reached=rng.randint(0, 3),
                                    tokens=rng.randint(20_000, 90_000), wall_seconds=rng.uniform(60, 900),
                                    # the fields of issue 17, so that their analysis is timed too
                                    claim=True if outcome == "failure" and rng.random() < 0.3 else None,
                                    infra=_infra(rng), genealogy=True, token_usage=True,
                                    selfcheck=SELFCHECK, containment={"cgroup": "v1", "weaker": False}))
        paths.append(write_log(root / f"{i:02d}_{scenario}.eval", model, scenario, specs, seed=seed + i))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median kept)")
    ap.add_argument("--keep", type=Path, help="write the logs and report here and keep them")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="redline-bench-report-"))
    try:
        t0 = time.perf_counter()
        paths = generate(root / "logs", args.samples)
        gen_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"generated {args.samples} samples in {len(paths)} logs ({size_mb:.1f} MB) in {gen_s:.1f} s")

        from inspect_ai.log import read_eval_log

        read_eval_log(str(paths[0]))  # warm: the baseline should not pay first-import costs
        base = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            n = sum(len(read_eval_log(str(p)).samples or []) for p in paths)
            base.append(time.perf_counter() - t)
        assert n == args.samples, n

        redline = Path(sys.executable).parent / "redline"
        runs, cpu = [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), _children_cpu()
            proc = subprocess.run([str(redline), "report", str(root / "logs"), "--out", str(root / "report")],
                                  capture_output=True, text=True, timeout=600)
            runs.append(time.perf_counter() - t)
            cpu.append(_children_cpu() - c)
            if proc.returncode != 0:
                sys.exit(f"redline report failed ({proc.returncode}):\n{proc.stderr}")

        from redline.report import build_report

        t = time.perf_counter()
        result = build_report(root / "logs", root / "report-inproc")
        inproc = time.perf_counter() - t
        assert result.summary["counts"]["samples"] == args.samples

        report_s, read_s = statistics.median(runs), statistics.median(base)
        print(f"baseline read_eval_log of every log: {read_s:.2f} s (median of {args.repeat})")
        print(f"redline report (new process):        {report_s:.2f} s (median of {args.repeat}; "
              f"in-process build_report {inproc:.2f} s)")
        print(f"ratio report/read: {report_s / read_s:.2f}x")
        print(f"redline report CPU time (user+sys):  {statistics.median(cpu):.2f} s (on a shared machine the "
              "wall time waits for the CPU; this does not)")
        print(f"figure report_1000_samples_s {report_s:.2f} s")
        print(f"figure report_1000_samples_cpu_s {statistics.median(cpu):.2f} s")
        print(f"figure read_eval_log_1000_samples_s {read_s:.2f} s")
        print(f"figure report_vs_read_ratio {report_s / read_s:.2f} x")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
