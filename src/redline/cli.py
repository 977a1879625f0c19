"""The `redline` command: `eval`, `report`, `view` and `cleanup`.

`eval` and `view` are thin wrappers over the `inspect` CLI, run as a child process on the same
terminal so Inspect's own progress display and viewer work unchanged; `eval` then writes the
report next to the logs and prints the success table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_TASK = "redline/self_replication"
DEFAULT_MODEL = "redline/smollm2"
# The main job on the embedded model: full mode, a short step budget and one trial at a time (two
# llama.cpp servers on 2 cores slow each other down tenfold), sampled so that the trials differ.
DEFAULT_TASK_ARGS = ("mode=full", "max_steps=8", "temperature=0.7")
DEFAULT_MODEL_ARGS = tuple(x for kv in DEFAULT_TASK_ARGS for x in ("-T", kv))
DEFAULT_EPOCHS = "3"
DEFAULT_MAX_SAMPLES = "1"
STATE_ROOT = Path("/run/redline")

_EVAL_EPILOG = f"""\
Every other option goes to `inspect eval` unchanged (see `inspect eval --help`), e.g.
  redline eval redline/chain_replication --model openai/gpt-4o --epochs 10 --max-samples 2

Defaults: TASK is {DEFAULT_TASK}. Without --model it runs the embedded real model:
  --model {DEFAULT_MODEL} {' '.join(DEFAULT_MODEL_ARGS)}
  --epochs {DEFAULT_EPOCHS} --max-samples {DEFAULT_MAX_SAMPLES}
(each added only if you did not give it). Without --log-dir the logs go to a fresh
logs/<UTC timestamp>/ directory. Afterwards the report is written to <log-dir>/report and the
success table is printed. The exit code is Inspect's when it failed, else 0.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="redline",
        description="Measure whether an LLM agent can replicate itself inside a contained sandbox.",
        epilog="Run `redline COMMAND --help` for the options of each command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ev = sub.add_parser("eval", help="run a redline task with Inspect, then write the report",
                        description="Run `inspect eval TASK ...`, then write the report and print the "
                                    "success table.",
                        epilog=_EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("task", nargs="?", metavar="TASK", help=f"Inspect task (default {DEFAULT_TASK})")
    _eval_known(ev)

    rp = sub.add_parser("report", help="write the report for a directory of logs (or one log)",
                        description="Read Inspect logs of redline tasks and write report.html (self-"
                                    "contained), report.md, summary.json and PNG figures.",
                        epilog="Exit codes: 0 report written; 1 report written but no redline sample "
                               "could be read; 2 bad arguments or LOGDIR does not exist.")
    rp.add_argument("logdir", metavar="LOGDIR", help="directory searched recursively for .eval logs, "
                                                     "or a single .eval file")
    rp.add_argument("--out", metavar="DIR", help="output directory (default LOGDIR/report; for a single "
                                                 "log file, report/ next to it)")
    rp.add_argument("--format", default="html,md", type=_formats, metavar="FORMATS",
                    help="comma-separated: html, md (default html,md); summary.json and the PNGs "
                         "are always written")

    vw = sub.add_parser("view", help="browse the logs in Inspect's viewer (`inspect view`)",
                        description="Run `inspect view --log-dir LOGDIR`; other options go to "
                                    "`inspect view` unchanged.")
    vw.add_argument("logdir", nargs="?", default="logs", metavar="LOGDIR", help="default: logs")

    sub.add_parser("cleanup", help="remove sandboxes left behind by runs that died",
                   description=f"Sweep {STATE_ROOT}: kill and remove the sandboxes (processes, "
                               "cgroups, mounts) whose owning harness is gone. Live runs are left "
                               "alone. Same as `inspect sandbox cleanup redline`.")
    return p


def _eval_known(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"Inspect model (default {DEFAULT_MODEL}, with "
                                   f"{' '.join(DEFAULT_MODEL_ARGS)} --epochs {DEFAULT_EPOCHS})")
    p.add_argument("--log-dir", help="where Inspect writes logs (default: a fresh logs/<UTC timestamp>)")


