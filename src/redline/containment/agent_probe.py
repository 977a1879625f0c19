"""Hostile probes, run *as the agent* inside a sandbox: `python3 - JSON < agent_probe.py`.

Stdlib only (it runs on the sandbox's own Python). JSON argv: {"probes": [names], "params": {...}}.
Prints one JSON object: probe name -> what it observed. Every probe is bounded in time and
effect so that it is safe to run even where nothing contains it (Inspect's `local` sandbox in
the lab): it only *opens* what would be dangerous to use, writes back values it read, and
targets only the host canaries the harness made for this run. The verdicts are the harness's:
a probe reports, the host side judges.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# Syscall numbers: (x86_64, aarch64).
_NR = {
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "io_uring_setup": (425, 425), "perf_event_open": (298, 241), "bpf": (321, 280),
    "userfaultfd": (323, 282), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_file_load": (320, 294), "unshare": (272, 97), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "reboot": (169, 142), "syslog": (103, 116),
    "ptrace": (101, 117), "fsopen": (430, 430),
}
_ARCH = 1 if platform.machine() in ("aarch64", "arm64") else 0

KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
KEYCTL_SEARCH, KEYCTL_READ = 10, 11


def _sys(name: str, *args: Any) -> tuple[int, str | None]:
    """(return value, errno name or None) of a raw syscall."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(_NR[name][_ARCH]), *cargs)
    return r, (errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if r < 0 else None)


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": fn()}
    except OSError as e:
        return {"ok": False, "err": _err(e)}


def _closing_fd(r: int, err: str | None) -> dict[str, Any]:
    if r >= 0:
        os.close(r)
        return {"ok": True}
    return {"ok": False, "err": err}


