"""The sandbox's file system: a size-capped tmpfs for everything writable, and bwrap's arguments.

Layout of one sandbox's host state directory (`<state_root>/sandboxes/<id>/`):
  owner        "PID STARTTIME" of the harness process that owns it (the sweep reads it)
  idmap        path of its uid-range lock file (with a user namespace; the sweep releases it)
  seccomp.bpf  the compiled seccomp program every command loads
  rw/          tmpfs, size = disk cap: overlay upper/work dirs, home, tmp, /usr/local skeleton
  channel/     lent read-only at /run/redline (the model router puts its socket here)

With a user namespace, everything under rw/ belongs to host ids of the sandbox's range (root
inside = the range's first id), so that inside it is owned by root or the agent, as usual.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from redline.sandbox.config import RedlineSandboxConfig

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
HOME = "/home/agent"
INIT_PATH = "/run/sbx-init"  # where the helper binary is lent read-only, to run as pid 1
# Debian's empty /usr/local: what the sandbox shows instead of the host's (admin tools, workplace
# binaries and their secrets stay out); `usr_local` entries are lent into it read-only.
USR_LOCAL_SKELETON = ("bin", "etc", "games", "include", "lib", "sbin", "share", "src")


@dataclass(frozen=True)
class Owners:
    """Host ids that own the sandbox's files: root inside, and the agent user."""

    root: tuple[int, int]
    agent: tuple[int, int]


def mount_tmpfs(target: Path, size: int, mode: str = "0755") -> None:
    opts = f"size={size},mode={mode}".encode()
    if _libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount tmpfs on {target}: {os.strerror(e)}")