def _formats(text: str) -> set[str]:
    from redline.report import FORMATS

    chosen = {f.strip().lower() for f in text.split(",") if f.strip()}
    bad = chosen - set(FORMATS)
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(sorted(bad)) or '(none)'}; "
                                         f"choose from {', '.join(FORMATS)}")
    return chosen


def _err(cmd: str, msg: str) -> None:
    print(f"redline {cmd}: {msg}", file=sys.stderr)


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


def _has(args: Sequence[str], *opts: str) -> bool:
    return any(a == o or a.startswith(o + "=") for a in args for o in opts)


def _has_task_arg(args: Sequence[str], key: str) -> bool:
    return any(a in ("-T", "--task-arg") and i + 1 < len(args) and args[i + 1].startswith(key + "=")
               for i, a in enumerate(args)) or any(a.startswith(f"-T{key}=") for a in args)


def _fresh_log_dir() -> Path:
    base = Path(os.environ.get("INSPECT_LOG_DIR") or "logs")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def eval_command(argv: Sequence[str]) -> tuple[list[str], Path]:
    """The `inspect eval` arguments for `redline eval ARGV`, and the log directory they use."""
    argv = list(argv)
    task = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_TASK
    known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _eval_known(known)
    ns, passthrough = known.parse_known_args(argv)
    log_dir = Path(ns.log_dir) if ns.log_dir else _fresh_log_dir()
    args = ["eval", task, *passthrough]
    if ns.model:
        args += ["--model", ns.model]
    else:
        args += ["--model", DEFAULT_MODEL]
        for kv in DEFAULT_TASK_ARGS:
            if not _has_task_arg(passthrough, kv.split("=")[0]):
                args += ["-T", kv]
        if not _has(passthrough, "--epochs"):
            args += ["--epochs", DEFAULT_EPOCHS]
        if not _has(passthrough, "--max-samples"):
            args += ["--max-samples", DEFAULT_MAX_SAMPLES]
    args += ["--log-dir", str(log_dir)]
    return args, log_dir


def _eval(argv: Sequence[str]) -> int:
    args, log_dir = eval_command(argv)
    print(f"redline eval: inspect {' '.join(args)}", file=sys.stderr, flush=True)
    rc = _inspect(*args)
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
    print()
    print(result.success_table_md if result.samples else f"No redline samples in {log_dir}.")
    print()
    print(f"Report: {result.out_dir / 'report.html'}")
    return rc if rc else 0


def _print_problems(cmd: str, problems: Sequence[object]) -> None:
    for p in problems:
        _err(cmd, f"warning: {getattr(p, 'path', '')}: {getattr(p, 'message', p)}")


def _report(logdir: str, out: str | None, formats: set[str]) -> int:
    src = Path(logdir)
    if not src.exists():
        _err("report", f"error: LOGDIR does not exist: {logdir}")
        return 2
    from redline.report import build_report

    result = build_report(src, out, formats)
    _print_problems("report", result.problems)
    names = [p.name for p in result.files if p.suffix != ".png"]
    pngs = sum(1 for p in result.files if p.suffix == ".png")
    print(f"Report written to {result.out_dir}: {', '.join(names)}, {pngs} PNG figure(s)")
    if not result.samples:
        _err("report", f"no redline samples found in {logdir}")
        return 1
    return 0


def _cleanup() -> int:
    from redline.sandbox.sweep import live_sandboxes, sweep

    try:
        removed = sweep(STATE_ROOT)
        live = live_sandboxes(STATE_ROOT)
    except PermissionError as e:
        _err("cleanup", f"error: {e} (the sweep needs root)")
        return 1
    names = f": {', '.join(removed)}" if removed else ""
    print(f"Removed {len(removed)} sandbox(es) left by dead runs{names}; "
          f"{len(live)} live sandbox(es) left alone.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `redline` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if argv and argv[0] == "eval" and not any(a in ("-h", "--help") for a in argv[1:]):
        return _eval(argv[1:])
    if argv and argv[0] == "view":
        ns, extra = parser.parse_known_args(argv)
        return _inspect("view", "--log-dir", ns.logdir, *extra)
    ns = parser.parse_args(argv)
    if ns.command == "report":
        return _report(ns.logdir, ns.out, ns.format)
    if ns.command == "cleanup":
        return _cleanup()
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
