"""Shared test fixtures: every test that starts sandboxes must leave nothing behind."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from redline.sandbox import procs as sbprocs
from redline.sandbox.sweep import sweep

STATE_ROOT = Path("/run/redline")
_ID = re.compile(
    r"/sandboxes/([0-9a-f]{12})|/redline/([0-9a-f]{12})$|^sbx-init init \d+ \d+ -?\d+ ([0-9a-f]{12})"
)
# Where each live sandbox keeps its state, whatever its state root (others' runs may use their own).
_STATE = re.compile(rb"(/[^\0 ]*?)/sandboxes/([0-9a-f]{12})\b")


def _state_dirs() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            for root, sid in _STATE.findall(cmd):
                out[sid.decode()] = Path(root.decode()) / "sandboxes" / sid.decode()
    return out


def _foreign(sid: str, states: dict[str, Path]) -> bool:
    """A sandbox owned by another live process (e.g. a colleague's run): not ours to judge."""
    state = states.get(sid, STATE_ROOT / "sandboxes" / sid)
    try:
        pid_s, start_s = (state / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    if int(pid_s) == os.getpid():
        return False
    st = sbprocs.read_stat(int(pid_s))
    return st is not None and str(st[1]) == start_s


def _keep(item: str, states: dict[str, Path]) -> bool:
    m = _ID.search(item)
    return not (m and _foreign(m.group(1) or m.group(2) or m.group(3), states))


def leftovers() -> dict[str, list[str]]:
    """Processes, mounts, cgroups and state dirs of redline sandboxes (others' live runs excluded)."""
    found_procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        except OSError:
            continue
        if cmd.startswith(b"sbx-init") or b"/run/redline/sandboxes/" in cmd:
            found_procs.append(cmd.decode(errors="replace"))
    mounts = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
        if "/run/redline/sandboxes" in line
    ]
    cgroups = []
    for ctrl in ("pids", "memory", "cpu"):
        for d in Path("/sys/fs/cgroup", ctrl).rglob("redline"):
            # (only sandbox ids: other tools may keep cgroups of their own names there)
            cgroups += [str(c) for c in d.iterdir() if c.is_dir() and re.fullmatch("[0-9a-f]{12}", c.name)]
    base = STATE_ROOT / "sandboxes"
    states = [str(p) for p in base.glob("*")] if base.exists() else []
    out = {"processes": found_procs, "mounts": mounts, "cgroups": cgroups, "state": states}
    states = _state_dirs()
    return {k: [i for i in v if _keep(i, states)] for k, v in out.items()}


def wait_clean(timeout: float = 5.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers()
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def no_leftovers():
    """Fails the test if it leaks any sandbox process, mount, cgroup or directory."""
    sweep(STATE_ROOT)  # what dead runs left is the startup sweep's job, not this test's
    before = leftovers()
    assert not any(before.values()), f"leftovers before the test: {before}"
    yield
    left = wait_clean()
    assert not any(left.values()), f"test leaked: {left}"
