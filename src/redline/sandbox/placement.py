"""Where the sandboxes' cgroups go on a cgroup v2 host, and which caps that placement gives.

One rule of cgroup v2 decides everything here: a cgroup that holds processes cannot hand
controllers to its children ("no internal processes"; only the root of the hierarchy is exempt).
So sandboxes can never live under the harness's own cgroup as it is. Three placements work:

- dedicated  <mount>/<name>/<id>: a cgroup of redline's own right under the root of the hierarchy
             (root on the host: plain v2, or under systemd, which leaves foreign top-level cgroups
             alone). The root may enable any controller the kernel has.
- delegated  <D>/<name>/<id>, where D is a cgroup handed to us: a container's cgroup-namespace
             root, a systemd unit with Delegate=yes, a non-root user's delegated scope. D's
             processes (the harness among them) first move into the leaf <D>/redline-init; only
             then may D enable controllers for the sibling <D>/<name>.
- explicit   <path>/<id>: a cgroup the administrator prepared (must hold no processes).

Everything here reads and writes plain files, so the logic also runs on a directory shaped like
a v2 hierarchy (the unit tests); the kernel's own checks then happen on a real one.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

NEEDED = ("pids", "memory", "cpu")
INIT_LEAF = "redline-init"
EVACUATE_ROUNDS = 20


class PlacementError(RuntimeError):
    pass


@dataclass
class Placement:
    """The cgroup that holds one leaf per sandbox, and what those leaves get."""

    kind: str  # "dedicated" | "delegated" | "explicit"
    parent: Path
    controllers: list[str]  # of NEEDED, enabled for the leaves
    missing: list[str]  # of NEEDED, not to be had here
    harness_leaf: Path | None = None  # where the harness was moved (delegated)
    moved: list[int] = field(default_factory=list)


@dataclass
class _Candidate:
    kind: str
    base: Path  # the cgroup whose subtree_control must enable the controllers
    parent: Path  # base/<name>, or base itself (explicit)
    may_move: bool  # may its processes be moved into base/redline-init


def tokens(path: Path) -> list[str]:
    """Controller names in a cgroup.controllers/subtree_control file ("+x" accepted); [] if unreadable."""
    try:
        return [t.lstrip("+") for t in path.read_text().split() if not t.startswith("-")]
    except OSError:
        return []


def is_v2(mount: Path) -> bool:
    return (mount / "cgroup.controllers").is_file()


def is_hierarchy_root(cg: Path) -> bool:
    """The true root of the hierarchy has no cgroup.type (a cgroup namespace's root does)."""
    return not (cg / "cgroup.type").exists()


def own_cgroup(proc_cgroup: str | None = None) -> str:
    """The harness's v2 cgroup path ("0::/a/b" in /proc/self/cgroup), relative to its namespace."""
    text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return "/"


def delegated_base(mount: Path, own: str) -> Path | None:
    """The cgroup handed to the harness: its own, or the one above it once it moved into our leaf."""
    d = mount / own.strip("/")
    if d.name == INIT_LEAF and d != mount:
        d = d.parent
    return d if d.is_dir() else None


def _marked_delegated(cg: Path) -> bool:
    """systemd marks the cgroups it delegates (Delegate=yes) with an xattr; a user owns those
    delegated to it."""
    for attr in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(cg, attr).strip(b"\0") in (b"1", b"yes"):
                return True
        except OSError:
            pass
    try:
        return os.geteuid() != 0 and cg.stat().st_uid == os.geteuid()
    except OSError:
        return False


def candidates(mount: Path, own: str, mode: str, name: str) -> list[_Candidate]:
    """The placements worth trying, best first. `mode`: auto, dedicated, delegated or a path."""
    if mode.startswith("/"):
        return [_Candidate("explicit", Path(mode), Path(mode), may_move=False)]
    base = delegated_base(mount, own)
    dedicated = _Candidate("dedicated", mount, mount / name, may_move=False)
    delegated = [_Candidate("delegated", base, base / name, may_move=True)] if base else []
    if mode == "dedicated":
        return [dedicated]
    if mode == "delegated":
        return delegated
    if base == mount:
        # Plain host (the harness in the root cgroup): no moving needed or wanted. Container: its
        # namespace root is ours, and it holds processes that must move first.
        return [dedicated] if is_hierarchy_root(mount) else delegated
    out = [c for c in delegated if _marked_delegated(c.base)]
    if os.access(mount / "cgroup.subtree_control", os.W_OK):
        out.append(dedicated)
    return out


def offered(c: _Candidate, need: tuple[str, ...] = NEEDED) -> list[str]:
    avail = tokens(c.base / "cgroup.controllers")
    return [x for x in need if x in avail]


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _evacuate(base: Path, leaf: Path) -> list[int]:
    """Move every process of `base` into `leaf` (new ones may fork meanwhile: a few rounds)."""
    leaf.mkdir(exist_ok=True)
    moved: list[int] = []
    for _ in range(EVACUATE_ROUNDS):
        pids = [int(p) for p in tokens(base / "cgroup.procs")]
        pids = [p for p in pids if p not in moved]
        if not pids:
            break
        for pid in pids:
            try:
                _write(leaf / "cgroup.procs", str(pid))
                moved.append(pid)
            except OSError as e:
                if e.errno not in (errno.ESRCH, errno.EINVAL):  # gone, or a kernel thread
                    raise
    return moved


def _enable(cg: Path, want: list[str]) -> None:
    todo = [x for x in want if x not in tokens(cg / "cgroup.subtree_control")]
    if todo:
        _write(cg / "cgroup.subtree_control", " ".join(f"+{x}" for x in todo))


def prepare(c: _Candidate, want: list[str]) -> Placement:
    """Make `c` ready for sandbox leaves with the controllers `want` (a subset of what it offers)."""
    placement = Placement(c.kind, c.parent, list(want), [])
    missing_below = [x for x in want if x not in tokens(c.base / "cgroup.subtree_control")]
    if missing_below and c.may_move and not is_hierarchy_root(c.base):
        leaf = c.base / INIT_LEAF
        for _ in range(3):
            placement.moved += _evacuate(c.base, leaf)
            placement.harness_leaf = leaf
            try:
                _enable(c.base, want)
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.01)  # a process forked into base meanwhile: move it too
    else:
        _enable(c.base, want)
    c.parent.mkdir(exist_ok=True)
    _enable(c.parent, want)
    return placement


