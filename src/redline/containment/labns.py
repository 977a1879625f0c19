"""A throwaway lab in which the escape suite may run against Inspect's `local` sandbox.

`local` contains nothing: every case that breaches it really does what it attempts. So the run
happens where that cannot matter: fresh user, mount, network, pid, uts and ipc namespaces, as an
unused unprivileged host uid mapped to root inside, with private /tmp, /var/tmp and /dev/shm, its own
cgroups (pids and memory capped) and an address-space limit. The lab's network namespace gets a
veth pair with a default route (going nowhere), so that "only lo" and "no route" have something
to flag. When the lab's first process exits, the kernel ends everything else in it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LAB_ENV = "REDLINE_ESCAPE_LAB"
ADDRESS_SPACE = 4 << 30
BOOT = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({a}, {a})); "
        "from redline.selfcheck import main; raise SystemExit(main(sys.argv[1:]))")
NET = ("ip link set lo up && ip link add rl-lab0 type veth peer name rl-lab1 && "
       "ip addr add 10.253.0.1/24 dev rl-lab0 && ip link set rl-lab0 up && ip link set rl-lab1 up && "
       "ip route add default via 10.253.0.2 dev rl-lab0 && "
       "ip -6 addr add fd00:253::1/64 dev rl-lab0 nodad && "
       "ip -6 route add default via fd00:253::2 dev rl-lab0")


def in_lab() -> bool:
    """True inside a lab: a user namespace (not the host's) and the lab's marker variable."""
    try:
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return os.environ.get(LAB_ENV) == "1" and first[:3] != ["0", "0", "4294967295"]


def _searchable(d: Path) -> bool:
    try:
        return bool(d.stat().st_mode & 0o001)
    except OSError:
        return False


def _hidden_top(path: str) -> str | None:
    """The topmost ancestor of `path` that an unrelated user cannot walk through, if any."""
    p = Path(path)
    for d in reversed([p, *p.parents]):
        if not _searchable(d):
            return str(d)
    return None


def _python_dirs() -> list[str]:
    """The folders this Python needs: its installation, its environment, its import path."""
    dirs = {os.path.realpath(d) for d in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))}
    dirs |= {os.path.realpath(d) for d in sys.path if d and os.path.isdir(d)}
    ordered = sorted(dirs)
    return [d for i, d in enumerate(ordered) if not any(d.startswith(o + "/") for o in ordered[:i])]


def reveal_commands(dirs: list[str]) -> list[str]:
    """Shell commands (root, in a private mount namespace) that make `dirs` reachable for any user
    at their own paths: each hidden ancestor (e.g. /root, mode 0700) is covered by an empty 0755
    tmpfs into which only the needed folders are bound back. Nothing else of it shows."""
    hidden: dict[str, list[str]] = {}
    for d in dirs:
        top = _hidden_top(d)
        if top == d:
            raise PermissionError(f"{d} is not searchable by other users; the lab cannot use it")
        if top is not None:
            hidden.setdefault(top, []).append(d)
    cmds = []
    for top, needed in hidden.items():
        pairs = [(shlex.quote(d), f"/tmp/.lab/{len(cmds)}-{i}") for i, d in enumerate(needed)]
        cmds += [f"mkdir -p {st} && mount --bind {d} {st}" for d, st in pairs]
        cmds.append(f"mount -t tmpfs -o mode=755,size=1m rl-lab {shlex.quote(top)}")
        cmds += [f"mkdir -p {d} && mount --move {st} {d}" for d, st in pairs]
    return cmds


# The folders the lab's user could write on the host, each covered by a private tmpfs of this size.
PRIVATE = {"/tmp": "1g", "/var/tmp": "64m", "/dev/shm": "64m"}


def private_commands(dirs: list[str]) -> list[str]:
    """Shell commands (root, in a private mount namespace) that cover each folder of PRIVATE with a
    fresh tmpfs. Python folders below one of them (a checkout in /tmp) are bound back at their own
    paths, reached through a descriptor of the old folder taken before the tmpfs covers it; the
    descriptors are closed before anything of the lab runs."""
    cmds, opened = [], []
    for fd, (top, size) in enumerate(PRIVATE.items(), start=7):
        below = [d for d in dirs if d.startswith(top + "/")]
        if below:
            cmds.append(f"exec {fd}<{top}")
            opened.append(fd)
        cmds.append(f"mount -t tmpfs -o mode=1777,size={size} rl-lab {top}")
        for d in below:
            old = f"/proc/self/fd/{fd}/{d[len(top) + 1:]}"
            # (not canonicalized: mount would resolve the descriptor's link to the covered path)
            cmds.append(f"mkdir -p {shlex.quote(d)} && mount --no-canonicalize --bind {shlex.quote(old)} "
                        + shlex.quote(d))
    return cmds + [f"exec {fd}<&-" for fd in opened]


def lab_command(args: list[str], uid: int) -> list[str]:
    """argv (run as root) that runs `redline.selfcheck ARGS` inside a fresh lab."""
    dirs = _python_dirs()
    setup = [*private_commands(dirs), *reveal_commands(dirs)]
    boot = BOOT.format(a=ADDRESS_SPACE)
    inner = f"{NET} && cd /tmp && exec {shlex.quote(sys.executable)} -c {shlex.quote(boot)} " + " ".join(
        shlex.quote(a) for a in args)
    outer = " && ".join(setup) + (
        f" && exec setpriv --reuid={uid} --regid={uid} --clear-groups -- unshare --user --map-root-user "
        "--mount --net --pid --fork --mount-proc --uts --ipc --kill-child -- "
        f"/bin/sh -c {shlex.quote(inner)}")
    return ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", "--",
            "/bin/sh", "-c", outer]


@dataclass
class LabRun:
    returncode: int
    stdout: str
    cgroups: list[str]  # the lab's cgroups: gone afterwards, with every process that was in them


def run_in_lab(args: list[str], timeout: float) -> LabRun:
    """Run `redline.selfcheck ARGS` in a fresh lab; its stdout comes back, its stderr passes through."""
    from redline.sandbox.cgroups import Cgroups, join_prefix
    from redline.sandbox.config import RedlineSandboxConfig

    if os.geteuid() != 0:
        raise PermissionError("the lab needs root (it makes namespaces and cgroups)")
    uid = 200000 + secrets.randbelow(100000)
    # Placed like a sandbox's cgroups (v1 or v2, whatever this host offers), but never weaker: the
    # lab lets real attacks through, so without caps it must not run at all.
    caps = RedlineSandboxConfig(pids_max=4096, memory_bytes=6 << 30, allow_weaker_containment=False)
    cg = Cgroups.for_sandbox(caps, f"lab-{secrets.token_hex(6)}")
    cg.create(pids_max=caps.pids_max, memory_bytes=caps.memory_bytes, cpu_weight=caps.cpu_weight)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", LAB_ENV: "1",
           "REDLINE_LAB_CANARY": secrets.token_hex(12)}
    if "REDLINE_TIME_SCALE" in os.environ:
        env["REDLINE_TIME_SCALE"] = os.environ["REDLINE_TIME_SCALE"]
    try:
        r = subprocess.run([*join_prefix(cg.procs_files()), *lab_command(args, uid)], env=env, text=True,
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout,
                           start_new_session=True)
    finally:
        cg.kill_all()
        cg.remove()
    return LabRun(r.returncode, r.stdout, [str(d) for d in cg.dirs])
