"""Remove what dead harnesses left behind: processes, cgroups, mounts and state directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from redline.sandbox import idmap, procs, rootfs
from redline.sandbox.cgroups import CgroupError, Cgroups
from redline.sandbox.config import rootless


def _owner_alive(state: Path) -> bool:
    try:
        pid_s, start_s = (state / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    st = procs.read_stat(int(pid_s))
    return st is not None and str(st[1]) == start_s


def remove_sandbox(state: Path) -> None:
    """Kill what is left in the sandbox's cgroups (v1 or v2, wherever they were placed), remove
    them, unmount and delete the state directory."""
    dirs: list[Path] = []
    try:
        dirs = [Path(d) for d in json.loads((state / "cgroups").read_text())]
    except (OSError, ValueError):
        pass
    cg = Cgroups(dirs)
    emptied = True
    try:
        cg.kill_all()
    except CgroupError:
        emptied = False  # removal below fails for a cgroup still in use; the next sweep tries again
    cg.remove()
    if not rootless():  # rootless, rw/ is a plain directory (and umount is root's)
        rootfs.umount_lazy(state / "rw")
    if any(d.exists() for d in dirs):
        return  # keep the record: a later sweep retries these cgroups
    try:  # the sandbox's uid range, once nothing runs in it any more
        if emptied:
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
