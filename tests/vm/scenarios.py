"""Guest side of the cgroup v2 VM test: one scenario per run, in the cgroup guest.sh put it in.

Prints one JSON object: what was observed (containment record, caps, events, leftovers). The host
test (tests/test_cgroups_vm.py) asserts on it. Drives the sandbox core directly: importing Inspect
takes minutes under emulation.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from redline.sandbox import RedlineSandboxConfig, Sandbox  # noqa: E402
from redline.sandbox import cgroups as cg  # noqa: E402
from redline.sandbox.sweep import sweep  # noqa: E402

CAP_PIDS = 48
CAP_MEM = 128 << 20
BOMB = "setsid bash -c 'bomb() { bomb | bomb & }; bomb' >/dev/null 2>&1 &"


def leaves(parent: str) -> list[str]:
    p = Path(parent)
    return sorted(d.name for d in p.iterdir() if d.is_dir() and len(d.name) == 12) if p.is_dir() else []


HARDENING = ("grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
             "echo uid_map $(cat /proc/self/uid_map); "
             "unshare -U true 2>/dev/null && echo unshare=allowed || echo unshare=refused")
# Root inside (no capabilities) writes, renames and deletes in the copy-on-write /usr (an overlay made
# in a user namespace, whose tmpfs upper layer has no user xattrs before kernel 6.6); the host's
# files there belong to an unmapped uid, so it cannot touch those.
OVERLAY = ("echo x > /usr/redline-probe && cat /usr/redline-probe && mkdir /usr/rl && mv /usr/rl /usr/rl2 && "
           "rm /usr/redline-probe && rmdir /usr/rl2 && echo renamed; touch /usr/bin/env 2>/dev/null "
           "|| echo host-files-refused")


async def hardening(sb: Sandbox) -> dict[str, Any]:
    """What the contain branch's helper gives every command (user namespace, no capabilities,
    no_new_privs, seccomp) on this kernel, and the overlay's writes and renames."""
    r = await sb.run(["bash", "-c", HARDENING], timeout=120)
    lines = r.stdout.decode().split("\n")
    out: dict[str, Any] = {k.rstrip(":"): v.strip() for k, _, v in (ln.partition("\t") for ln in lines) if v}
    out["uid_map"] = next((ln.split(None, 1)[1] for ln in lines if ln.startswith("uid_map ")), "")
    out["unshare"] = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("unshare=")), "")
    r = await sb.run(["bash", "-c", OVERLAY], user="root", timeout=120)
    out["overlay"] = r.stdout.decode().split() + [f"rc={r.returncode}"] + r.stderr.decode().split("\n")[:3]
    out["host_usr_untouched"] = not Path("/usr/redline-probe").exists() and Path("/usr/bin/env").exists()
    out["id_base"] = sb.id_base
    return out


async def caps(sb: Sandbox) -> dict[str, Any]:
    """A memory hog, then a fork bomb; what the sandbox and its counters show."""
    out: dict[str, Any] = {}
    r = await sb.run(["bash", "-c", "python3 -c 'x = bytearray(1 << 30); print(len(x))'; echo rc=$?"],
                     timeout=300)
    out["hog"] = r.stdout.decode().strip().splitlines()[-1:]
    r = await sb.run(["bash", "-c", "echo alive"], timeout=120)
    out["alive_after_hog"] = r.stdout.decode().strip()
    await sb.run(["bash", "-c", BOMB], timeout=120)
    peak, still = 0, 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and still < 8:  # until the count stops growing
        n = len(sb.processes())
        still = still + 1 if n <= peak else 0
        peak = max(peak, n)
        await asyncio.sleep(0.5)
    out["bomb_peak"] = peak
    t0 = time.monotonic()
    subprocess.run(["true"], check=True)
    out["host_fork_s"] = round(time.monotonic() - t0, 3)
    out["events"] = sb.events()
    return out


def sandbox_round(**cfg_kw: Any) -> dict[str, Any]:
    cfg = RedlineSandboxConfig(pids_max=CAP_PIDS, memory_bytes=CAP_MEM, **cfg_kw)
    res: dict[str, Any] = {"containment": cg.preflight(cfg)}
    sb = Sandbox.create(cfg)
    try:
        res["sandbox_containment"] = sb.containment
        res["leaf"] = str(sb.cgroups.dirs[0]) if sb.cgroups else None
        res["leaf_existed"] = bool(sb.cgroups and sb.cgroups.dirs[0].is_dir())
        res["own_cgroup"] = Path("/proc/self/cgroup").read_text().strip()
        res["hardening"] = asyncio.run(hardening(sb))
        res.update(asyncio.run(caps(sb)))
    finally:
        sb.destroy()
    res["events_after_destroy"] = sb.events()
    res["leaf_left"] = bool(res.get("leaf") and Path(res["leaf"]).exists())
    parent = res["containment"]["parent"][0]
    res["leaves_left"] = leaves(parent)
    return res


def expect_error(**cfg_kw: Any) -> str | None:
    """The error text of a preflight that must fail (None if it did not)."""
    cg._layouts.clear()
    try:
        cg.preflight(RedlineSandboxConfig(**cfg_kw))
    except cg.CgroupError as e:
        return str(e)
    return None


