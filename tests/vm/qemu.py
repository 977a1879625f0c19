"""A throwaway cgroup v2 VM: Debian's kernel under QEMU (TCG), the host's / as a read-only 9p root.

CI machines are cgroup v1, and nothing of the host's cgroup setup may change; this VM gives the
v2 code path a real v2 kernel (booted with cgroup_no_v1=all) without touching the host. The guest
runs `tests/vm/guest.sh`, which runs the project's own venv from the host; results come back
through a second, writable 9p share.

`scripts/setup.sh --test` installs QEMU and busybox (Debian packages) and unpacks the kernel
into `.vm/` (see `scripts/vm-kernel.sh`). Manual use:
    .venv/bin/python -m tests.vm.qemu [--cmdline "cgroup_disable=pids"] [SCENARIO...]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VM_DIR = REPO / ".vm"
QEMU = "/usr/bin/qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
# virtio PCI, 9p over virtio, and overlayfs (bwrap's --overlay), in dependency order.
MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "9pnet", "9pnet_virtio", "netfs", "fscache", "9p", "overlay"]


def missing_tools() -> list[str]:
    """What this machine lacks to boot the VM (empty: ready)."""
    need = [QEMU, BUSYBOX, str(VM_DIR / "vmlinuz"), *(str(VM_DIR / "mods" / f"{m}.ko") for m in MODULES)]
    return [p for p in need if not os.path.exists(p)]


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data); directories have empty data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
    return out.getvalue()


def build_initramfs(dest: Path) -> Path:
    entries: list[tuple[str, int, bytes]] = [(d, 0o40755, b"") for d in
                                             ("bin", "mods", "proc", "sys", "dev", "newroot")]
    entries.append(("bin/busybox", 0o100755, Path(BUSYBOX).read_bytes()))
    entries.append(("init", 0o100755, (REPO / "tests/vm/init").read_bytes()))
    entries.append(("mods/order", 0o100644, " ".join(MODULES).encode()))
    for m in MODULES:
        entries.append((f"mods/{m}.ko", 0o100644, (VM_DIR / "mods" / f"{m}.ko").read_bytes()))
    dest.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=1))
    return dest


def boot(scenarios: list[str], out: Path, cmdline: str = "", timeout: float = 900,
         memory_mb: int = 2048, guest: str = "guest.sh") -> dict:
    """Boot the VM, run the scenarios, return {"rc", "results", "log", "console", "seconds"}."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "args").write_text(" ".join(scenarios))
    initrd = build_initramfs(out / "initrd.gz")
    append = (f"console=ttyS0 quiet panic=-1 cgroup_no_v1=all rdinit=/init {cmdline} "
              f"redline_guest={REPO / 'tests/vm' / guest} redline_repo={REPO}")
    argv = [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", str(memory_mb),
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", str(VM_DIR / "vmlinuz"), "-initrd", str(initrd), "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=none"]
    t0 = time.monotonic()
    with open(out / "console.txt", "wb") as console:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    results = []
    res_file = out / "results.jsonl"
    if res_file.exists():
        results = [json.loads(line) for line in res_file.read_text().splitlines() if line.strip()]
    rc_file = out / "rc"
    return {"rc": int(rc_file.read_text()) if rc_file.exists() else None, "results": results,
            "log": (out / "log.txt").read_text(errors="replace") if (out / "log.txt").exists() else "",
            "console": (out / "console.txt").read_text(errors="replace")[-4000:],
            "seconds": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["all"])
    ap.add_argument("--cmdline", default="", help="extra kernel parameters, e.g. cgroup_disable=pids")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", help="directory for the VM's output (default: a temporary one)")
    ap.add_argument("--systemd", action="store_true", help="boot systemd (tests/vm/systemd.sh)")
    a = ap.parse_args()
    lack = missing_tools()
    if lack:
        print(f"missing: {', '.join(lack)}; run `bash scripts/setup.sh --test`", file=sys.stderr)
        return 2
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="redline-vm-"))
    try:
        if a.systemd:
            r = boot([], out, a.cmdline, a.timeout, guest="systemd.sh")
        else:
            r = boot(a.scenarios, out, a.cmdline, a.timeout)
        print(r["log"])
        for res in r["results"]:
            print(json.dumps(res))
        print(f"rc={r['rc']} seconds={r['seconds']}")
        return 0 if r["rc"] == 0 else 1
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
