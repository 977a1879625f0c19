"""Shared test set-up: the scripted test policies, isolated state roots, the leftovers check, and
hang guards scaled to the machine's load.

Isolation from other redline runs on the same host (a colleague's tests, an eval): every test runs
its sandboxes under a state root of its own (`REDLINE_STATE_ROOT`, a fresh short directory; tests
that build a `RedlineSandboxConfig` themselves take it from `tests.helpers.sandbox_config`), and
the leftovers check looks only at what this test process created: each sandbox's recorded cgroup
directories and init process, the mounts under its state directory, and the processes in those
cgroups. Nothing host-global (not /run/redline, not other `redline` cgroups) is asserted on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from redline.sandbox import Sandbox, link
from redline.scenarios.common import STATE_ROOT_ENV
from tests import fakes, policies
from tests.helpers import TIME_SCALE, scaled


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    fakes.register()
    policies.register()
    # Short: a sandbox's model socket lives under it, and Unix socket paths are limited to 108 bytes.
    root = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    config.stash[_SESSION_ROOT] = root
    os.environ[STATE_ROOT_ENV] = root  # module-scoped fixtures run their sandboxes here


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(_SESSION_ROOT, None)
    # What a leaking test left stays for `redline cleanup --state-root` (and for a look).
    if root and not any(_sandbox_dirs(r) for r in [Path(root), *Path(root).glob("t-*")]):
        shutil.rmtree(root, ignore_errors=True)


# Rough wall seconds of the longest test files (CI on the 2-core box, 2026-11-30; the summary's
# "slowest files" gives the current figures). They run first, so that the two xdist workers end
# together: xdist's own order (most tests first, `--no-loadscope-reorder` turns it off) left the long
# files with few tests for the end. Files not listed are short and keep their order after these.
FILE_SECONDS = {
    "tests/test_full_mode_judge.py": 460, "tests/test_scenarios.py": 400,
    "tests/test_self_replication.py": 350, "tests/test_rootless.py": 330, "tests/test_cgroups_vm.py": 300,
    "tests/test_remote_replication.py": 250, "tests/test_full_mode.py": 240, "tests/test_grid_ray.py": 230,
    "tests/test_grid.py": 180, "tests/test_full_mode_shutdown.py": 150, "tests/test_report_real_runs.py": 150,
    "tests/test_hostile_scenarios.py": 140, "tests/test_transcript.py": 120,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hang guards (pytest-timeout) grow with the machine's load; they are not speed tests. The
    longest files come first (FILE_SECONDS); the order within a file stays."""
    default = float(config.getini("timeout") or 300)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker and marker.args else default
        item.add_marker(pytest.mark.timeout(round(seconds * TIME_SCALE)), append=False)
    items.sort(key=lambda item: -FILE_SECONDS.get(item.nodeid.split("::")[0], 0))


