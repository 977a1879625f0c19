"""Issue 14: all-success and all-failure runs render for every trial count from 1 to 30 (the
Wilson upper bound of n/n once rounded to 0.9999…, below the rate, and the figure refused the
negative error bar)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redline.analysis.synthetic import SampleSpec, write_log
from redline.metrics import wilson_interval
from redline.report import build_report

NS = range(1, 31)


def test_wilson_interval_always_holds_the_rate() -> None:
    for n in NS:
        for c in range(n + 1):
            low, high = wilson_interval(c, n)
            assert 0.0 <= low <= c / n <= high <= 1.0, (c, n, low, high)
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0


@pytest.mark.timeout(600)
def test_all_success_and_all_failure_render_for_every_n(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for n in NS:
        for outcome in ("success", "failure"):
            # One model per cell, so that each (n, outcome) is its own row and error bar.
            write_log(logs / f"{outcome}{n:02d}.eval", f"m/{outcome}-{n:02d}", "self_replication",
                      [SampleSpec(outcome, steps=6)] * n, seed=n)
    result = build_report(logs, tmp_path / "report")
    assert result.problems == []
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["success_table"]}
    assert len(rows) == 2 * len(NS)
    for n in NS:
        win, lose = rows[f"m/success-{n:02d}"], rows[f"m/failure-{n:02d}"]
        assert (win["successes"], win["trials"], win["rate"], win["wilson_high"]) == (n, n, 1.0, 1.0)
        assert (lose["successes"], lose["trials"], lose["rate"], lose["wilson_low"]) == (0, n, 0.0, 0.0)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| m/success-10 | self_replication | 10/10 | 100.0% |" in md
    assert "| m/failure-10 | self_replication | 0/10 | 0.0% |" in md
    assert "success_rates.png" in summary["figures"]
