"""Per-sandbox cgroups on cgroup v1 or v2 hosts, and the containment record of what they cap.

Where the v2 leaves go is `placement.py`'s business. This module resolves a layout once per
harness process and configuration (the preflight, run by the provider's task_init before any
sandbox starts), then makes one leaf per sandbox. A needed controller that cannot be had is a
clear error, unless the user opted in to weaker containment: then the sandbox runs with the
controllers there are, rlimits stand in for the missing ones, and the record says so.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redline.sandbox import placement as pl
from redline.sandbox.config import RedlineSandboxConfig, rootless
from redline.sandbox.rootfs import tmp_bytes

CONTROLLERS = pl.NEEDED
PRLIMIT = "/usr/bin/prlimit"
logger = logging.getLogger(__name__)


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
class Layout:
    """Where this harness puts sandbox cgroups, resolved once per configuration."""

    version: int
    kind: str  # v1: "nested" | "dedicated"; v2: placement kind
    parents: dict[str, Path]  # v1: controller -> parent dir; v2: {"unified": parent}
    controllers: list[str]
    missing: list[str]
    rlimits: dict[str, int] = field(default_factory=dict)
    harness_leaf: Path | None = None
    rootless: bool = False
    weaker_than_root: list[str] = field(default_factory=list)  # rootless: each thing that is weaker

    def record(self) -> dict[str, Any]:
        """The containment record (JSON-ready) that goes into the eval log."""
        rec: dict[str, Any] = {
            "cgroup": f"v{self.version}",
            "placement": self.kind,
            "parent": sorted({str(p) for p in self.parents.values()}),
            "controllers": list(self.controllers),
            "missing": list(self.missing),
            "weaker": bool(self.missing),
            "rlimits": dict(self.rlimits),
            "harness_leaf": str(self.harness_leaf) if self.harness_leaf else None,
        }
        if self.rootless:  # keys only ever added: root runs keep the record they had
            rec.update(rootless=True, weaker=True, weaker_than_root=list(self.weaker_than_root))
        return rec


_layouts: dict[tuple[Any, ...], Layout] = {}
_layouts_lock = threading.Lock()


def _rlimits(missing: list[str], cfg: RedlineSandboxConfig) -> dict[str, int]:
    """Stand-ins for missing controllers. Weaker by nature: RLIMIT_NPROC counts every process of
    the agent's uid (per user namespace), RLIMIT_AS caps each process, not the sum."""
    out = {}
    if "pids" in missing:
        out["nproc"] = cfg.pids_max
    if "memory" in missing:
        out["as_bytes"] = cfg.memory_bytes
    return out


def _v1_layout(root: Path, cfg: RedlineSandboxConfig) -> Layout:
    if cfg.cgroup_placement not in ("auto", "dedicated"):
        raise CgroupError(f"cgroup_placement={cfg.cgroup_placement!r} needs cgroup v2; {root} is "
                          "cgroup v1 (use auto or dedicated)")
    parents: dict[str, Path] = {}
    missing = []
    for c in CONTROLLERS:
        base = root / c
        if not (base / "cgroup.procs").exists():
            missing.append(c)
            continue
        own = "/" if cfg.cgroup_placement == "dedicated" else _own_v1_path(c)
        parents[c] = base / own.lstrip("/") / cfg.cgroup_name
    if missing and (not cfg.allow_weaker_containment or not parents):
        raise CgroupError(
            f"cgroup controller(s) {', '.join(missing)} not mounted under {root}; redline needs "
            f"{', '.join(CONTROLLERS)} to cap sandboxes. Mount them (e.g. `mount -t cgroup -o pids "
            f"cgroup {root}/pids`), or opt in to weaker containment (REDLINE_ALLOW_WEAKER_CONTAINMENT=1)"
            + ("" if parents else "; with none mounted there is nothing to track sandboxes with")
        )
    return Layout(1, "nested" if cfg.cgroup_placement == "auto" else "dedicated", parents,
                  [c for c in CONTROLLERS if c in parents], missing, _rlimits(missing, cfg))


def _v2_layout(root: Path, cfg: RedlineSandboxConfig) -> Layout:
    try:
        p = pl.plan(root, pl.own_cgroup(), cfg.cgroup_placement, cfg.cgroup_name,
                    cfg.allow_weaker_containment)
    except (pl.PlacementError, OSError) as e:
        raise CgroupError(str(e)) from e
    return Layout(2, p.kind, {"unified": p.parent}, p.controllers, p.missing,
                  _rlimits(p.missing, cfg), p.harness_leaf)


