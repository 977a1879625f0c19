"""Host-side observations the cases make: processes by marker, mounts, cgroups, keys by uid."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def pids_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (our markers are unique per run)."""
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            out.append(int(d))
    return out


def pids_named(prefix: str) -> list[int]:
    """Host pids whose argv[0] starts with `prefix`: the marked processes themselves (`exec -a
    MARKER`), not the short-lived shells whose scripts merely mention the marker."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv0 = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.startswith(prefix.encode()):
            out.append(int(d))
    return out


def detached(marker: str, seconds: int = 30) -> str:
    """Agent shell for a process named `marker` that leaves the command's session and pipes."""
    return f"(setsid bash -c 'exec -a {marker} sleep {seconds}' </dev/null >/dev/null 2>&1 &)"


def shadow_users_in(text: str) -> list[str]:
    """Users whose line of the host's /etc/shadow appears in `text`."""
    try:
        lines = [line for line in Path("/etc/shadow").read_text().splitlines() if ":" in line]
    except OSError:
        return []
    return [line.split(":", 1)[0] for line in lines if line in text]


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def umount_all_with(source: str) -> list[str]:
    """Mount points (in the harness's mount table) whose source is `source`; each is unmounted."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 2 and fields[1] == source:
            found.append(left.split()[4])
    for target in reversed(found):
        _libc.umount2(target.encode(), 2)
    return found


def cgroup_paths(pid: int) -> dict[str, str]:
    """controller(s) -> path, from /proc/PID/cgroup as the host sees it."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            out[ctrls or "unified"] = path
    except OSError:
        pass
    return out


def host_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


_KEY_READ = """
import ctypes, platform, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = 219 if platform.machine() in ("aarch64", "arm64") else 250
kid = int(sys.argv[1])
buf = ctypes.create_string_buffer(256)
n = libc.syscall(nr, 11, kid, buf, 256)  # KEYCTL_READ
if n >= 0:
    print(buf.raw[:n].decode(errors="replace"))
libc.syscall(nr, 21, kid)  # KEYCTL_INVALIDATE: the case cleans up what it made
"""


def read_key_as(uid: int, key_id: int) -> str | None:
    """The payload of key `key_id` as a host process of user `uid` reads it (the key is then
    invalidated). None when that user cannot read it (or it is gone)."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    argv = [python, "-c", _KEY_READ, str(key_id)]
    if uid != os.geteuid():
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ.get("PATH", "")})
    return r.stdout.strip() or None