_FILE_TIMES: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::")[0]
    _FILE_TIMES[path] = _FILE_TIMES.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Wall seconds per test file (setup, call and teardown): what FILE_SECONDS should say."""
    if not _FILE_TIMES:
        return
    terminalreporter.section("slowest files")
    for path, seconds in sorted(_FILE_TIMES.items(), key=lambda kv: -kv[1])[:20]:
        terminalreporter.write_line(f"{seconds:8.1f}s {path}")


_SESSION_ROOT = pytest.StashKey[str]()
_config: pytest.Config | None = None


def session_root() -> Path:
    """The test session's own state root: where module-scoped fixtures (and processes they start,
    such as a Ray cluster) run their sandboxes."""
    assert _config is not None
    return Path(_config.stash[_SESSION_ROOT])


# ------------------------------------------------------------------------------ what we created
@dataclass
class Trace:
    """One sandbox this test process created, as it recorded itself."""

    id: str
    state: Path
    cgroup_dirs: list[Path] = field(default_factory=list)
    init_pid: int = 0
    init_created: float | None = None


_created: list[Trace] = []
_checked = 0  # traces before this index were found clean (or reported) already


def _trace(sb: Sandbox) -> Trace:
    t = Trace(sb.id, sb.state, list(sb.cgroups.dirs) if sb.cgroups else [], sb.init_pid)
    try:
        t.init_created = psutil.Process(sb.init_pid).create_time() if sb.init_pid else None
    except psutil.Error:
        pass
    return t


@pytest.fixture(scope="session", autouse=True)
def trace_sandboxes() -> Iterator[None]:
    """Record every sandbox created in this process, whether or not its creation succeeded."""
    start = Sandbox._start

    def traced(self: Sandbox) -> None:
        try:
            start(self)
        finally:
            _created.append(_trace(self))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Sandbox, "_start", traced)
        yield


def _sandbox_dirs(root: Path) -> list[Path]:
    base = root / "sandboxes"
    return sorted(base.iterdir()) if base.is_dir() else []


def _recorded_by_state(state: Path) -> Trace:
    """What a sandbox state directory (maybe made by a child process) records about itself."""
    t = Trace(state.name, state)
    try:
        t.cgroup_dirs = [Path(d) for d in json.loads((state / "cgroups").read_text())]
        t.init_pid = int(json.loads((state / "info.json").read_text())["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return t


def _alive(pid: int, created: float | None) -> bool:
    """Is the process that was `pid` at `created` still there (not a later one with its pid)?"""
    if pid <= 0 or created is None:
        return False
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.Error:
        return False


def _members(cgroup: Path) -> list[str]:
    try:
        return (cgroup / "cgroup.procs").read_text().split()
    except OSError:
        return []


def leftovers(traces: list[Trace], roots: list[Path]) -> dict[str, list[str]]:
    """What is left of these sandboxes and of the sandboxes recorded under these state roots."""
    traces = traces + [_recorded_by_state(s) for r in roots for s in _sandbox_dirs(r)]
    left: dict[str, list[str]] = {"processes": [], "mounts": [], "cgroups": [], "state": [], "plumbing": []}
    for t in traces:
        if _alive(t.init_pid, t.init_created):
            left["processes"].append(f"{t.id}: init pid {t.init_pid}")
        for d in t.cgroup_dirs:
            if d.is_dir():
                left["cgroups"].append(str(d))
                left["processes"] += [f"{t.id}: pid {p} in {d}" for p in _members(d)]
        if t.state.exists():
            left["state"].append(str(t.state))
    # Links between sandboxes and host-owned listeners (redline.sandbox.link) this process opened.
    left["plumbing"] = link.open_plumbing()
    places = [str(t.state) for t in traces] + [str(r) for r in roots]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if any(point == p or point.startswith(p + "/") for p in places):
            left["mounts"].append(point)
    return {k: sorted(set(v)) for k, v in left.items()}


def wait_clean(traces: list[Trace], roots: list[Path], timeout: float = 5.0) -> dict[str, list[str]]:
    """Leftovers once teardown had time to finish (it is asynchronous in places)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        left = leftovers(traces, roots)
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def state_root(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A state root of this test's own, as `$REDLINE_STATE_ROOT`."""
    root = Path(tempfile.mkdtemp(prefix="t-", dir=request.config.stash[_SESSION_ROOT]))
    monkeypatch.setenv(STATE_ROOT_ENV, str(root))
    yield root
    if not _sandbox_dirs(root):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def no_leftovers(state_root: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test if anything of the sandboxes this process made (since the last check: a
    module fixture's runs included) is left: process, mount, cgroup or state directory."""
    global _checked
    session_root = Path(request.config.stash[_SESSION_ROOT])
    before = wait_clean(_created[_checked:], [session_root])
    _checked = len(_created)
    assert not any(before.values()), f"leftovers of earlier runs (module fixtures): {before}"
    yield
    left = wait_clean(_created[_checked:], [state_root, session_root])
    _checked = len(_created)
    assert not any(left.values()), f"test leaked: {left}"