def _rootless_layout(root: Path, cfg: RedlineSandboxConfig) -> Layout:
    """A normal user: a cgroup v2 subtree delegated to it if there is one, else no cgroup at all
    (rlimits stand in; the pid namespace still holds every process). Never an error: the
    warning and the record say what is weaker."""
    lay: Layout | None = None
    why = "cgroup v1 host: only root may make cgroups"
    if pl.is_v2(root):
        try:
            lay = _v2_layout(root, cfg)
        except CgroupError as e:
            why = f"no cgroup v2 subtree delegated to this user ({e})"
    if lay is None:
        every = list(CONTROLLERS)
        lay = Layout(_hierarchy_version(root), "none", {}, [], every, _rlimits(every, cfg))
    lay.rootless = True
    lay.weaker_than_root = rootless_weaker(lay, cfg, why)
    return lay


def _hierarchy_version(root: Path) -> int:
    return 2 if pl.is_v2(root) else 1


# What rootless mode always gives up (README, "Running without root"); the caps come on top.
ROOTLESS_ALWAYS = [
    "one uid: the caller's own uid is the agent (uid 1000 inside); root inside does not exist, so "
    "commands the harness runs as root run as the agent",
    "/usr is shown read-only (no copy-on-write layer)",
    "/proc/sys, /proc/sysrq-trigger, /proc/irq and /proc/bus are not remounted read-only (the kernel "
    "refuses it in a user namespace made without root); they stay unwritable for the agent's uid, "
    "but for the sysctls of the sandbox's own pid and ipc namespaces (kernel/pid_max, shm*, msg*, sem)",
    "no per-sandbox host uid range: every sandbox of this user shares the caller's host uid, so "
    "kernel per-user counts charged at the host level (inotify instances and watches, ...) are "
    "shared: one sandbox can exhaust them for the user's other sandboxes and the harness",
    "the init has the agent's uid: the agent may signal it (the kernel drops signals to a pid "
    "namespace's init from inside) but not ptrace it (it is not dumpable)",
]


def rootless_weaker(lay: Layout, cfg: RedlineSandboxConfig, why: str) -> list[str]:
    out = list(ROOTLESS_ALWAYS)
    if "pids" in lay.missing:
        out.append(f"no pids cgroup ({why}): RLIMIT_NPROC={cfg.pids_max} on each command, "
                   "counting the agent uid's processes in the sandbox's user namespace")
    if "memory" in lay.missing:
        out.append(f"no memory cgroup: RLIMIT_AS={cfg.memory_bytes} per process, not for the "
                   "sandbox as a whole; its tmpfs mounts are not charged to any cap but their size")
    if "cpu" in lay.missing:
        out.append("no cpu cgroup: nothing caps the sandbox's CPU share")
    if not lay.parents:
        out.append("no cgroup to find processes by: the judge lists the sandbox init's descendants "
                   "(the pid namespace), and teardown kills its init (the kernel ends the rest)")
    out.append(f"disk cap per mount, not shared: /home {cfg.disk_bytes} B, /tmp and /var/tmp "
               f"{tmp_bytes(cfg)} B each")
    return out


def layout_for(cfg: RedlineSandboxConfig) -> Layout:
    """Resolve (once per process and config) where sandbox cgroups go; CgroupError if nowhere."""
    key = (cfg.cgroup_root, cfg.cgroup_placement, cfg.cgroup_name, cfg.allow_weaker_containment,
           cfg.pids_max, cfg.memory_bytes, cfg.disk_bytes, rootless())
    with _layouts_lock:
        if key in _layouts:
            return _layouts[key]
        root = Path(cfg.cgroup_root)
        if rootless():
            lay = _rootless_layout(root, cfg)
            logger.warning("redline: ROOTLESS MODE, WEAKER CONTAINMENT than as root:\n  - %s",
                           "\n  - ".join(lay.weaker_than_root))
        else:
            lay = _v2_layout(root, cfg) if pl.is_v2(root) else _v1_layout(root, cfg)
        if lay.missing and not lay.rootless:
            logger.warning("redline: WEAKER CONTAINMENT (opted in): no cgroup %s controller; "
                           "rlimits instead: %s", ", ".join(lay.missing), lay.rlimits or "none")
        _layouts[key] = lay
        return lay


def preflight(cfg: RedlineSandboxConfig) -> dict[str, Any]:
    """Check (before any sandbox starts) that sandboxes can be capped; returns the containment record."""
    return layout_for(cfg).record()


