"""Two sandboxes at once (A and B): nothing crosses between them, and nothing outlives A."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from redline.containment.case import NotApplicable, case
from redline.containment.context import Ctx, scaled
from redline.containment.host import detached, host_uid, kill_pids, pids_named, pids_with, read_key_as

# A background holder: binds/creates in the foreground (so the exec returns once it is in place),
# then a detached child keeps it for `hold` seconds.
_HOLD = """
import os, socket, sys, time
kind, arg, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
if kind == "abstract":
    s = socket.socket(socket.AF_UNIX); s.bind("\\0" + arg); s.listen(8)
elif kind == "tcp":
    s = socket.socket(); s.bind(("127.0.0.1", int(arg))); s.listen(8)
if os.fork() == 0:
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # let go of the command's pipes: the exec returns at once everywhere
    time.sleep(hold)
    os._exit(0)
print("ready")
"""

_CONNECT = """
import socket, sys
kind, arg = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX) if kind == "abstract" else socket.socket()
s.settimeout(2)
try:
    s.connect("\\0" + arg if kind == "abstract" else ("127.0.0.1", int(arg)))
    print("connected")
except OSError as e:
    print("refused", e.errno)
"""

_IPC = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
key, op = int(sys.argv[1]), sys.argv[2]
if op == "create":
    print(libc.msgget(key, 0o1000 | 0o666))
elif op == "find":
    print(libc.msgget(key, 0))
else:
    qid = libc.msgget(key, 0)
    print(libc.msgctl(qid, 0, None) if qid >= 0 else -1)  # IPC_RMID
"""

# A key every process of the same user may read (possessor and user: all), handed over by id.
_KEY = """
import ctypes, platform, sys
libc = ctypes.CDLL(None, use_errno=True)
arm = platform.machine() in ("aarch64", "arm64")
add_key, keyctl = (217, 219) if arm else (248, 250)
op, arg = sys.argv[1], sys.argv[2]
if op == "add":
    p = sys.argv[3].encode()
    kid = libc.syscall(add_key, b"user", arg.encode(), p, len(p), -4)  # into the user keyring
    if kid >= 0:
        libc.syscall(keyctl, 5, kid, 0x3f3f0000)  # KEYCTL_SETPERM
    print(kid)
elif op == "read":
    buf = ctypes.create_string_buffer(256)
    n = libc.syscall(keyctl, 11, int(arg), buf, 256)  # KEYCTL_READ
    print(buf.raw[:max(n, 0)].decode(errors="replace") or "none")
else:
    libc.syscall(keyctl, 21, int(arg))  # KEYCTL_INVALIDATE
"""

_INOTIFY = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "try":
    fd = libc.inotify_init1(0o2000000)
    print("ok" if fd >= 0 else f"failed {ctypes.get_errno()}")
    sys.exit(0)
fds = []
while len(fds) < int(sys.argv[2]):
    fd = libc.inotify_init1(0o2000000)
    if fd < 0:
        break
    fds.append(fd)
if os.fork() == 0:
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    time.sleep(float(sys.argv[3]))
    os._exit(0)
