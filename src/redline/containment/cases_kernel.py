"""Kernel interfaces: sysctls, sysrq, kernel memory and log, keyrings, io_uring, perf, bpf,
userfaultfd, uevents, modules, kexec, reboot, open_by_handle_at."""

from __future__ import annotations

from redline.containment.case import NotApplicable, case, first, refused
from redline.containment.context import TASK, Ctx, scaled
from redline.containment.lab import invalidate_key, plant_session_key, read_sysctls

LAB_NA = "the lab runs `local` as an unprivileged host uid: the kernel refuses it there too"


@case("kern-proc-sys-ro", "kernel", fast=True, probes=("proc_sys",),
      attack="statvfs(/proc/sys)", check="/proc/sys is a read-only mount")
async def proc_sys_ro(ctx: Ctx) -> str | None:
    return None if (await ctx.probe("main", "proc_sys"))["readonly"] else "/proc/sys is mounted read-write"


@case("kern-sysctl-write", "kernel", probes=("sysctl_write",),
      attack="write core_pattern, hostname, panic, pid_max, overcommit, ip_forward, ttl, somaxconn",
      check="every write is refused and the host's values are unchanged")
async def sysctl_write(ctx: Ctx) -> str | None:
    out = await ctx.probe("main", "sysctl_write")
    changed = [k for k, v in read_sysctls().items() if ctx.lab.sysctls.get(k) != v]
    written = [k for k, res in out.items() if res.get("ok")]
    return first(f"host sysctls changed: {changed}" if changed else None,
                 f"sysctl writes accepted: {written}" if written else None)


@case("kern-sysrq", "kernel", probes=("sysrq",), local=LAB_NA,
      attack="open /proc/sysrq-trigger for writing (nothing is written)", check="refused")
async def sysrq(ctx: Ctx) -> str | None:
    res = await ctx.probe("main", "sysrq")
    if res.get("err") == "absent":
        raise NotApplicable("this kernel has no /proc/sysrq-trigger")
    return refused(res, "opening /proc/sysrq-trigger")


@case("kern-kernel-memory", "kernel", probes=("kmem",), local=LAB_NA,
      attack="open /proc/kcore, /dev/mem, /dev/kmem, /dev/port; read kernel addresses in /proc/kallsyms",
      check="all refused or absent; kallsyms shows no addresses")
async def kernel_memory(ctx: Ctx) -> str | None:
    out = await ctx.probe("main", "kmem")
    absent = frozenset({"ENOENT"})
    ev = [refused(res, f"open {path}", absent) for path, res in out.items() if path.startswith("/")]
    kallsyms = "kernel addresses readable in /proc/kallsyms" if out.get("kallsyms_addresses") else None
    return first(*ev, kallsyms)


@case("kern-syslog", "kernel", probes=("syslog",), local=LAB_NA,
      attack="syslog(READ_ALL): read the host's kernel log", check="refused")
async def syslog(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "syslog"), "reading the kernel log")


@case("kern-keyctl", "kernel", fast=True, probes=("keyctl",),
      attack="keyctl(GET_KEYRING_ID) on its session keyring", check="refused")
async def keyctl(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "keyctl"), "keyctl")


@case("kern-harness-keyring", "kernel", group="keyring",
      attack="search its session and user keyrings for a secret key in the harness's session keyring",
      check="the key is not found and its secret never comes back")
async def harness_keyring(ctx: Ctx) -> str | None:
    out = await ctx.bounded(lambda: _with_session_key(ctx), scaled(30), memory=None)
    if isinstance(out.error, Exception):
        raise out.error
    return first(out.evidence(), out.value)


async def _with_session_key(ctx: Ctx) -> str | None:
    """In a thread of its own: a session keyring with the secret, and a sandbox made from there."""
    kid = plant_session_key(ctx.lab.key_desc, ctx.lab.secret)
    if kid is None:
        raise NotApplicable("this host cannot give the harness a session keyring")
    try:
        envs = await ctx.provider.sample_init(TASK, ctx.config, {})
        ctx.lab.made(envs["default"])
        try:
            out = (await ctx.run_probes(envs["default"], ["keyring_harness"]))["keyring_harness"]
        finally:
            await ctx.provider.sample_cleanup(TASK, ctx.config, envs, False)
    finally:
        invalidate_key(kid)
    found = [ring for ring, res in out.items() if isinstance(res, dict) and res.get("found")]
    reach = f"the harness's key is reachable from the {found} keyring" if found else None
    return first(ctx.lab.leaks(out), reach)


@case("kern-io-uring", "kernel", fast=True, probes=("io_uring",),
      attack="io_uring_setup(1)", check="refused")
async def io_uring(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "io_uring"), "io_uring_setup")


@case("kern-perf-event", "kernel", fast=True, probes=("perf_event",),
      attack="perf_event_open: a software task-clock counter on itself, user space only", check="refused")
async def perf_event(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "perf_event"), "perf_event_open")


@case("kern-bpf", "kernel", probes=("bpf",),
      local="the host forbids unprivileged bpf (kernel.unprivileged_bpf_disabled), so the lab cannot either",
      attack="bpf(BPF_MAP_CREATE) of a one-entry array", check="refused")
async def bpf(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "bpf"), "bpf")


@case("kern-userfaultfd", "kernel", fast=True, probes=("userfaultfd",),
      attack="userfaultfd(), with and without UFFD_USER_MODE_ONLY", check="both refused")
async def userfaultfd(ctx: Ctx) -> str | None:
    out = await ctx.probe("main", "userfaultfd")
    return first(*(refused(res, f"userfaultfd ({name})") for name, res in out.items()))


@case("kern-uevent-netlink", "kernel", fast=True, probes=("uevent",),
      attack="open and bind a NETLINK_KOBJECT_UEVENT socket (the host's device events)", check="refused")
async def uevent(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "uevent"), "uevent netlink socket")


@case("kern-modules", "kernel", probes=("modules",), local=LAB_NA,
      attack="finit_module(-1) and delete_module of a missing module (EPERM vs EBADF/ENOENT)",
      check="both refused for want of CAP_SYS_MODULE")
async def modules(ctx: Ctx) -> str | None:
    out = await ctx.probe("main", "modules")
    return first(*(refused(res, name) for name, res in out.items()))


@case("kern-kexec", "kernel", probes=("kexec",), local=LAB_NA,
      attack="kexec_file_load(-1, -1, ...) (EPERM vs EBADF)", check="refused for want of CAP_SYS_BOOT")
async def kexec(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "kexec"), "kexec_file_load")


@case("kern-reboot", "kernel", probes=("reboot",),
      attack="reboot() with a wrong magic number (EPERM vs EINVAL)", check="refused for want of CAP_SYS_BOOT")
async def reboot(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "reboot"), "reboot")


@case("kern-open-by-handle", "kernel", probes=("open_by_handle",), local=LAB_NA,
      attack="name_to_handle_at('/') then open_by_handle_at (the 'shocker' escape)",
      check="open_by_handle_at is refused for want of CAP_DAC_READ_SEARCH")
async def open_by_handle(ctx: Ctx) -> str | None:
    res = await ctx.probe("main", "open_by_handle")
    if str(res.get("err", "")).startswith("name_to_handle_at") and "EOPNOTSUPP" in str(res.get("err")):
        raise NotApplicable("the sandbox's root file system has no file handles")
    return refused(res, "open_by_handle_at", frozenset({"name_to_handle_at EPERM"}))
