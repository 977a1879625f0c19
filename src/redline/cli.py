"""The `redline` command: `eval`, `report` (and `report --compare`), `view`, `cleanup`, `grid` and
`selfcheck` (click, as Inspect's own CLI).

`eval` and `view` are thin wrappers over the `inspect` CLI, run as a child process on the same
terminal so Inspect's own progress display and viewer work unchanged; every option they do not
know goes to Inspect as it is. `eval` checks a redline task's `-T` parameters first, then writes
the report next to the logs and prints the success table. `grid` and `selfcheck` hand their
arguments to their own command lines (`redline.grid.main`, `redline.selfcheck.main`) unchanged.

A subcommand is one decorated function below; `main()` maps click's outcomes to exit codes
(0 done, 1 failed, 2 bad arguments).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

DEFAULT_TASK = "redline/self_replication"
DEFAULT_MODEL = "redline/smollm2"
# The main job on the embedded model: full mode, a short step budget and one trial at a time (two
# llama.cpp servers on 2 cores slow each other down tenfold), sampled so that the trials differ.
DEFAULT_TASK_ARGS = ("mode=full", "max_steps=8", "temperature=0.7")
DEFAULT_MODEL_ARGS = tuple(x for kv in DEFAULT_TASK_ARGS for x in ("-T", kv))
DEFAULT_EPOCHS = "3"
DEFAULT_MAX_SAMPLES = "1"
# No `-h` here: click splits an unknown `-Tdepth=3` into letters, and the `h` would ask for help.
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["--help"]}
# Commands with a command line of their own: every argument, --help included, goes to it.
DELEGATED = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}

_EVAL_HELP = f"""Run `inspect eval TASK ...`, then write the report and print the success table.

\b
Every option other than --model and --log-dir goes to `inspect eval` unchanged (see
`inspect eval --help`), e.g.
  redline eval redline/chain_replication --model openai/gpt-4o --epochs 10 --max-samples 2

\b
Defaults: TASK is {DEFAULT_TASK}. Without --model it runs the embedded real model:
  --model {DEFAULT_MODEL} {' '.join(DEFAULT_MODEL_ARGS)}
  --epochs {DEFAULT_EPOCHS} --max-samples {DEFAULT_MAX_SAMPLES}
