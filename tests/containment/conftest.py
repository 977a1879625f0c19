"""Shared by the escape-suite tests: one pytest param per case, and leak checks scoped to the
run's own state root and sandboxes (other engineers' sandboxes on the same host are not ours)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from redline.containment import CASES, Case
from redline.containment.host import pids_with

ALL = list(CASES)


def case_params(cases: list[Case], *, with_gaps: bool) -> list:
    """One pytest param per case; with_gaps: a known weakness is a strict xfail with its reason."""
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(reason=c.gap, strict=True)] if with_gaps and c.gap else []
        out.append(pytest.param(c, id=c.name, marks=marks))
    return out


def leaked(state_root: Path, sandbox_ids: list[str], run_id: str | None = None) -> dict[str, list[str]]:
    """What a run left behind: processes, mounts, state and cgroups of its sandboxes, and any
    process carrying its run id (every marker and canary does)."""
    root = str(state_root)
    procs = pids_with(root) + (pids_with(run_id) if run_id else [])
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = [line.split()[4] for line in mountinfo if root in line]
    base = state_root / "sandboxes"
    states = [str(p) for p in base.glob("*")] if base.exists() else []
    cgroups = [str(d) for ctrl in ("pids", "memory", "cpu") for sid in sandbox_ids
               for d in Path("/sys/fs/cgroup", ctrl).rglob(f"redline/{sid}")]
    return {"processes": [str(p) for p in procs], "mounts": mounts, "state": states, "cgroups": cgroups}


def wait_no_leak(state_root: Path, sandbox_ids: list[str], run_id: str | None = None,
                 timeout: float = 10.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = leaked(state_root, sandbox_ids, run_id)
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