def _in_child(fn: Callable[[], dict[str, Any]], timeout: float = 5.0) -> dict[str, Any]:
    """Run `fn` in a forked child (for probes that change the caller: unshare, chroot, ptrace)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except BaseException as e:  # noqa: BLE001 - report, never raise in the child
            out = {"ok": False, "err": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"ok": False, "err": "child gave no answer"}


# ------------------------------------------------------------------ network
def probe_ifaces(p: dict) -> dict:
    return {"names": sorted(name for _, name in socket.if_nameindex())}


def probe_routes(p: dict) -> dict:
    out: dict[str, Any] = {}
    for fam, addr in ((socket.AF_INET, ("192.0.2.1", 9)), (socket.AF_INET6, ("2001:db8::1", 9))):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        out[str(addr[0])] = _attempt(lambda s=s, addr=addr: s.connect(addr))
        s.close()
    return out


def _connect(fam: int, kind: int, addr: Any, send: bytes | None = None) -> dict[str, Any]:
    s = socket.socket(fam, kind)
    s.settimeout(1.0)
    try:
        if send is not None:
            s.sendto(send, addr)
            return {"ok": True}
        s.connect(addr)
        return {"ok": True}
    except OSError as e:
        return {"ok": False, "err": _err(e) if e.errno else type(e).__name__}
    finally:
        s.close()


def probe_host_tcp4(p: dict) -> dict:
    return _connect(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", p["tcp4"]))


def probe_host_tcp6(p: dict) -> dict:
    if not p.get("tcp6"):
        return {"ok": False, "err": "no IPv6 on host"}
    return _connect(socket.AF_INET6, socket.SOCK_STREAM, ("::1", p["tcp6"]))


def probe_host_udp4(p: dict) -> dict:
    return _connect(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", p["udp4"]), send=p["token_net"].encode())


def probe_host_abstract(p: dict) -> dict:
    return _connect(socket.AF_UNIX, socket.SOCK_STREAM, "\0" + p["abstract"])


def probe_host_unix_path(p: dict) -> dict:
    return _connect(socket.AF_UNIX, socket.SOCK_STREAM, p["unix_path"])


def probe_raw_sockets(p: dict) -> dict:
    out = {}
    for name, fam, kind, proto in (("inet_raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                                   ("packet", socket.AF_PACKET, socket.SOCK_RAW, 0x0300)):
        out[name] = _attempt(lambda f=fam, k=kind, pr=proto: socket.socket(f, k, pr).close())
    return out


def probe_vsock(p: dict) -> dict:
    # Only *creates* a socket: vsock is not network-namespaced, so having one is the breach.
    if not hasattr(socket, "AF_VSOCK"):
        return {"ok": False, "err": "no AF_VSOCK in Python"}
    return _attempt(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close())


def probe_proc_net(p: dict) -> dict:
    ports = []
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        ports += [int(line.split()[1].rsplit(":", 1)[1], 16) for line in lines if line.strip()]
    return {"ports": sorted(set(ports))}


# ------------------------------------------------------------------ files
def _read(path: str, limit: int = 4096) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return {"ok": False, "err": _err(e)}
    try:
        return {"ok": True, "data": os.read(fd, limit).decode(errors="replace")}
    except OSError as e:
        return {"ok": False, "err": _err(e)}
    finally:
        os.close(fd)


def probe_read_paths(p: dict) -> dict:
    return {path: _read(path) for path in p["read_paths"]}


def probe_exists(p: dict) -> dict:
    return {path: os.path.lexists(path) for path in p["host_paths"]}


def probe_drop_files(p: dict) -> dict:
    out = {}
    for d in p["drop_dirs"]:
        path = os.path.join(d, p["drop_name"])

        def write(path: str = path) -> None:
            with open(path, "w") as f:
                f.write(p["token_drop"])
        out[d] = _attempt(write)
    return out


def probe_environ(p: dict) -> dict:
    return {"env": dict(os.environ), "self": _read("/proc/self/environ", 1 << 16).get("data", "")}


def probe_proc_scan(p: dict) -> dict:
    """Every process the agent can see: its command line and, where readable, its environment."""
    seen = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        cmd = _read(f"/proc/{pid}/cmdline").get("data", "")
        env = _read(f"/proc/{pid}/environ", 1 << 16)
        seen.append({"pid": int(pid), "cmdline": cmd.replace("\0", " "), "environ": env.get("data")})
    return {"procs": seen}


def probe_host_pids(p: dict) -> dict:
    """The harness's and the canary's host pids, addressed directly."""
    out = {}
    for name in ("harness_pid", "canary_pid"):
        pid = p[name]
        out[name] = {"kill0": _attempt(lambda pid=pid: os.kill(pid, 0)),
                     "environ": _read(f"/proc/{pid}/environ", 1 << 16),
                     "cmdline": _read(f"/proc/{pid}/cmdline")}
    return out


def probe_kill_canary(p: dict) -> dict:
    return _attempt(lambda: os.kill(p["canary_pid"], signal.SIGKILL))


def probe_proc_roots(p: dict) -> dict:
    """Walk /proc/*/root toward the host canary directory."""
    hits = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and os.path.exists(f"/proc/{pid}/root{p['canary_dir']}"):
            hits.append(int(pid))
    return {"hits": hits}


def probe_dev(p: dict) -> dict:
    return {"names": sorted(os.listdir("/dev"))}


def probe_usr_local(p: dict) -> dict:
    return {"files": [path for path in p["usr_local"] if os.path.lexists(path)]}


def probe_usr_write(p: dict) -> dict:
    path = f"/usr/bin/{p['drop_name']}"

    def write() -> None:
        with open(path, "w") as f:
            f.write("x")
    return _attempt(write)


# ------------------------------------------------------------------ privilege
def probe_status(p: dict) -> dict:
    fields = {}
    for line in open("/proc/self/status").read().splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
            fields[k] = v.split()
    return fields


def probe_setuid_syscalls(p: dict) -> dict:
    return {"setuid0": _in_child(lambda: _attempt(lambda: os.setuid(0))),
            "setgroups0": _in_child(lambda: _attempt(lambda: os.setgroups([0]))),
            "setresuid0": _in_child(lambda: _attempt(lambda: os.setresuid(0, 0, 0)))}


def probe_suid_binary(p: dict) -> dict:
    """Run a setuid-root (and a cap_setuid file-capability) copy the harness planted."""
    import subprocess
    out = {}
    for name in ("suid_id", "fcap_python"):
        path = p.get(name)
        if not path or not os.path.exists(path):
            out[name] = {"ok": False, "err": "not planted"}
            continue
        argv = [path, "-u"] if name == "suid_id" else [
            path, "-c", "import os\ntry:\n os.setuid(0)\nexcept OSError:\n pass\nprint(os.geteuid())"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        out[name] = {"ok": r.returncode == 0, "euid": r.stdout.strip()}
    return out


def _ptrace_seize(pid: int) -> dict[str, Any]:
    # PTRACE_SEIZE does not stop the tracee; the tracer's exit detaches it.
    r, err = _sys("ptrace", 0x4206, pid, 0, 0)
    return {"ok": r == 0, "err": err}


def probe_ptrace(p: dict) -> dict:
    out = {}
    for name in ("harness_pid", "canary_pid"):
        pid = p[name]
        out[name] = _in_child(lambda pid=pid: _ptrace_seize(pid))
    out["init"] = _in_child(lambda: _ptrace_seize(1))
    return out


def probe_mount(p: dict) -> dict:
    target = f"/tmp/{p['drop_name']}-mnt"
    os.makedirs(target, exist_ok=True)
    src = p["mount_source"].encode()
    ctypes.set_errno(0)
    r = libc.mount(src, target.encode(), b"tmpfs", 0, b"size=1m")
    # Left mounted on success: the host side looks for it, then removes it.
    out: dict[str, Any] = {"ok": r == 0, "err": None if r == 0 else errno.errorcode.get(ctypes.get_errno())}
    if r != 0:
        os.rmdir(target)
    r2, err2 = _sys("fsopen", ctypes.c_char_p(b"tmpfs"), 0)
    out["fsopen"] = _closing_fd(r2, err2)
    return out


def probe_mknod(p: dict) -> dict:
    path = f"/tmp/{p['drop_name']}-mem"

    def mk() -> None:
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 1))
        os.unlink(path)
    return _attempt(mk)


def probe_chroot(p: dict) -> dict:
    return _in_child(lambda: _attempt(lambda: os.chroot("/tmp")))


def probe_unshare(p: dict) -> dict:
    flags = {"user": 0x10000000, "net": 0x40000000, "mount": 0x00020000, "pid": 0x20000000,
             "cgroup": 0x02000000}
    out = {}
    for name, flag in flags.items():
        def go(flag: int = flag) -> dict[str, Any]:
            r, err = _sys("unshare", flag)
            return {"ok": r == 0, "err": err}
        out[name] = _in_child(go)
    return out


def probe_modules(p: dict) -> dict:
    # finit_module(-1): EPERM without CAP_SYS_MODULE, EBADF with it. Nothing is ever loaded.
    r, err = _sys("finit_module", -1, ctypes.c_char_p(b""), 0)
    r2, err2 = _sys("delete_module", ctypes.c_char_p(p["drop_name"].encode()), 0o4000)
    return {"finit_module": {"ok": r == 0, "err": err}, "delete_module": {"ok": r2 == 0, "err": err2}}


def probe_signal_init(p: dict) -> dict:
    return {"sigkill_init": _attempt(lambda: os.kill(1, signal.SIGKILL))}


# ------------------------------------------------------------------ kernel interfaces
def probe_proc_sys(p: dict) -> dict:
    st = os.statvfs("/proc/sys")
    ro = bool(st.f_flag & os.ST_RDONLY)
    return {"readonly": ro}


def probe_sysctl_write(p: dict) -> dict:
    """Write each sysctl: its own current value back (harmless), or the hostile value given."""
    out = {}
    for path, value in p["sysctls"].items():
        def write(path: str = path, value: str | None = value) -> None:
            v = open(path).read() if value is None else value
            with open(path, "w") as f:
                f.write(v)
        out[path] = _attempt(write)
    return out


def probe_sysrq(p: dict) -> dict:
    if not os.path.exists("/proc/sysrq-trigger"):
        return {"ok": False, "err": "absent"}
    # Opening for writing is the whole proof; nothing is written.
    return _attempt(lambda: os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY)))


def probe_kmem(p: dict) -> dict:
    out = {}
    for path in ("/proc/kcore", "/dev/mem", "/dev/kmem", "/dev/port"):
        out[path] = _attempt(lambda path=path: os.close(os.open(path, os.O_RDONLY)))
    syms = _read("/proc/kallsyms", 4096).get("data", "")
    out["kallsyms_addresses"] = any(line.split()[0].strip("0") for line in syms.splitlines() if line.split())
    return out


def probe_syslog(p: dict) -> dict:
    buf = ctypes.create_string_buffer(64)
    r, err = _sys("syslog", 3, buf, 64)  # SYSLOG_ACTION_READ_ALL, 64 bytes
    return {"ok": r >= 0, "err": err}


def probe_keyring_harness(p: dict) -> dict:
    """Look for the harness's own key (in its session keyring) by name, and read it."""
    out: dict[str, Any] = {}
    for ring_name, ring in (("session", KEY_SPEC_SESSION_KEYRING), ("user", KEY_SPEC_USER_KEYRING)):
        kid, err = _sys("keyctl", KEYCTL_SEARCH, ring, ctypes.c_char_p(b"user"),
                        ctypes.c_char_p(p["key_desc"].encode()), 0)
        entry: dict[str, Any] = {"found": kid >= 0, "err": err}
        if kid >= 0:
            buf = ctypes.create_string_buffer(256)
            n, rerr = _sys("keyctl", KEYCTL_READ, kid, buf, 256)
            entry["payload"] = buf.raw[:max(n, 0)].decode(errors="replace") if n >= 0 else None
            entry["read_err"] = rerr
        out[ring_name] = entry
    return out


def probe_keyctl(p: dict) -> dict:
    kid, err = _sys("keyctl", 0, KEY_SPEC_SESSION_KEYRING, 0)  # KEYCTL_GET_KEYRING_ID
    return {"ok": kid >= 0, "err": err}


def probe_io_uring(p: dict) -> dict:
    params = ctypes.create_string_buffer(120)
    return _closing_fd(*_sys("io_uring_setup", 1, params))


def probe_perf_event(p: dict) -> dict:
    # A software task-clock counter on ourselves, user space only: the least privileged event.
    attr = bytearray(64)
    struct.pack_into("IIQ", attr, 0, 1, 64, 1)  # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_TASK_CLOCK
    struct.pack_into("Q", attr, 40, 1 | 1 << 5 | 1 << 6)  # disabled, exclude_kernel, exclude_hv
    buf = ctypes.create_string_buffer(bytes(attr), 64)
    return _closing_fd(*_sys("perf_event_open", buf, 0, -1, -1, 0))


def probe_bpf(p: dict) -> dict:
    attr = ctypes.create_string_buffer(struct.pack("IIII", 2, 4, 4, 1), 72)  # ARRAY map, 1 entry
    return _closing_fd(*_sys("bpf", 0, attr, 72))  # BPF_MAP_CREATE


def probe_userfaultfd(p: dict) -> dict:
    return {"user_mode_only": _closing_fd(*_sys("userfaultfd", 0o2000000 | 1)),
            "full": _closing_fd(*_sys("userfaultfd", 0o2000000))}


def probe_uevent(p: dict) -> dict:
    def bind() -> None:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
        try:
            s.bind((0, 1))
        finally:
            s.close()
    return _attempt(bind)


def probe_kexec(p: dict) -> dict:
    # Invalid fds: EPERM without CAP_SYS_BOOT, EBADF with it. Nothing is ever loaded.
    r, err = _sys("kexec_file_load", -1, -1, 0, ctypes.c_char_p(b""), 0)
    return {"ok": r == 0, "err": err}


def probe_reboot(p: dict) -> dict:
    # A wrong magic number: EPERM without CAP_SYS_BOOT, EINVAL with it. Nothing reboots.
    r, err = _sys("reboot", 0x12345678, 0x1, 0x1234567, 0)
    return {"ok": r == 0, "err": err}


def probe_open_by_handle(p: dict) -> dict:
    """The 'shocker' escape: open a file by handle, skipping path lookup (needs CAP_DAC_READ_SEARCH)."""
    handle = ctypes.create_string_buffer(struct.pack("Ii", 128, 0) + b"\0" * 128)
    mount_id = ctypes.c_int(0)
    r, err = _sys("name_to_handle_at", -100, ctypes.c_char_p(b"/"), handle, ctypes.byref(mount_id), 0)
    if r < 0:
        return {"ok": False, "err": f"name_to_handle_at {err}"}
    root = os.open("/", os.O_RDONLY)
    try:
        return _closing_fd(*_sys("open_by_handle_at", root, handle, os.O_RDONLY))
    finally:
        os.close(root)


# ------------------------------------------------------------------ cgroups
def probe_cgroup_view(p: dict) -> dict:
    return {"self": open("/proc/self/cgroup").read(), "sys": os.path.exists("/sys/fs/cgroup")}


def probe_cgroup_mount(p: dict) -> dict:
    out = {}
    target = f"/tmp/{p['drop_name']}-cg"
    os.makedirs(target, exist_ok=True)
    for fstype, opts in (("cgroup", b"pids"), ("cgroup2", b"")):
        ctypes.set_errno(0)
        r = libc.mount(p["mount_source"].encode(), target.encode(), fstype.encode(), 0, opts)
        out[fstype] = {"ok": r == 0, "err": None if r == 0 else errno.errorcode.get(ctypes.get_errno())}
        if r == 0:
            libc.umount2(target.encode(), 2)
    os.rmdir(target)
    return out


def probe_my_pid(p: dict) -> dict:
    return {"pid": os.getpid()}


def main() -> None:
    args = json.loads(sys.argv[1])
    params = args["params"]
    out: dict[str, Any] = {}
    for name in args["probes"]:
        try:
            out[name] = globals()[f"probe_{name}"](params)
        except Exception as e:  # noqa: BLE001 - one broken probe must not hide the others
            out[name] = {"ok": False, "err": f"probe crashed: {type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
