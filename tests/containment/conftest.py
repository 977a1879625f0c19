"""Shared by the escape-suite tests: one pytest param per case, and leak checks scoped to the
run's own state root and its own records of its sandboxes (other runs on the same host are not
looked at)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from redline.containment import CASES, Case
from redline.containment.host import pids_with
from redline.sandbox import RedlineSandboxConfig
from redline.sandbox.cgroups import Cgroups
from tests import conftest as base
from tests.helpers import scaled

ALL = list(CASES)


def case_params(cases: list[Case], *, with_gaps: bool) -> list:
    """One pytest param per case; with_gaps: a known weakness is a strict xfail with its reason."""
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(reason=c.gap, strict=True)] if with_gaps and c.gap else []
        out.append(pytest.param(c, id=c.name, marks=marks))
    return out


def leaked(state_root: Path, sandbox_ids: list[str], run_id: str | None = None) -> dict[str, list[str]]:
    """What a run under its own `state_root` left behind, from the run's own records only (see
    tests/conftest.py): every sandbox this process made under that root and every one in
    `sandbox_ids` (a child harness's too: its cgroups are where the same config places them), the
    sandboxes still recorded under the root, the mounts under it, and any process carrying the
    state root or the run id (every marker and canary does)."""
    cfg = RedlineSandboxConfig(state_root=str(state_root))
    mine = [t for t in base._created if t.state.is_relative_to(state_root)]
    known = {t.id for t in mine}
    mine += [base.Trace(sid, state_root / "sandboxes" / sid, Cgroups.for_sandbox(cfg, sid).dirs)
             for sid in sandbox_ids if sid not in known]
    left = base.leftovers(mine, [state_root])
    procs = pids_with(str(state_root)) + (pids_with(run_id) if run_id else [])
    left["processes"] = sorted(set(left["processes"]) | {str(p) for p in procs})
    return left


def wait_no_leak(state_root: Path, sandbox_ids: list[str], run_id: str | None = None,
                 timeout: float = 10.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        left = leaked(state_root, sandbox_ids, run_id)
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
