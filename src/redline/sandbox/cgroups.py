"""Per-sandbox cgroups (v1 here, v2 where the unified hierarchy has the controllers)."""

from __future__ import annotations

import os
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("pids", "memory", "cpu")


class CgroupError(RuntimeError):
    pass


def _own_v1_path(controller: str) -> str:
    # Nest under the harness's own cgroup so the host's limits still apply above ours.
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    return "/"


@dataclass
class Cgroups:
    """The cgroup directories of one sandbox; every process of the sandbox lives in all of them."""

    dirs: list[Path] = field(default_factory=list)
    version: int = 1

    @classmethod
    def locate(cls, root: str, name: str) -> Cgroups:
        rootp = Path(root)
        if (rootp / "cgroup.controllers").exists():
            avail = (rootp / "cgroup.controllers").read_text().split()
            missing = [c for c in CONTROLLERS if c not in avail]
            if missing:
                raise CgroupError(
                    f"cgroup v2 at {root} lacks controller(s) {', '.join(missing)}; "
                    "enable them in cgroup.subtree_control or run as root on a host that has them"
                )
            own = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
            return cls([rootp / own.lstrip("/") / "redline" / name], version=2)
        dirs = []
        for c in CONTROLLERS:
            base = rootp / c
            if not (base / "cgroup.procs").exists():
                raise CgroupError(
                    f"cgroup controller '{c}' is not mounted at {base}; redline needs "
                    f"{', '.join(CONTROLLERS)} to cap sandboxes"
                )
            dirs.append(base / _own_v1_path(c).lstrip("/") / "redline" / name)
        return cls(dirs, version=1)

    def create(self, pids_max: int, memory_bytes: int, cpu_weight: int) -> None:
        try:
            for d in self.dirs:
                d.mkdir(parents=True, exist_ok=True)
            if self.version == 2:
                parent = self.dirs[0].parent
                sub = parent / "cgroup.subtree_control"
                if sub.exists():
                    sub.write_text(" ".join(f"+{c}" for c in CONTROLLERS))
                self._write("pids.max", str(pids_max))
                self._write("memory.max", str(memory_bytes))
                self._write("memory.swap.max", "0", optional=True)
                self._write("cpu.weight", str(cpu_weight))
            else:
                self._write("pids.max", str(pids_max))
                self._write("memory.limit_in_bytes", str(memory_bytes))
                self._write("memory.memsw.limit_in_bytes", str(memory_bytes), optional=True)
                self._write("memory.swappiness", "0", optional=True)
                self._write("cpu.shares", str(max(2, cpu_weight * 1024 // 100)))
        except OSError as e:
            self.remove()
            raise CgroupError(f"cannot set up sandbox cgroups: {e}") from e

    def _write(self, name: str, value: str, optional: bool = False) -> None:
        for d in self.dirs:
            f = d / name
            if f.exists():
                f.write_text(value)
                return
        if not optional:
            raise CgroupError(f"cgroup file {name} not found under {self.dirs}")

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(out)

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every member until none is left; works even when pids.max is exhausted."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise CgroupError(f"processes {pids} survived SIGKILL in {self.dirs[0]}")
            time.sleep(0.002)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Exiting tasks linger a moment after SIGKILL.
                    time.sleep(0.005)


def join_prefix(procs_files: list[str]) -> list[str]:
    """argv prefix that moves itself into the sandbox's cgroups, then execs the rest.

    A host /bin/sh does the joining because a Python preexec_fn forces a full fork of the
    harness (~4 ms here) where vfork is otherwise used. Only our own paths go into the script;
    the command itself travels as "$@".
    """
    writes = "".join(f"echo $$ > {shlex.quote(p)} && " for p in procs_files)
    return ["/bin/sh", "-c", writes + 'exec "$@"', "sbx-join"]
