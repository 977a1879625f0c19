"""Host files: invisible, unreadable and unwritable from inside, and no harness secret inside."""

from __future__ import annotations

from redline.containment.case import NotApplicable, case, first, refused
from redline.containment.context import Ctx
from redline.containment.host import shadow_users_in
from redline.containment.lab import host_usr_local

# What a sandbox's /dev may hold: bwrap's minimal set, never a host disk or kernel memory.
DEV_ALLOWED = {"console", "core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
               "stdout", "tty", "urandom", "zero", "mqueue"}


HOST_USR_LOCAL = host_usr_local()


@case("files-host-secret", "files", fast=True, probes=("read_paths",),
      attack="read a host file (mode 0644) by its host path",
      check="the host secret in it never appears inside")
async def host_secret(ctx: Ctx) -> str | None:
    out = await ctx.probe("main", "read_paths")
    res = out[str(ctx.lab.dir / "secret.txt")]
    return first(ctx.lab.leaks(res), "the host file is readable inside" if res.get("ok") else None)


@case("files-etc-shadow", "files", fast=True, probes=("read_paths",),
      attack="read /etc/shadow",
      check="no line of the host's /etc/shadow comes back",
      local="the lab runs `local` as an unprivileged host uid, which cannot read /etc/shadow either")
async def etc_shadow(ctx: Ctx) -> str | None:
    res = (await ctx.probe("main", "read_paths"))["/etc/shadow"]
    if not res.get("ok"):
        return None
    leaked = shadow_users_in(res.get("data", ""))
    return f"host /etc/shadow lines readable inside (users {leaked[:5]})" if leaked else None


@case("files-host-paths", "files", fast=True, probes=("exists",),
      attack="look for host paths: the harness's folders, its Python, its home, the canary folder",
      check="none of them exists inside")
async def host_paths(ctx: Ctx) -> str | None:
    seen = [p for p, there in (await ctx.probe("main", "exists")).items() if there]
    return f"host paths visible inside: {seen}" if seen else None


@case("files-drop-host", "files", fast=True, probes=("drop_files",),
      attack="create files in a host folder of mode 0777 (by host path), /tmp, /var/tmp, /dev/shm, /run",
      check="no such file appears on the host")
async def drop_host(ctx: Ctx) -> str | None:
    await ctx.probe("main", "drop_files")
    found = ctx.lab.dropped()
    return f"agent files appeared on the host: {found}" if found else None


@case("files-usr-readonly", "files", probes=("usr_write",),
      attack="create a file in /usr/bin",
      check="the write fails and nothing appears in the host's /usr/bin",
      local="the lab runs `local` as an unprivileged host uid, which cannot write /usr either")
async def usr_readonly(ctx: Ctx) -> str | None:
    res = await ctx.probe("main", "usr_write")
    found = [p for p in ctx.lab.dropped() if p.startswith("/usr/")]
    return first(f"file appeared on the host: {found}" if found else None, refused(res, "write to /usr/bin"))


@case("files-harness-environ", "files", fast=True, probes=("environ", "proc_scan", "read_paths"),
      attack="read its own environment, /proc/1/environ and every readable /proc/*/environ",
      check="no harness variable (a planted secret, or any NAME=VALUE of the harness) is there")
async def harness_environ(ctx: Ctx) -> str | None:
    env = await ctx.probe("main", "environ")
    scan = await ctx.probe("main", "proc_scan")
    reads = await ctx.probe("main", "read_paths")
    return first(ctx.lab.leaks(env), ctx.lab.leaks([p.get("environ") for p in scan["procs"]]),
                 ctx.lab.leaks({k: v for k, v in reads.items() if k.endswith("environ")}))


@case("files-proc-root-walk", "files", probes=("proc_roots",),
      attack="walk /proc/*/root toward the host canary folder",
      check="no process root leads to a host path")
async def proc_root_walk(ctx: Ctx) -> str | None:
    hits = (await ctx.probe("main", "proc_roots"))["hits"]
    return f"/proc/PID/root of pids {hits[:5]} reaches the host" if hits else None


@case("files-dev-minimal", "files", fast=True, probes=("dev",),
      attack="list /dev for disks, kernel memory and host devices",
      check=f"/dev holds only {', '.join(sorted(DEV_ALLOWED))}")
async def dev_minimal(ctx: Ctx) -> str | None:
    extra = sorted(set((await ctx.probe("main", "dev"))["names"]) - DEV_ALLOWED)
    return f"host devices inside: {extra[:10]}" if extra else None


@case("files-usr-local", "files", probes=("usr_local",),
      attack="list /usr/local/bin and /usr/local/sbin (host-installed tools and secrets)",
      check="no host file from there is visible inside (the base is an allowlist)")
async def usr_local(ctx: Ctx) -> str | None:
    if not HOST_USR_LOCAL:
        raise NotApplicable("the host's /usr/local/bin and /usr/local/sbin are empty")
    seen = (await ctx.probe("main", "usr_local"))["files"]
    return f"{len(seen)} host /usr/local files visible inside, e.g. {seen[:3]}" if seen else None