@dataclass
class Cgroups:
    """The cgroup directories of one sandbox; every process of the sandbox lives in all of them."""

    dirs: list[Path] = field(default_factory=list)
    version: int = 1
    layout: Layout | None = None

    @classmethod
    def for_sandbox(cls, cfg: RedlineSandboxConfig, name: str) -> Cgroups:
        lay = layout_for(cfg)
        return cls([p / name for p in lay.parents.values()], version=lay.version, layout=lay)

    @property
    def containment(self) -> dict[str, Any]:
        return self.layout.record() if self.layout else {"cgroup": "none", "weaker": True}

    @property
    def rlimits(self) -> dict[str, int]:
        return dict(self.layout.rlimits) if self.layout else {}

    def create(self, pids_max: int, memory_bytes: int, cpu_weight: int) -> None:
        try:
            for d in self.dirs:
                d.mkdir(parents=self.version == 1, exist_ok=True)
            if self.version == 2:
                self._write("pids.max", str(pids_max), optional="pids")
                self._write("memory.max", str(memory_bytes), optional="memory")
                self._write("memory.swap.max", "0", optional=True)
                self._write("cpu.weight", str(cpu_weight), optional="cpu")
            else:
                self._write("pids.max", str(pids_max), optional="pids")
                self._write("memory.limit_in_bytes", str(memory_bytes), optional="memory")
                self._write("memory.memsw.limit_in_bytes", str(memory_bytes), optional=True)
                self._write("memory.swappiness", "0", optional=True)
                self._write("cpu.shares", str(max(2, cpu_weight * 1024 // 100)), optional="cpu")
        except OSError as e:
            self.remove()
            raise CgroupError(f"cannot set up sandbox cgroups: {e}") from e

    def _write(self, name: str, value: str, optional: bool | str = False) -> None:
        """Write a control file; `optional` True, or a controller that the layout lacks, may skip it."""
        for d in self.dirs:
            f = d / name
            if f.exists():
                f.write_text(value)
                return
        if isinstance(optional, str):
            optional = self.layout is not None and optional in self.layout.missing
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

    def events(self) -> dict[str, int | None]:
        """Counters of the caps firing: OOM kills, allocations that hit the memory cap, forks refused
        by the pids cap. None: not measured (no such controller). Read them before remove()."""
        out: dict[str, int | None] = {"oom_kill": None, "memory_max": None, "pids_max": None}
        for d in self.dirs:
            mem = _keyed(d / ("memory.events" if self.version == 2 else "memory.oom_control"))
            if "oom_kill" in mem:
                out["oom_kill"] = mem["oom_kill"]
            if self.version == 2 and "max" in mem:
                out["memory_max"] = mem["max"]
            fail = _int(d / "memory.failcnt")
            if fail is not None:
                out["memory_max"] = fail
            pids = _keyed(d / "pids.events")
            if "max" in pids:
                out["pids_max"] = pids["max"]
        return out

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every member until none is left; works even when pids.max is exhausted."""
        for d in self.dirs:
            try:
                (d / "cgroup.kill").write_text("1")  # v2, kernel 5.14+: the whole tree at once
            except OSError:
                pass
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
        remove_dirs(self.dirs)


def remove_dirs(dirs: list[Path], tries: int = 200) -> None:
    for d in dirs:
        for _ in range(tries):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                # Exiting tasks linger a moment after SIGKILL.
                time.sleep(0.005)


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" per line) as a dict; {} if unreadable."""
    out: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def join_prefix(procs_files: list[str], rlimits: dict[str, int] | None = None) -> list[str]:
    """argv prefix that moves itself into the sandbox's cgroups, then execs the rest.

    A host /bin/sh does the joining because a Python preexec_fn forces a full fork of the
    harness (~4 ms here) where vfork is otherwise used. Only our own paths go into the script;
    the command itself travels as "$@". `rlimits` (weaker containment only) add util-linux
    prlimit after the script, so only commands get them: argv[2] alone is the joining script.
    """
    writes = "".join(f"echo $$ > {shlex.quote(p)} && " for p in procs_files)
    return ["/bin/sh", "-c", writes + 'exec "$@"', "sbx-join", *rlimit_prefix(rlimits)]


def rlimit_prefix(rlimits: dict[str, int] | None) -> list[str]:
    """util-linux prlimit in front of a command: the stand-ins for missing controllers (weaker
    containment only; empty otherwise)."""
    if not rlimits:
        return []
    argv = [PRLIMIT]
    if "nproc" in rlimits:
        argv.append(f"--nproc={rlimits['nproc']}")
    if "as_bytes" in rlimits:
        argv.append(f"--as={rlimits['as_bytes']}")
    return [*argv, "--"]
