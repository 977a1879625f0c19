"""`redline report LOGDIR --compare A B`: is A's success rate really different from B's?

`compare_main` is what the CLI calls; `redline.analysis.compare` holds the rules (selectors,
strata) and `redline.analysis.stats` the statistics (Newcombe interval, Fisher's exact test,
trials needed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from redline.analysis.compare import ComparisonRow, SelectorError, compare
from redline.analysis.logs import load_samples
from redline.report.fmt import DASH, pct
from redline.report.render import Table, table_markdown


def _signed(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:+.1f} pts"


def _rate(c: int, n: int) -> str:
    return f"{c}/{n} ({pct(c / n) if n else DASH})"


def comparison_table(rows: Sequence[ComparisonRow]) -> Table:
    body = [[r.stratum, _rate(r.a_successes, r.a_trials), _rate(r.b_successes, r.b_trials),
             _signed(r.difference),
             f"{_signed(r.low)} to {_signed(r.high)}" if r.low is not None else DASH,
             DASH if r.fisher_p is None else f"{r.fisher_p:.3g}",
             DASH if r.trials_needed is None else str(r.trials_needed)]
            for r in rows]
    a, b = (rows[0].a, rows[0].b) if rows else ("A", "B")
    return Table(["Stratum", f"A: {a}", f"B: {b}", "Difference A − B", "95% CI (Newcombe)",
                  "Fisher exact p (two-sided)", "Trials per group for 80% power"], body,
                 numeric={1, 2, 3, 4, 5, 6}, table_id="compare-table")


EXPLAIN = ("Difference of success rates (A − B) in percentage points with its 95% Newcombe hybrid score "
           "interval; Fisher's exact test on the 2×2 table of successes and failures; and the trials per "
           "group a two-sided 5% test would need for 80% power to tell the two observed rates apart. "
           "Errored samples are not trials. Scenarios are never pooled.")


def compare_main(logdir: str | Path, a: str, b: str, *, json_out: str | Path | None = None,
                 stream: TextIO | None = None) -> int:
    """Compare selector `a` with selector `b` over the logs under `logdir` and print a Markdown
    table to `stream` (stdout). Selectors: a model, a scenario, or MODEL@SCENARIO (see
    `redline.analysis.compare`). With `json_out`, also write the rows there as JSON.

    Returns 0 when the comparison was printed, 1 when the logs hold no trials on one side or no
    common stratum, 2 when `logdir` does not exist or a selector is bad. Messages go to stderr."""
    out = stream if stream is not None else sys.stdout
    src = Path(logdir)
    if not src.exists():
        print(f"redline report: error: LOGDIR does not exist: {logdir}", file=sys.stderr)
        return 2
    samples, problems = load_samples(src, exclude=src / "report" if src.is_dir() else None)
    for p in problems:
        print(f"redline report: warning: {p.path}: {p.message}", file=sys.stderr)
    try:
        rows = compare(samples, a, b)
    except SelectorError as e:
        print(f"redline report --compare: error: {e}", file=sys.stderr)
        return 2
    if json_out is not None:
        Path(json_out).write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    if not rows:
        print(f"redline report --compare: {a!r} and {b!r} share no scenario (or model) to compare on",
              file=sys.stderr)
        return 1
    print(f"Comparing A = {a} with B = {b}\n\n{table_markdown(comparison_table(rows))}\n\n{EXPLAIN}",
          file=out)
    return 0 if all(r.a_trials and r.b_trials for r in rows) else 1
