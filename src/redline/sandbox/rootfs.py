"""The sandbox's file system: a size-capped tmpfs for everything writable, and bwrap's arguments.

Layout of one sandbox's host state directory (`<state_root>/sandboxes/<id>/`):
  owner        "PID STARTTIME" of the harness process that owns it (the sweep reads it)
  rw/          tmpfs, size = disk cap: overlay upper/work dirs, home, tmp, exec output files
  channel/     lent read-only at /run/redline (the model router puts its socket here)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from redline.sandbox.config import RedlineSandboxConfig

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
HOME = "/home/agent"


def mount_tmpfs(target: Path, size: int, mode: str = "0755") -> None:
    opts = f"size={size},mode={mode}".encode()
    if _libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount tmpfs on {target}: {os.strerror(e)}")


def umount_lazy(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise OSError(e, f"umount {target}: {os.strerror(e)}")


def _etc_files(cfg: RedlineSandboxConfig) -> dict[str, str]:
    user, uid, gid = cfg.user, cfg.uid, cfg.gid
    home = HOME if user == "agent" else f"/home/{user}"
    return {
        "passwd": (
            "root:x:0:0:root:/root:/bin/bash\n"
            f"{user}:x:{uid}:{gid}:{user}:{home}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\n{user}:x:{gid}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost {cfg.hostname}\n::1\tlocalhost ip6-localhost\n",
        "hostname": cfg.hostname + "\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\nservices: files\n",
        "resolv.conf": "",
        "shells": "/bin/sh\n/bin/bash\n",
        "os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
        "profile": 'export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n',
    }


def home_of(cfg: RedlineSandboxConfig) -> str:
    return HOME if cfg.user == "agent" else f"/home/{cfg.user}"


def prepare(state: Path, cfg: RedlineSandboxConfig) -> Path:
    """Create the state dir and the capped tmpfs; return the tmpfs root."""
    rw = state / "rw"
    rw.mkdir(parents=True)
    (state / "channel").mkdir(mode=0o755)
    mount_tmpfs(rw, cfg.disk_bytes)
    for base in cfg.base_paths:
        name = base.strip("/").replace("/", "_")
        (rw / "up" / name).mkdir(parents=True)
        (rw / "wk" / name).mkdir(parents=True)
    etc = rw / "etc"
    etc.mkdir()
    for name, text in _etc_files(cfg).items():
        (etc / name).write_text(text)
    home = rw / "home" / home_of(cfg).rsplit("/", 1)[1]
    home.mkdir(parents=True)
    os.chown(home, cfg.uid, cfg.gid)
    os.chmod(home, 0o755)
    for d in ("tmp", "vartmp"):
        (rw / d).mkdir()
        os.chmod(rw / d, 0o1777)
    (rw / "root").mkdir(mode=0o700)
    (rw / "exec").mkdir(mode=0o700)  # harness-only: exec output files, never bound inside
    return rw


def _parents(dst: str, made: set[str], bases: list[str]) -> list[str]:
    """Directories above a bind destination, walkable by the agent: bwrap would make missing ones
    0700. Paths inside the base (e.g. /usr/...) exist already and are left alone."""
    out: list[str] = []
    parent = Path(dst).parent
    for d in reversed([parent, *parent.parents]):
        name = str(d)
        if name in made or any(name.startswith(b.rstrip("/") + "/") for b in bases):
            continue
        made.add(name)
        out += ["--perms", "0755", "--dir", name]
    return out


def bwrap_args(state: Path, cfg: RedlineSandboxConfig, lifeline_fd: int, ready_fd: int) -> list[str]:
    rw = state / "rw"
    home = home_of(cfg)
    a = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    # --die-with-parent ties the namespace init to the outer bwrap, which exits as soon as the
    # lifeline payload does; the kernel then kills everything in the pid namespace.
    a += ["--hostname", cfg.hostname, "--new-session", "--cap-drop", "ALL", "--die-with-parent"]
    for base in cfg.base_paths:
        name = base.strip("/").replace("/", "_")
        a += ["--overlay-src", base, "--overlay", str(rw / "up" / name), str(rw / "wk" / name), base]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"),
                         ("/sbin", "usr/sbin")):
        if Path(link).is_symlink() and Path("/usr").joinpath(target[4:]).exists():
            a += ["--symlink", target, link]
    a += ["--bind", str(rw / "etc"), "/etc"]
    for p in cfg.etc_binds:
        if os.path.lexists(p):
            a += ["--ro-bind", p, p]
    a += ["--bind", str(rw / "home"), "/home"]
    # bwrap makes missing parents 0700; the agent must be able to walk them.
    a += ["--perms", "0755", "--dir", "/var"]
    a += ["--bind", str(rw / "tmp"), "/tmp", "--bind", str(rw / "vartmp"), "/var/tmp"]
    a += ["--bind", str(rw / "root"), "/root"]
    a += ["--proc", "/proc", "--dev", "/dev"]
    # /proc/sys and sysrq-trigger are made read-only by bwrap itself; hide the rest of the kernel's
    # sensitive files too.
    for f in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"):
        if os.path.exists(f):
            a += ["--ro-bind", "/dev/null", f]
    a += ["--size", str(1 << 20), "--perms", "0755", "--tmpfs", "/run"]
    if cfg.channel:
        a += ["--perms", "0755", "--dir", "/run/redline"]
        a += ["--ro-bind", str(state / "channel"), "/run/redline"]
    made: set[str] = {"/", "/etc", "/home", "/var", "/tmp", "/var/tmp", "/root", "/proc", "/dev", "/run",
                      "/run/redline", *cfg.base_paths}
    for src, dst in cfg.unix_sockets.items():
        a += _parents(dst, made, cfg.base_paths) + ["--bind", src, dst]
    for src, dst in cfg.ro_binds.items():
        a += _parents(dst, made, cfg.base_paths) + ["--ro-bind", src, dst]
    a += ["--remount-ro", "/"]
    a += ["--chdir", home]
    # The init payload: tell the harness we are up, then live exactly as long as the harness
    # holds the lifeline pipe's write end (EOF = harness gone = sandbox ends).
    a += ["--", "/bin/sh", "-c", f"echo >/dev/fd/{ready_fd}; read _ </dev/fd/{lifeline_fd}",
          "sbx-init"]
    return a
