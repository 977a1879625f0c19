"""Remove what dead harnesses left behind: processes, cgroups, mounts and state directories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from redline.sandbox import idmap, procs, rootfs


def _owner_alive(state: Path) -> bool:
    try:
        pid_s, start_s = (state / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    st = procs.read_stat(int(pid_s))
    return st is not None and str(st[1]) == start_s


def remove_sandbox(state: Path) -> None:
    dirs: list[Path] = []
    try:
        dirs = [Path(d) for d in json.loads((state / "cgroups").read_text())]
    except (OSError, ValueError):
        pass
    deadline = time.monotonic() + 5
    pids: set[int] = set()
    while time.monotonic() < deadline:
        pids = set()
        for d in dirs:
            try:
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    for d in dirs:
        for _ in range(100):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)
    rootfs.umount_lazy(state / "rw")
    try:  # the sandbox's uid range, once nothing runs in it any more
        if not pids:
            idmap.release_stale(Path((state / "idmap").read_text()))
    except OSError:
        pass
    shutil.rmtree(state, ignore_errors=True)


def sweep(state_root: Path, only_id: str | None = None) -> list[str]:
    """Clean sandboxes whose owning harness is gone (or exactly `only_id`). Returns their ids."""
    base = Path(state_root) / "sandboxes"
    if not base.is_dir():
        return []
    removed = []
    for state in sorted(base.iterdir()):
        if only_id is not None:
            if state.name != only_id:
                continue
        elif _owner_alive(state):
            continue
        remove_sandbox(state)
        removed.append(state.name)
    return removed


def live_sandboxes(state_root: Path) -> list[str]:
    base = Path(state_root) / "sandboxes"
    if not base.is_dir():
        return []
    return [s.name for s in sorted(base.iterdir()) if _owner_alive(s)]