def s_sweep() -> dict[str, Any]:
    """A harness SIGKILLed with a live sandbox: the next start's sweep removes its v2 cgroup too."""
    code = ("import asyncio\n"
            "from redline.sandbox import Sandbox\n"
            "sb = Sandbox.create()\n"
            "asyncio.run(sb.run(['bash', '-c', 'sleep 600 >/dev/null 2>&1 &']))\n"
            "print(sb.cgroups.dirs[0], flush=True)\n"
            "import time; time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    leaf = Path(holder.stdout.readline().strip())
    before = leaf.is_dir()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    removed = sweep(Path("/run/redline"))
    return {"leaf": str(leaf), "leaf_before": before, "removed": len(removed), "leaf_after": leaf.exists()}


def s_rootless() -> dict[str, Any]:
    """uid 1000 in a subtree delegated to it: the cgroup layer alone, then a whole rootless sandbox
    capped by cgroups in that subtree."""
    res = s_rootless_layer()
    res["sandbox"] = rootless_sandbox()
    return res


def rootless_sandbox() -> dict[str, Any]:
    cfg = RedlineSandboxConfig(pids_max=CAP_PIDS, memory_bytes=CAP_MEM, state_root="/tmp/rl-rootless-state")
    sb = Sandbox.create(cfg)
    out: dict[str, Any] = {}
    try:
        out["containment"] = sb.containment
        out["leaf"] = str(sb.cgroups.dirs[0]) if sb.cgroups and sb.cgroups.dirs else None
        r = asyncio.run(sb.run(["id", "-u"], timeout=120))
        out["agent_uid"] = r.stdout.decode().strip()
        out["uid_map"] = Path(f"/proc/{sb.init_pid}/uid_map").read_text().split()
        out.update(asyncio.run(caps(sb)))
    finally:
        sb.destroy()
    out["leaf_left"] = bool(out.get("leaf") and Path(out["leaf"]).exists())
    out["state_left"] = sb.state.exists()
    return out


def s_rootless_layer() -> dict[str, Any]:
    """The cgroup layer alone, as uid 1000."""
    cfg = RedlineSandboxConfig(pids_max=16, memory_bytes=CAP_MEM)
    res: dict[str, Any] = {"uid": os.geteuid(), "containment": cg.preflight(cfg)}
    c = cg.Cgroups.for_sandbox(cfg, "0123456789ab")
    c.create(cfg.pids_max, cfg.memory_bytes, cfg.cpu_weight)
    # Long sleeps (killed below): the count is taken once the cap has refused a fork and the count
    # stopped growing, however slow the emulation is.
    script = "for i in $(seq 40); do sleep 600 & done 2>/dev/null; sleep 600"
    p = subprocess.Popen([*cg.join_prefix(c.procs_files(), c.rlimits), "/bin/sh", "-c", script],
                         start_new_session=True)
    deadline, last, still = time.monotonic() + 300, -1, 0
    while time.monotonic() < deadline and still < 10:
        n = len(c.pids())
        capped = (c.events().get("pids_max") or 0) >= 1
        still = still + 1 if capped and n == last else 0
        last = n
        time.sleep(0.2)
    res["members"] = len(c.pids())
    res["events"] = c.events()
    c.kill_all()
    p.wait()
    c.remove()
    res["leaf_left"] = c.dirs[0].exists()
    return res


def delegate_mark() -> str | None:
    """systemd's mark on the cgroup this process started in (or its parent, once moved)."""
    d = Path("/sys/fs/cgroup") / cg.pl.own_cgroup().strip("/")
    if d.name == cg.pl.INIT_LEAF:
        d = d.parent
    try:
        return os.getxattr(d, "trusted.delegate").decode()
    except OSError:
        return None


def run(name: str, args: list[str]) -> dict[str, Any]:
    if name in ("plain", "svc", "container", "delegated-mark", "systemd-service", "systemd-scope"):
        res = sandbox_round()
        res["delegate_xattr"] = delegate_mark()
        return res
    if name == "ci-memory-only":
        res = sandbox_round()
        res["delegated_error"] = expect_error(cgroup_placement="delegated")
        cg._layouts.clear()
        res["weaker"] = sandbox_round(cgroup_placement="delegated", allow_weaker_containment=True)
        return res
    if name == "missing-pids":
        res = {"error": expect_error()}
        res["weaker"] = sandbox_round(allow_weaker_containment=True)
        return res
    if name == "sweep":
        return s_sweep()
    if name == "rootless":
        return s_rootless()
    if name in ("eval", "eval-job", "eval-svc"):
        return eval_log(Path(args[0]))
    raise SystemExit(f"unknown scenario {name}")


def eval_log(logdir: Path) -> dict[str, Any]:
    """The score of the eval guest.sh ran (read from the .eval log with Inspect's own reader)."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    logs = list_eval_logs(str(logdir))
    if not logs:
        return {"logs": 0}
    log = read_eval_log(logs[0])
    samples = log.samples or []
    return {"logs": len(logs), "status": log.status,
            "scores": [{k: v.value for k, v in (s.scores or {}).items()} for s in samples],
            "containment": [s.metadata.get("redline", {}).get("containment") for s in samples]}


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    t0 = time.monotonic()
    try:
        res = run(name, args)
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 - every failure becomes data for the host test
        res = {"ok": False, "error_type": type(e).__name__, "error": str(e),
               "traceback": traceback.format_exc()[-3000:]}
    res["scenario"] = name
    res["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