print(len(fds))
"""


async def _ab(ctx: Ctx) -> tuple:
    return await ctx.sandbox("cross_a"), await ctx.sandbox("cross_b")


def _port(ctx: Ctx) -> int:
    return 20000 + int(ctx.lab.run_id, 16) % 20000


@case("x-processes", "cross-sandbox", group="cross",
      attack="B runs a marked process; A lists /proc for it", check="A does not see it")
async def processes(ctx: Ctx) -> str | None:
    a, b = await _ab(ctx)
    marker = f"rl-xproc-{ctx.lab.run_id}"
    await ctx.sh(b, detached(marker))
    pattern = marker.replace("xproc", "xpro[c]")  # so that grep does not find itself
    r = await ctx.sh(a, f"grep -l -a '{pattern}' /proc/[0-9]*/cmdline 2>/dev/null || true")
    kill_pids(pids_with(marker))
    return f"A sees B's process: {r.stdout.split()[:3]}" if r.stdout.strip() else None


@case("x-signals", "cross-sandbox", group="cross",
      attack="A sends SIGKILL to B's marked process, by B's pid and by its host pid",
      check="the process is still alive (host view)")
async def signals(ctx: Ctx) -> str | None:
    a, b = await _ab(ctx)
    marker = f"rl-xsig-{ctx.lab.run_id}"
    # Not in a subshell: $! is then the marked process's own pid inside B.
    r = await ctx.sh(b, f"setsid bash -c 'exec -a {marker} sleep 30' </dev/null >/dev/null 2>&1 & echo $!")
    inner = int(r.stdout.strip())
    deadline = time.monotonic() + scaled(5)
    while not (host := pids_named(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if not host:
        raise RuntimeError("B's marked process did not start")
    if ctx.redline and inner > 1:
        await ctx.sh(a, f"kill -9 {inner} 2>/dev/null; true")
    await ctx.sh(a, f"kill -9 {host[0]} 2>/dev/null; true")
    await asyncio.sleep(0.1)
    alive = pids_named(marker)
    kill_pids(alive)
    return None if alive else "A killed B's process"


@case("x-dev-shm", "cross-sandbox", group="cross",
      attack="A writes /dev/shm/NAME and /tmp/NAME", check="B sees neither")
async def dev_shm(ctx: Ctx) -> str | None:
    a, b = await _ab(ctx)
    name = f"rl-x-{ctx.lab.run_id}"
    await ctx.sh(a, f"echo from-a > /dev/shm/{name}; echo from-a > /tmp/{name}")
    r = await ctx.sh(b, f"cat /dev/shm/{name} /tmp/{name} 2>/dev/null; true")
    await ctx.sh(a, f"rm -f /dev/shm/{name} /tmp/{name}")
    return f"B read A's files ({r.stdout.count('from-a')} of 2)" if "from-a" in r.stdout else None


async def _hold_and_connect(ctx: Ctx, kind: str, arg: str) -> str:
    a, b = await _ab(ctx)
    r = await a.exec(["python3", "-c", _HOLD, kind, arg, "10"], timeout=30)
    if "ready" not in r.stdout:
        raise RuntimeError(f"A could not listen: {r.stderr.strip()[-300:]}")
    return (await b.exec(["python3", "-c", _CONNECT, kind, arg], timeout=30)).stdout


@case("x-abstract-socket", "cross-sandbox", group="cross",
      attack="A listens on an abstract Unix socket; B connects to it", check="B's connect is refused")
async def abstract(ctx: Ctx) -> str | None:
    out = await _hold_and_connect(ctx, "abstract", f"rl-x-{ctx.lab.run_id}")
    return "B connected to A's abstract socket" if "connected" in out else None


@case("x-ports", "cross-sandbox", group="cross",
      attack="A listens on 127.0.0.1:PORT; B connects to it", check="B's connect is refused")
async def ports(ctx: Ctx) -> str | None:
    out = await _hold_and_connect(ctx, "tcp", str(_port(ctx)))
    return "B connected to A's port" if "connected" in out else None


@case("x-sysv-ipc", "cross-sandbox", group="cross",
      attack="A creates a System V message queue with a known key; B looks it up", check="B finds nothing")
async def sysv_ipc(ctx: Ctx) -> str | None:
    a, b = await _ab(ctx)
    key = str(int(ctx.lab.run_id[:7], 16))
    await a.exec(["python3", "-c", _IPC, key, "create"])
    try:
        r = await b.exec(["python3", "-c", _IPC, key, "find"])
    finally:
        await a.exec(["python3", "-c", _IPC, key, "remove"])
    return "B found A's message queue" if int(r.stdout.strip() or -1) >= 0 else None


@case("x-inotify", "cross-sandbox", group="cross",
      attack="A takes every inotify instance its user may have (fs.inotify.max_user_instances)",
      check="B can still create one")
async def inotify(ctx: Ctx) -> str | None:
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    if limit > 1000:
        raise NotApplicable(f"max_user_instances is {limit}: too many to exhaust within bounds")
    a, b = await _ab(ctx)
    marker = f"rl-inotify-{ctx.lab.run_id}"
    await a.exec(["python3", "-c", _INOTIFY, "hold", str(limit), "5", marker])
    try:
        r = await b.exec(["python3", "-c", _INOTIFY, "try"])
    finally:
        kill_pids(pids_with(marker))
    return f"B cannot create an inotify instance: {r.stdout.strip()}" if r.stdout.strip() != "ok" else None


@case("x-user-keyring", "cross-sandbox", group="cross",
      attack="A adds a key readable by its user to its user keyring; B reads it by id",
      check="B cannot read it")
async def user_keyring(ctx: Ctx) -> str | None:
    a, b = await _ab(ctx)
    payload = f"rl-xpayload-{secrets.token_hex(6)}"
    r = await a.exec(["python3", "-c", _KEY, "add", f"rl-xkey-{ctx.lab.run_id}", payload])
    kid = int(r.stdout.strip() or -1)
    if kid < 0:
        return None  # A cannot make keys at all
    try:
        r = await b.exec(["python3", "-c", _KEY, "read", str(kid)])
    finally:
        await a.exec(["python3", "-c", _KEY, "remove", str(kid)])
    return "B read the key A added" if payload in r.stdout else None


@case("x-keyring-outlives", "cross-sandbox", group="cross",
      attack="A adds a key readable by its user to its user keyring, then A is torn down",
      check="no host process of A's host uid can read the key afterwards")
async def keyring_outlives(ctx: Ctx) -> str | None:
    a, _ = await _ab(ctx)
    marker = f"rl-xuid-{ctx.lab.run_id}"
    r = await a.exec(["python3", "-c", _KEY, "add", f"rl-xkey2-{ctx.lab.run_id}", "outlives"])
    kid = int(r.stdout.strip() or -1)
    await ctx.sh(a, detached(marker))
    deadline = time.monotonic() + scaled(5)
    while not (pids := pids_named(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    uid = host_uid(pids[0]) if pids else None
    kill_pids(pids)
    await ctx.destroy("cross_a")
    if kid < 0:
        return None  # A cannot make keys at all
    if uid is None:
        raise RuntimeError("could not find A's host uid")
    found = read_key_as(uid, kid)
    return f"A's key outlived A (host uid {uid} still reads it)" if found == "outlives" else None


@case("x-channel", "cross-sandbox", group="cross",
      local="Inspect's local sandbox has no model channel",
      attack="A looks for a file the harness put in B's model-channel folder", check="A does not see it")
async def channel(ctx: Ctx) -> str | None:
    a, b = await _ab(ctx)
    renv = ctx.redline_env(b)
    if renv is None or not ctx.config.channel:
        raise NotApplicable("the sandboxes have no model channel")
    name = f"rl-chan-{ctx.lab.run_id}"
    (renv.channel_dir / name).write_text("b only\n")
    r = await ctx.sh(a, f"cat /run/redline/{name} 2>/dev/null; true")
    return "A read B's channel folder" if "b only" in r.stdout else None
