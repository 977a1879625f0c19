"""`redline grid GRID.yaml [--ray ADDRESS]`: the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from redline.grid.spec import Grid, GridError

DESCRIPTION = """\
Run a grid of models × scenarios × trials into one log directory: on this machine (the default,
as one Inspect eval set), or with --ray on a Ray cluster (one Ray task per shard: a scenario × a
model × a slice of the trials). Re-running the same command completes what is missing and redoes
nothing that finished. GRID.yaml is checked before anything starts: every problem is reported, one
line each. See docs/scale-out.md."""

EPILOG = """\
Exit codes: 0 every trial finished; 1 some did not (re-run the same command to complete them);
2 bad GRID.yaml or arguments; 130 interrupted (re-run to resume)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redline grid", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", metavar="GRID.yaml", help="the grid (models, scenarios, trials, options)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on the Ray cluster at ADDRESS (host:port of its head, or 'auto')")
    p.add_argument("--log-dir", metavar="DIR",
                   help="log directory, a local path or (with --ray) an fsspec URL such as s3://bucket/x "
                        "(default: GRID.yaml's log_dir, else logs/<GRID file name>)")
    p.add_argument("--node-ip-address", metavar="IP",
                   help="with --ray: this machine's address in the cluster (Ray guesses it otherwise, and "
                        "turns 127.0.0.1 into the external address)")
    p.add_argument("--display", default="auto", choices=("auto", "full", "rich", "plain", "none"),
                   help="progress display (auto: Inspect's locally; a live bar on a terminal with --ray)")
    p.add_argument("--status", metavar="FILE", help="with --ray: keep the progress, as JSON, in FILE")
    p.add_argument("--check", action="store_true", help="check GRID.yaml, print the plan, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return p


def _err(msg: str) -> None:
    print(f"redline grid: {msg}", file=sys.stderr, flush=True)


def log_dir_for(ns: argparse.Namespace, grid: Grid) -> str:
    chosen = ns.log_dir or grid.log_dir or str(Path("logs") / Path(ns.grid).stem)
    if "://" in chosen:
        return chosen
    # Ray workers run elsewhere, and a resumed run must find the same directory.
    return str(Path(chosen).expanduser().resolve())


def print_plan(grid: Grid, log_dir: str, ray: bool) -> None:
    from redline.grid import resume
    from redline.grid.plan import planned_trials, shards

    print(f"{len(grid.models)} model(s) × {len(grid.scenarios)} scenario(s) × {grid.trials} trial(s): "
          f"{planned_trials(grid)} trials into {log_dir}")
    if not ray:
        return
    for s in shards(grid):
        done = "finished" if resume.shard_finished(s.folder(log_dir), s.key) else "to run"
        print(f"  {s.id}: epochs {s.first_epoch}-{s.first_epoch + s.epochs - 1}, {s.trials} trial(s), {done}")


def report(log_dir: str) -> None:
    from redline.grid.manifest import is_local

    if not is_local(log_dir):
        print(f"Logs in {log_dir}; copy them locally and run `redline report DIR` for the report.")
        return
    from redline.report import build_report

    result = build_report(log_dir, Path(log_dir) / "report")
    print()
    print(result.success_table_md if result.samples else f"No redline samples in {log_dir}.")
    print()
    print(f"Report: {result.out_dir / 'report.html'}")


def _run(ns: argparse.Namespace) -> int:
    from redline.grid.spec import load_grid

    grid = load_grid(ns.grid, for_ray=bool(ns.ray))
    log_dir = log_dir_for(ns, grid)
    if "://" in log_dir and not ns.ray:
        raise GridError([f"--log-dir {log_dir}: a URL needs --ray (a local run writes to a local directory)"])
    for given, option in ((ns.status, "--status"), (ns.node_ip_address, "--node-ip-address")):
        if given and not ns.ray:
            raise GridError([f"{option} needs --ray (a local run shows Inspect's own display)"])
    if ns.check:
        print_plan(grid, log_dir, bool(ns.ray))
        return 0
    if ns.ray:
        from redline.grid.cluster import run_on_ray
        from redline.grid.progress import Display

        display = Display("none" if ns.display == "none" else "auto" if ns.display == "auto" else "plain"
                          if ns.display == "plain" else "live", status_file=ns.status)
        ok, _ = run_on_ray(grid, log_dir, ns.ray, ns.node_ip_address, display)
    else:
        from redline.grid.local import run_local

        ok, _ = run_local(grid, log_dir, None if ns.display == "auto" else ns.display, note=_err)
    if not ns.no_report:
        try:
            report(log_dir)
        except Exception as e:  # the logs are what matters; the report can be rebuilt
            _err(f"could not write the report ({type(e).__name__}: {e}); run `redline report {log_dir}`")
    if not ok:
        _err("some trials did not finish: run the same command again to complete them")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`redline grid ...`; returns the exit code."""
    ns = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(ns)
    except GridError as e:
        for line in e.problems:
            _err(f"error: {line}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted: run the same command again to resume")
        return 130