def bind_mount(source: str, target: Path) -> None:
    if _libc.mount(source.encode(), str(target).encode(), None, MS_BIND | MS_REC, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bind {source} on {target}: {os.strerror(e)}")


def unreachable(path: str) -> str | None:
    """The first directory on the way to `path` that other users cannot search, if any.

    With a user namespace bwrap runs as the sandbox's unprivileged host uid, so everything it
    mounts must be reachable by "other".
    """
    p = Path(path)
    for d in [*reversed(p.parents), p] if p.is_dir() else reversed(p.parents):
        try:
            if not os.stat(d).st_mode & 0o001:
                return str(d)
        except OSError:
            return None  # missing: bwrap will say so
    return None


def stage_sources(rw: Path, cfg: RedlineSandboxConfig) -> dict[str, str]:
    """Bind host paths that bwrap could not reach (e.g. under a 0700 home) into rw/stage/, a
    place it can; returns {source: where bwrap finds it}. The binds live in the sandbox's
    tmpfs, so its lazy unmount removes them too."""
    sources = [*cfg.base_paths, *cfg.ro_binds, *cfg.unix_sockets, *cfg.etc_binds]
    staged: dict[str, str] = {}
    for i, src in enumerate(dict.fromkeys(sources)):
        if not os.path.lexists(src) or unreachable(src) is None:
            continue
        (rw / "stage").mkdir(mode=0o755, exist_ok=True)
        target = rw / "stage" / str(i)
        if os.path.isdir(src):
            target.mkdir()
        else:
            target.touch()
        bind_mount(src, target)
        staged[src] = str(target)
    return staged


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


def usr_local_entries(cfg: RedlineSandboxConfig) -> list[str]:
    """Host /usr/local entries lent into the skeleton (relative paths, sorted)."""
    patterns = cfg.usr_local
    if patterns is None:
        # Auto: only where the host's python3 lives in /usr/local (python:3.x images).
        patterns = [] if Path("/usr/bin/python3").exists() else list(PYTHON_IN_USR_LOCAL)
    found = {str(p.relative_to("/usr/local")) for pat in patterns for p in Path("/usr/local").glob(pat)}
    hidden = [h.removeprefix("/usr/local/") for h in cfg.hide_paths if h.startswith("/usr/local/")]
    return sorted(e for e in found if not any(e == h or e.startswith(h + "/") for h in hidden))


PYTHON_IN_USR_LOCAL = ("bin/python3*", "lib/python3*", "lib/libpython3*")


def prepare(state: Path, cfg: RedlineSandboxConfig, owners: Owners | None) -> Path:
    """Create the state dir and the capped tmpfs; return the tmpfs root.

    `owners` None: rootless. Then rw/ is a plain directory holding only what bwrap lends
    read-only (/etc, the /usr/local skeleton); the writable mounts are tmpfs that bwrap makes
    (rootless_writable_args), and every file belongs to the caller, the agent inside."""
    rw = state / "rw"
    rw.mkdir(parents=True)
    (state / "channel").mkdir(mode=0o755)
    if owners is None:
        return _prepare_rootless(rw, cfg)
    mount_tmpfs(rw, cfg.disk_bytes)
    dirs: list[Path] = [rw, rw / "up", rw / "wk", rw / "home", rw / "usrlocal"]
    for base in cfg.base_paths:
        name = base.strip("/").replace("/", "_")
        dirs += [rw / "up" / name, rw / "wk" / name]
    dirs += [rw / "usrlocal" / d for d in USR_LOCAL_SKELETON]
    for d in dirs:
        d.mkdir(mode=0o755, exist_ok=True)
    (rw / "usrlocal" / "man").symlink_to("share/man")
    os.lchown(rw / "usrlocal" / "man", *owners.root)
    etc = rw / "etc"
    etc.mkdir()
    for name, text in _etc_files(cfg).items():
        (etc / name).write_text(text)
        dirs.append(etc / name)
    dirs.append(etc)
    for d in ("tmp", "vartmp"):
        (rw / d).mkdir()
        os.chmod(rw / d, 0o1777)
        dirs.append(rw / d)
    (rw / "root").mkdir(mode=0o700)
    dirs.append(rw / "root")
    for d in dirs:
        os.chown(d, *owners.root)
    home = rw / "home" / home_of(cfg).rsplit("/", 1)[1]
    home.mkdir(mode=0o755)
    os.chown(home, *owners.agent)
    for path in cfg.hide_paths:
        hide(rw, cfg, owners, path)
    return rw


def _prepare_rootless(rw: Path, cfg: RedlineSandboxConfig) -> Path:
    for d in [rw / "usrlocal", *(rw / "usrlocal" / d for d in USR_LOCAL_SKELETON), rw / "etc"]:
        d.mkdir(mode=0o755)
    (rw / "usrlocal" / "man").symlink_to("share/man")
    for name, text in _etc_files(cfg).items():
        (rw / "etc" / name).write_text(text)
    # /etc and /usr/local are lent read-only: bwrap cannot make mount points in them, so they
    # are made here (an empty directory or file under each read-only bind).
    points = [(p, rw / "etc" / Path(p).relative_to("/etc")) for p in cfg.etc_binds if os.path.lexists(p)]
    if "/usr" in cfg.base_paths:
        points += [(f"/usr/local/{rel}", rw / "usrlocal" / rel) for rel in usr_local_entries(cfg)]
    for src, point in points:
        point.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(src):
            point.mkdir(exist_ok=True)
        else:
            point.touch()
    return rw


NOBODY = 65534


def hide(rw: Path, cfg: RedlineSandboxConfig, owners: Owners, path: str) -> None:
    """Make `path` (under a base path) absent inside: an overlay whiteout (a 0/0 character device)
    at its place in the upper layer. Root inside cannot do this itself (the host's files under /usr
    are not its own), so the harness does it before the sandbox starts.

    Directories on the way are made in the upper layer with the lower one's mode, owned by the
    namespace's `nobody`: that is how the lower directory shows inside anyway (its host-root owner
    is unmapped), the kernel refuses an upper directory with an unmapped owner, and neither root
    inside nor the agent may write to it (so nothing of the lower layer becomes writable). A
    path whose parent does not exist hides nothing; one that goes through a symlink is refused
    (an upper directory would replace the link). /usr/local entries are hidden by not lending them."""
    if path.startswith("/usr/local/") and "/usr" in cfg.base_paths:
        return  # /usr/local is the skeleton, not the overlay: see usr_local_entries
    base = next(b.rstrip("/") for b in cfg.base_paths if path.startswith(b.rstrip("/") + "/"))
    rel = Path(path).relative_to(base)
    upper, lower = rw / "up" / base.strip("/").replace("/", "_"), Path(base)
    for part in rel.parts[:-1]:
        upper, lower = upper / part, lower / part
        if lower.is_symlink():
            raise ValueError(f"hide path {path!r} goes through the symlink {lower}: give the real path")
        if not lower.is_dir():
            return
        if not upper.exists():
            st = lower.stat()
            upper.mkdir()
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            owner = (st.st_uid, st.st_gid) if owners.root == (0, 0) else \
                (owners.root[0] + NOBODY, owners.root[1] + NOBODY)
            os.chown(upper, *owner)
    whiteout = upper / rel.name
    if not os.path.lexists(whiteout):
        os.mknod(whiteout, stat.S_IFCHR | 0o000, os.makedev(0, 0))


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


@dataclass(frozen=True)
class BwrapFds:
    """Descriptors bwrap passes to the init: lifeline (read end), ready (write end), and the
    optional seccomp program."""

    lifeline: int
    ready: int
    seccomp: int | None = None


def _namespace_args(cfg: RedlineSandboxConfig, rootless: bool = False) -> list[str]:
    # The user namespace (when configured) exists already: the helper made it and bwrap runs
    # as its root; the namespaces below belong to it. Rootless, bwrap makes it, mapping the
    # caller's one uid/gid to the agent's (the kernel lets a normal user map only its own).
    a = ["--unshare-user", "--uid", str(cfg.uid), "--gid", str(cfg.gid)] if rootless else []
    a += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    # --die-with-parent ties the namespace init to the outer bwrap, which exits as soon as the
    # lifeline payload does; the kernel then kills everything in the pid namespace. The init
    # keeps CAP_SYS_ADMIN for its first step only (making /proc/sys read-only, see sbx.c), then
    # drops it and every other capability and loads the seccomp filter before saying "ready".
    a += ["--hostname", cfg.hostname, "--new-session", "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN",
          "--cap-add", "CAP_SETPCAP", "--die-with-parent"]
    return a


def _system_args(rw: Path, cfg: RedlineSandboxConfig, src: dict[str, str],
                 rootless: bool = False) -> list[str]:
    a: list[str] = []
    for base in cfg.base_paths:
        name = base.strip("/").replace("/", "_")
        if rootless:  # no capped tmpfs for an upper dir: read-only (the agent could not write it anyway)
            a += ["--ro-bind", base, base]
            continue
        a += ["--overlay-src", src.get(base, base), "--overlay", str(rw / "up" / name),
              str(rw / "wk" / name), base]
    if "/usr" in cfg.base_paths:
        a += ["--ro-bind" if rootless else "--bind", str(rw / "usrlocal"), "/usr/local"]
        for rel in usr_local_entries(cfg):
            a += ["--ro-bind", f"/usr/local/{rel}", f"/usr/local/{rel}"]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"),
                         ("/sbin", "usr/sbin")):
        if Path(link).is_symlink() and Path("/usr").joinpath(target[4:]).exists():
            a += ["--symlink", target, link]
    a += ["--ro-bind" if rootless else "--bind", str(rw / "etc"), "/etc"]
    for p in cfg.etc_binds:
        if os.path.lexists(p):
            a += ["--ro-bind", src.get(p, p), p]
    return a


