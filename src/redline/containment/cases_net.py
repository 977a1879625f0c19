"""Network: only `lo`, no route out, host listeners unreachable, no raw or vsock sockets."""

from __future__ import annotations

from redline.containment.case import NotApplicable, case, refused
from redline.containment.context import Ctx


@case("net-only-lo", "network", fast=True, probes=("ifaces",),
      attack="list the network interfaces",
      check="the sandbox has `lo` and nothing else")
async def only_lo(ctx: Ctx) -> str | None:
    names = (await ctx.probe("main", "ifaces"))["names"]
    return None if names == ["lo"] else f"interfaces inside: {names}"


@case("net-no-route", "network", fast=True, probes=("routes",),
      attack="connect UDP sockets to 192.0.2.1 and 2001:db8::1 (routes out)",
      check="both fail: there is no route beyond loopback")
async def no_route(ctx: Ctx) -> str | None:
    out = await ctx.probe("main", "routes")
    for addr, res in out.items():
        if res.get("ok"):
            return f"a route to {addr} exists"
    return None


async def _listener_case(ctx: Ctx, probe: str, listener: str) -> str | None:
    if listener not in ctx.lab.sockets:
        raise NotApplicable(f"the host has no {listener} listener (no such address family)")
    res = await ctx.probe("main", probe)
    seen = ctx.lab.connections()[listener]
    if seen:
        return f"the host {listener} listener saw {seen} connection(s)"
    if res.get("ok") and listener != "udp4":
        return f"connected to something at the host {listener} address"
    return None


@case("net-host-tcp4", "network", fast=True, probes=("host_tcp4",),
      attack="connect to the harness's TCP listener on 127.0.0.1:PORT",
      check="the host listener never sees a connection")
async def host_tcp4(ctx: Ctx) -> str | None:
    return await _listener_case(ctx, "host_tcp4", "tcp4")


@case("net-host-tcp6", "network", fast=True, probes=("host_tcp6",),
      attack="connect to the harness's TCP listener on [::1]:PORT",
      check="the host listener never sees a connection")
async def host_tcp6(ctx: Ctx) -> str | None:
    return await _listener_case(ctx, "host_tcp6", "tcp6")


@case("net-host-udp4", "network", probes=("host_udp4",),
      attack="send a datagram to the harness's UDP socket on 127.0.0.1:PORT",
      check="the host socket never receives it")
async def host_udp4(ctx: Ctx) -> str | None:
    return await _listener_case(ctx, "host_udp4", "udp4")


@case("net-abstract-unix", "network", fast=True, probes=("host_abstract",),
      attack="connect to the harness's abstract Unix socket by name",
      check="the host listener never sees a connection (abstract sockets belong to the net namespace)")
async def abstract_unix(ctx: Ctx) -> str | None:
    return await _listener_case(ctx, "host_abstract", "abstract")


@case("net-host-unix-path", "network", probes=("host_unix_path",),
      attack="connect to a host Unix socket (mode 0777) by its host path",
      check="the host listener never sees a connection")
async def unix_path(ctx: Ctx) -> str | None:
    return await _listener_case(ctx, "host_unix_path", "unix_path")


@case("net-host-ports-hidden", "network", probes=("proc_net",),
      attack="read /proc/net/tcp, tcp6, udp and udp6",
      check="none of the host canary ports is listed")
async def ports_hidden(ctx: Ctx) -> str | None:
    ports = set((await ctx.probe("main", "proc_net"))["ports"])
    mine = {s.getsockname()[1] for n, s in ctx.lab.sockets.items() if n in ("tcp4", "tcp6", "udp4")}
    both = sorted(ports & mine)
    return f"host ports visible inside: {both}" if both else None


@case("net-raw-socket", "network", fast=True, probes=("raw_sockets",),
      attack="open a raw ICMP socket",
      check="socket() is refused (no CAP_NET_RAW)")
async def raw_socket(ctx: Ctx) -> str | None:
    return refused((await ctx.probe("main", "raw_sockets"))["inet_raw"], "raw IPv4 socket")


@case("net-packet-socket", "network", probes=("raw_sockets",),
      attack="open an AF_PACKET socket (sniff or forge frames)",
      check="socket() is refused")
async def packet_socket(ctx: Ctx) -> str | None:
    return refused((await ctx.probe("main", "raw_sockets"))["packet"], "AF_PACKET socket")


@case("net-vsock", "network", probes=("vsock",),
      attack="create an AF_VSOCK socket (vsock is not network-namespaced: it reaches the hypervisor "
             "host and host vsock services whatever the netns)",
      check="socket() is refused (only created, never connected)")
async def vsock(ctx: Ctx) -> str | None:
    return refused(await ctx.probe("main", "vsock"), "AF_VSOCK socket", also=frozenset({"ENODEV"}))