(each added only if you did not give it). Without --log-dir the logs go to a fresh
logs/<UTC timestamp>/ directory. A redline task's -T parameters are checked before Inspect starts
(an unknown name or a bad value: exit code 2). Afterwards the report is written to
<log-dir>/report and the success table is printed. The exit code is Inspect's when it failed,
1 when every sample errored (the errors are listed), else 0.
"""


def _err(cmd: str, msg: str) -> None:
    click.echo(f"redline {cmd}: {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Run `redline COMMAND --help` for the options of each command.")
def cli() -> None:
    """Measure whether an LLM agent can replicate itself inside a contained sandbox."""


# ------------------------------------------------------------------------------ eval
@cli.command("eval", context_settings=PASSTHROUGH, help=_EVAL_HELP,
             short_help="run a redline task with Inspect, then write the report")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[TASK] [INSPECT EVAL OPTIONS]")
def eval_(args: tuple[str, ...]) -> int:
    inspect_args, log_dir = eval_command(args)
    problem = check_task_args(inspect_args)
    if problem:
        _err("eval", f"error: {problem}")
        return 2
    click.echo(f"redline eval: inspect {' '.join(inspect_args)}", err=True)
    rc = _inspect(*inspect_args)
    return report_after_eval(log_dir, rc)


def eval_command(argv: Sequence[str]) -> tuple[list[str], Path]:
    """The `inspect eval` arguments for `redline eval ARGV`, and the log directory they use."""
    argv = list(argv)
    task = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_TASK
    known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    known.add_argument("--model")
    known.add_argument("--log-dir")
    ns, passthrough = known.parse_known_args(argv)
    log_dir = Path(ns.log_dir) if ns.log_dir else _fresh_log_dir()
    args = ["eval", task, *passthrough, "--model", ns.model or DEFAULT_MODEL]
    if not ns.model:
        args += [x for kv in DEFAULT_TASK_ARGS if not _has_task_arg(passthrough, kv.split("=")[0])
                 for x in ("-T", kv)]
        args += [] if _has(passthrough, "--epochs") else ["--epochs", DEFAULT_EPOCHS]
        args += [] if _has(passthrough, "--max-samples") else ["--max-samples", DEFAULT_MAX_SAMPLES]
    return args + ["--log-dir", str(log_dir)], log_dir


def task_args_of(args: Sequence[str]) -> list[str]:
    """The `k=v` strings of every -T/--task-arg in `args`."""
    out = []
    for i, a in enumerate(args):
        if a in ("-T", "--task-arg") and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--task-arg="):
            out.append(a.removeprefix("--task-arg="))
        elif a.startswith("-T") and len(a) > 2:
            out.append(a[2:])
    return out


def check_task_args(inspect_args: Sequence[str]) -> str | None:
    """Why the -T parameters of a redline task would be refused (None: fine, or not a redline
    task), parsed as `inspect eval` parses them."""
    from redline.scenarios import SCENARIOS, scenario

    task = inspect_args[1]
    if not task.startswith("redline/") or task.removeprefix("redline/") not in SCENARIOS:
        return None
    from inspect_ai._util.config import parse_cli_args  # exactly Inspect's own -T parsing

    from redline.scenarios.common import OptionsError

    try:
        scenario(task).Options.parse(task, parse_cli_args(task_args_of(inspect_args)))
    except OptionsError as e:
        return str(e)
    return None


def report_after_eval(log_dir: Path, rc: int) -> int:
    if not log_dir.is_dir() or not any(log_dir.rglob("*.eval")):
        _err("eval", f"no logs in {log_dir}: nothing to report (inspect exit code {rc})")
        return rc if rc else 1
    try:
        from redline.report import build_report

        result = build_report(log_dir, log_dir / "report")
    except Exception as e:  # the eval itself is done: its logs stay usable with `redline report`
        _err("eval", f"could not write the report: {type(e).__name__}: {e}")
        return rc if rc else 1
    _print_problems("eval", result.problems)
    click.echo()
    click.echo(result.success_table_md if result.samples else f"No redline samples in {log_dir}.")
    click.echo()
    click.echo(f"Report: {result.out_dir / 'report.html'}")
    errors = [s for s in result.samples if s.outcome == "error"]
    if result.samples and len(errors) == len(result.samples):
        _err("eval", f"every sample errored ({len(errors)}):")
        for s in errors:
            _err("eval", f"  {s.task} sample {s.id} epoch {s.epoch}: {s.error}")
        return rc if rc else 1
    return rc


def _fresh_log_dir() -> Path:
    base = Path(os.environ.get("INSPECT_LOG_DIR") or "logs")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def _has(args: Sequence[str], *opts: str) -> bool:
    return any(a == o or a.startswith(o + "=") for a in args for o in opts)


def _has_task_arg(args: Sequence[str], key: str) -> bool:
    return any(kv.startswith(key + "=") for kv in task_args_of(args))


def _wait(proc: subprocess.Popen[bytes]) -> int:
    # Ctrl-C reaches Inspect too (same process group): it cancels cleanly and writes its log;
    # we keep waiting for it instead of dying with a traceback.
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def _inspect(*args: str) -> int:
    return _wait(subprocess.Popen([sys.executable, "-m", "inspect_ai", *args]))


# ------------------------------------------------------------------------------ report
def _formats(ctx: click.Context, param: click.Parameter, text: str) -> set[str]:
    from redline.report import FORMATS

    chosen = {f.strip().lower() for f in text.split(",") if f.strip()}
    bad = chosen - set(FORMATS)
    if bad or not chosen:
        raise click.BadParameter(f"unknown format(s) {', '.join(sorted(bad)) or '(none)'}; "
                                 f"choose from {', '.join(FORMATS)}")
    return chosen


@cli.command("report", short_help="write the report for a directory of logs (or compare two models)",
             epilog="Exit codes: 0 report written (or comparison printed); 1 report written but no redline "
                    "sample could be read (--compare: no trials on a side, or nothing in common); 2 bad "
                    "arguments or LOGDIR does not exist.")
@click.argument("logdir", metavar="LOGDIR")
@click.option("--out", metavar="DIR", help="output directory (default LOGDIR/report; for a single log file, "
                                           "report/ next to it)")
@click.option("--format", "formats", default="html,md", callback=_formats, metavar="FORMATS",
              help="comma-separated: html, md (default html,md); summary.json and the PNGs are "
                   "always written")
@click.option("--compare", nargs=2, metavar="A B", default=None,
              help="instead of the report: is A's success rate different from B's? A and B: a model, a "
                   "scenario, or MODEL@SCENARIO. Prints the difference with its 95% Newcombe interval, "
                   "Fisher's exact test and the trials needed, per scenario (or model)")
@click.option("--json", "json_out", metavar="FILE",
              help="with --compare: also write the rows as JSON to FILE")
def report(logdir: str, out: str | None, formats: set[str], compare: tuple[str, str] | None,
           json_out: str | None) -> int:
    """Write the report for a directory of logs (or one .eval log): report.html (self-contained),
    report.md, summary.json and PNG figures. LOGDIR is searched recursively for .eval logs. With
    --compare A B, print the comparison of A with B instead."""
    if json_out and not compare:
        raise click.UsageError("--json goes with --compare")
    if compare:
        from redline.report import compare_main

        return compare_main(logdir, *compare, json_out=json_out)
    if not Path(logdir).exists():
        _err("report", f"error: LOGDIR does not exist: {logdir}")
        return 2
    from redline.report import build_report

    result = build_report(Path(logdir), out, formats)
    _print_problems("report", result.problems)
    names = [p.name for p in result.files if p.suffix != ".png"]
    pngs = sum(1 for p in result.files if p.suffix == ".png")
    click.echo(f"Report written to {result.out_dir}: {', '.join(names)}, {pngs} PNG figure(s)")
    if not result.samples:
        _err("report", f"no redline samples found in {logdir}")
        return 1
    return 0


def _print_problems(cmd: str, problems: Sequence[object]) -> None:
    for p in problems:
        _err(cmd, f"warning: {getattr(p, 'path', '')}: {getattr(p, 'message', p)}")


# ------------------------------------------------------------------------------ view
@cli.command("view", context_settings=PASSTHROUGH, short_help="browse the logs in Inspect's viewer")
@click.argument("logdir", default="logs", metavar="[LOGDIR]")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[INSPECT VIEW OPTIONS]")
def view(logdir: str, args: tuple[str, ...]) -> int:
    """Run `inspect view --log-dir LOGDIR` (default: logs); other options go to `inspect view`
    unchanged."""
    return _inspect("view", "--log-dir", logdir, *args)


# ------------------------------------------------------------------------------ cleanup
def _default_state_root() -> str:
    from redline.scenarios.common import default_state_root

    return default_state_root()


@cli.command("cleanup", short_help="remove sandboxes left behind by runs that died")
@click.option("--state-root", default=_default_state_root, show_default="$REDLINE_STATE_ROOT or /run/redline",
              help="the sandboxes' state directory (as the runs used it)")
def cleanup(state_root: str) -> int:
    """Sweep the state root: kill and remove the sandboxes (processes, cgroups, mounts) whose
    owning harness is gone. Live runs are left alone. With the default state root this is what
    `inspect sandbox cleanup redline` does."""
    from redline.sandbox.sweep import live_sandboxes, sweep

    try:
        removed = sweep(Path(state_root))
        live = live_sandboxes(Path(state_root))
    except PermissionError as e:
        _err("cleanup", f"error: {e} (the sweep needs root)")
        return 1
    names = f": {', '.join(removed)}" if removed else ""
    click.echo(f"Removed {len(removed)} sandbox(es) left by dead runs{names}; "
               f"{len(live)} live sandbox(es) left alone.")
    return 0


# ------------------------------------------------------------------------------ grid and selfcheck
def _delegate(run: Any, args: Sequence[str]) -> int:
    """Run a command line of our own (`main(argv) -> int`) with `args`; its exit code is ours."""
    try:
        return int(run(list(args)))
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


@cli.command("grid", context_settings=DELEGATED, add_help_option=False,
             short_help="run a grid of models × scenarios × trials, here or on a Ray cluster")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="GRID.yaml [--ray ADDRESS] [OPTIONS]")
def grid(args: tuple[str, ...]) -> int:
    """Run `redline grid GRID.yaml [--ray ADDRESS] ...` (see `redline grid --help`)."""
    from redline.grid import main as grid_main

    return _delegate(grid_main, args)


@cli.command("selfcheck", context_settings=DELEGATED, add_help_option=False,
             short_help="run the containment escape suite against a sandbox config")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[OPTIONS]")
def selfcheck(args: tuple[str, ...]) -> int:
    """Run `redline selfcheck [--fast] [--case NAME] [--config FILE] ...` (see `redline selfcheck
    --help`)."""
    from redline.selfcheck import main as selfcheck_main

    return _delegate(selfcheck_main, args)


# ------------------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `redline` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv: Any = cli.main(args=args, prog_name="redline", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
        return 2
    except click.ClickException as e:
        e.show()
        return 2 if isinstance(e, click.UsageError) else e.exit_code
    except click.exceptions.Abort:
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