def _kernel_args() -> list[str]:
    a = ["--proc", "/proc", "--dev", "/dev"]
    # /proc/sys, /proc/sysrq-trigger, /proc/irq and /proc/bus are made read-only by the init
    # (sbx.c); hide the rest of the kernel's sensitive files.
    for f in ("/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list",
              "/proc/sched_debug", "/proc/kallsyms"):
        if os.path.exists(f):
            a += ["--ro-bind", "/dev/null", f]
    return a


def tmp_bytes(cfg: RedlineSandboxConfig) -> int:
    """Rootless: the size of /tmp and of /var/tmp (each a tmpfs of its own)."""
    return max(16 << 20, cfg.disk_bytes // 4)


def rootless_writable_args(cfg: RedlineSandboxConfig, tmp_size: int) -> list[str]:
    """Rootless: each writable place is a size-capped tmpfs of bwrap's own (a normal user cannot
    mount the one shared tmpfs on the host), made while bwrap still holds its capabilities."""
    home = home_of(cfg)
    return ["--size", str(cfg.disk_bytes), "--perms", "0755", "--tmpfs", "/home",
            "--perms", "0755", "--dir", home,
            "--perms", "0755", "--dir", "/var",
            "--size", str(tmp_size), "--perms", "1777", "--tmpfs", "/tmp",
            "--size", str(tmp_size), "--perms", "1777", "--tmpfs", "/var/tmp",
            "--perms", "0700", "--dir", "/root"]


def bwrap_args(state: Path, cfg: RedlineSandboxConfig, fds: BwrapFds, init_binary: str,
               staged: dict[str, str] | None = None, view: Path | None = None,
               rootless_tmp: int | None = None) -> list[str]:
    """bwrap's arguments; `staged` maps host sources to where bwrap should take them from, and
    `view` is where bwrap sees the state directory (see core.VIEW). `rootless_tmp` (the size of
    /tmp and /var/tmp): rootless mode."""
    label = state.name
    state = view or state
    rw = state / "rw"
    src = staged or {}
    rootless = rootless_tmp is not None
    a = _namespace_args(cfg, rootless) + _system_args(rw, cfg, src, rootless)
    if rootless_tmp is not None:
        a += rootless_writable_args(cfg, rootless_tmp)
    else:
        a += ["--bind", str(rw / "home"), "/home"]
        # bwrap makes missing parents 0700; the agent must be able to walk them.
        a += ["--perms", "0755", "--dir", "/var"]
        a += ["--bind", str(rw / "tmp"), "/tmp", "--bind", str(rw / "vartmp"), "/var/tmp"]
        a += ["--bind", str(rw / "root"), "/root"]
    a += _kernel_args()
    a += ["--size", str(1 << 20), "--perms", "0755", "--tmpfs", "/run"]
    a += ["--ro-bind", init_binary, INIT_PATH]
    if cfg.channel:
        a += ["--perms", "0755", "--dir", "/run/redline"]
        a += ["--ro-bind", str(state / "channel"), "/run/redline"]
    made: set[str] = {"/", "/etc", "/home", "/var", "/tmp", "/var/tmp", "/root", "/proc", "/dev", "/run",
                      "/run/redline", *cfg.base_paths}
    for host, dst in cfg.unix_sockets.items():
        a += _parents(dst, made, cfg.base_paths) + ["--bind", src.get(host, host), dst]
    for host, dst in cfg.ro_binds.items():
        a += _parents(dst, made, cfg.base_paths) + ["--ro-bind", src.get(host, host), dst]
    a += ["--remount-ro", "/", "--chdir", home_of(cfg)]
    # The init (pid 1, under the seccomp filter too): says it is up, then lives exactly as long
    # as the harness holds the lifeline pipe's write end (EOF = harness gone = sandbox ends).
    bpf = str(fds.seccomp) if fds.seccomp is not None else "-1"
    a += ["--as-pid-1", "--argv0", "sbx-init", "--", INIT_PATH, "init", str(fds.ready), str(fds.lifeline),
          bpf, label]
    return a
