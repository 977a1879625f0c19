"""The escape suite against the `redline` sandbox: every case must be contained.

All cases run once (module fixture, ~1 min), through Inspect's sandbox API, as the agent; each is
then reported as its own test. Known weaknesses of today's sandbox (issue 12) are strict xfails
whose reasons come from the case table (`redline.containment`, field `gap`); when the hardening
lands they pass unexpectedly, and the mark is removed there.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from redline.containment import CASES, CATEGORIES, Case, Outcome, run_cases
from redline.containment.lab import HostLab
from redline.sandbox import RedlineSandboxConfig
from redline.selfcheck import markdown_table
from tests.containment.conftest import ALL, case_params, wait_no_leak

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def redline_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    # A state root of its own: the leak check below then sees this run only.
    root = tmp_path_factory.mktemp("escape-state")
    lab = HostLab()
    t0 = time.monotonic()
    outcomes = asyncio.run(run_cases("redline", RedlineSandboxConfig(state_root=str(root)), ALL, lab=lab))
    print(f"\nescape suite: {len(outcomes)} cases in {time.monotonic() - t0:.1f} s")
    left = wait_no_leak(root, lab.sandbox_ids, lab.run_id)
    assert not any(left.values()), f"the escape suite leaked: {left}"
    return {o.name: o for o in outcomes}


@pytest.mark.parametrize("case", case_params(ALL, with_gaps=True))
def test_contained(case: Case, redline_run: dict[str, Outcome]) -> None:
    o = redline_run[case.name]
    if o.status == "n/a":
        pytest.skip(f"not applicable on this host: {o.evidence}")
    assert o.status == "contained", f"{case.name} ({case.attack}): {o.status}: {o.evidence}"


def test_doc_table_is_current() -> None:
    """docs/escape-suite.md carries the case table as `redline selfcheck --list --markdown` prints it."""
    doc = (Path(__file__).parents[2] / "docs" / "escape-suite.md").read_text()
    assert markdown_table(CASES) in doc, "regenerate the table: python -m redline.selfcheck --list --markdown"


def test_case_table() -> None:
    """At least 60 cases covering every category; each says what it does and what it checks."""
    assert len(CASES) >= 60
    assert {c.category for c in CASES} == set(CATEGORIES)
    assert len({c.name for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.attack and c.check, c.name
        assert c.gap is None or c.gap.startswith("needs issue 12 item"), c.name
    fast = [c for c in CASES if c.fast]
    assert 10 <= len(fast) < len(CASES)
    # The fast subset runs before every eval: nothing slow or disruptive in it.
    assert all(c.group in ("main", "reads") for c in fast)