def plan(mount: Path, own: str, mode: str, name: str, allow_weaker: bool,
         need: tuple[str, ...] = NEEDED) -> Placement:
    """Choose and prepare a placement: the first that has every needed controller, else (opt-in
    only) the one with the most. Raises PlacementError saying what is missing and how to fix it."""
    cands = candidates(mount, own, mode, name)
    if not cands:
        raise PlacementError(no_candidate_text(mount, own, mode))
    ranked = sorted(cands, key=lambda c: -len(offered(c, need)))  # stable: preference kept on ties
    full = [c for c in cands if len(offered(c, need)) == len(need)]
    if not full and not allow_weaker:
        raise PlacementError(missing_text(mount, cands, need))
    failures: list[str] = []
    for c in full or ranked:
        want = offered(c, need)
        try:
            p = prepare(c, want)
        except OSError as e:
            failures.append(f"{c.kind} placement under {c.base}: {e}")
            continue
        p.missing = [x for x in need if x not in want]
        return p
    raise PlacementError("cannot set up a cgroup for the sandboxes: " + "; ".join(failures)
                         + ". " + FIX_HINT)


FIX_HINT = (
    "Fixes: run as root on the host (redline then makes its own cgroup at the root of the "
    "hierarchy); or start it in a delegated cgroup: `systemd-run --scope -p Delegate=yes "
    "inspect eval ...` (as a user: `systemd-run --user --scope -p Delegate=yes ...`; the user's "
    "manager must delegate the controllers: `systemctl edit user@.service` with "
    "`[Service] Delegate=pids memory cpu`); in a container: a private cgroup namespace with the "
    "controllers delegated (docker/podman --cgroupns=private on a v2 host). Or accept weaker "
    "containment explicitly: REDLINE_ALLOW_WEAKER_CONTAINMENT=1 (sandbox config "
    "allow_weaker_containment: true) runs with the controllers there are, plus rlimits, and "
    "records it in the log."
)


def missing_text(mount: Path, cands: list[_Candidate], need: tuple[str, ...]) -> str:
    parts = []
    for c in cands:
        if not c.base.is_dir():
            parts.append(f"{c.kind} placement: {c.base} does not exist")
            continue
        lack = [x for x in need if x not in offered(c, need)]
        have = " ".join(tokens(c.base / "cgroup.controllers")) or "none"
        parts.append(f"{c.kind} placement under {c.base} lacks {', '.join(lack)} "
                     f"(its cgroup.controllers: {have})")
    top = tokens(mount / "cgroup.controllers") if is_hierarchy_root(mount) else list(need)
    kernel = [x for x in need if x not in top]
    if kernel:  # not even the root of the hierarchy has them: no placement can help
        parts.append(f"the kernel itself offers no {', '.join(kernel)} controller: boot without "
                     f"`cgroup_disable=` for it (see /proc/cmdline) or use a kernel built with it")
    return ("cgroup v2: no placement offers every controller redline caps sandboxes with "
            f"({', '.join(need)}): " + "; ".join(parts) + ". " + FIX_HINT)


def no_candidate_text(mount: Path, own: str, mode: str) -> str:
    if mode == "delegated":
        why = f"the harness's cgroup {own} was not found under {mount}"
    else:
        why = (f"the harness's cgroup {own} is not delegated to it and the root of the hierarchy "
               f"({mount}) is not writable")
    return f"cgroup v2: nowhere to put sandbox cgroups: {why}. {FIX_HINT}"
