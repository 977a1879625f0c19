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


def _own_memcg() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            return path
    return "/"


def _under_another_harness(pid: int) -> bool:
    """A sandbox process whose parent chain reaches a live Python process other than this one
    (a colleague's harness, whatever its state root): not ours. Orphans count as ours."""
    me = os.getpid()
    for _ in range(64):
        st = sbprocs.read_stat(pid)
        if st is None or st[0] <= 1:
            return False
        pid = st[0]
        if pid == me:
            return False
        if any("python" in a or "pytest" in a for a in sbprocs.cmdline_of(pid)[:2]):
            return True
    return False


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
        if (cmd.startswith(b"sbx-init") or b"/run/redline/sandboxes/" in cmd) and \
                not _under_another_harness(int(pid)):
            found_procs.append(cmd.decode(errors="replace"))
    mounts = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
        if "/run/redline/sandboxes" in line
    ]
    cgroups = []
    # v1: one tree per controller; v2 (the unified tree itself): wherever the placement put them.
    for top in [Path("/sys/fs/cgroup", c) for c in ("pids", "memory", "cpu")] + [Path("/sys/fs/cgroup")]:
        if top == Path("/sys/fs/cgroup") and not (top / "cgroup.controllers").exists():
            continue
        try:  # colleagues' runs add and remove cgroups meanwhile
            for d in top.rglob("redline"):
                cgroups += [str(c) for c in d.iterdir() if c.is_dir()]
        except OSError:
            continue
    # v1: a memory leaf outside this process's own memory cgroup is another session's, and so are
    # the pids/cpu leaves of the same sandbox id.
    own_mem = "/sys/fs/cgroup/memory" + _own_memcg()
    other = {Path(c).name for c in cgroups if c.startswith("/sys/fs/cgroup/memory/")
             and not c.startswith(own_mem.rstrip("/") + "/")}
    cgroups = [c for c in cgroups if Path(c).name not in other]
    for ctrl in ("pids", "memory", "cpu"):
        for d in Path("/sys/fs/cgroup", ctrl).rglob("redline"):
            # (only sandbox ids: other tools may keep cgroups of their own names there)
            cgroups += [str(c) for c in d.iterdir() if c.is_dir() and re.fullmatch("[0-9a-f]{12}", c.name)]
    base = STATE_ROOT / "sandboxes"
    states = [str(p) for p in base.glob("*")] if base.exists() else []
    out = {"processes": found_procs, "mounts": mounts, "cgroups": cgroups, "state": states}
    states = _state_dirs()
    return {k: [i for i in v if _keep(i, states)] for k, v in out.items()}


def wait_clean(timeout: float = 5.0, exclude: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = {k: [i for i in v if i not in (exclude or {}).get(k, [])] for k, v in leftovers().items()}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def no_leftovers():
    """Fails the test if it leaks any sandbox process, mount, cgroup or directory."""
    sweep(STATE_ROOT)  # what dead runs left is the startup sweep's job, not this test's
    # Whatever was there already belongs to someone else (a colleague's run with its own state root):
    # a test answers only for what appears while it runs.
    before = leftovers()
    yield
    left = wait_clean(exclude=before)
    assert not any(left.values()), f"test leaked: {left}"
