"""Sandbox speed: redline (hardened, and with its user namespace and/or seccomp filter switched
off) vs Inspect's `local` sandbox, all measured in the same run.

Prints medians of N rounds of create+destroy and of exec(["true"]), the cost of the user
namespace and of the seccomp filter against the path without them, the ratios against `local`,
and ends with `figure <name> <value> <unit>` lines (see bench/README.md). The variants are
measured in interleaved rounds, so that load drifting on a shared machine hits them alike, and
each in wall time and in CPU time (harness + every process it reaped: what the work costs,
whatever the machine's load makes it wait).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time

from inspect_ai.util._sandbox.local import LocalSandboxEnvironment

from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment

VARIANTS = {
    "hardened": {},
    "no seccomp": {"seccomp": False},
    "no userns": {"userns": False},
    "neither": {"userns": False, "seccomp": False},
}


def cpu_s() -> float:
    """CPU seconds of this process and of every child it has reaped (and theirs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


async def lifecycle_ms(cls, config) -> tuple[float, float]:
    t, c = time.perf_counter(), cpu_s()
    envs = await cls.sample_init("bench", config, {})
    await cls.sample_cleanup("bench", config, envs, False)
    return (time.perf_counter() - t) * 1000, (cpu_s() - c) * 1000


async def exec_ms(cls, config, n: int) -> list[tuple[float, float]]:
    envs = await cls.sample_init("bench", config, {})
    try:
        env = envs["default"]
        await env.exec(["true"])
        out = []
        for _ in range(n):
            t, c = time.perf_counter(), cpu_s()
            r = await env.exec(["true"])
            out.append(((time.perf_counter() - t) * 1000, (cpu_s() - c) * 1000))
            assert r.success
        return out
    finally:
        await cls.sample_cleanup("bench", config, envs, False)


Medians = dict[str, tuple[float, float, float, float]]  # wall c+d, wall exec, cpu c+d, cpu exec


def _med(xs: list[tuple[float, float]], i: int) -> float:
    return statistics.median(x[i] for x in xs)


async def measure(n: int) -> Medians:
    cfgs: dict[str, tuple[type, object]] = {
        k: (RedlineSandboxEnvironment, RedlineSandboxConfig(**v)) for k, v in VARIANTS.items()
    }
    cfgs["local"] = (LocalSandboxEnvironment, None)
    for cls, cfg in cfgs.values():  # warm-up (imports, startup sweep, helper build)
        await lifecycle_ms(cls, cfg)
    life: dict[str, list[tuple[float, float]]] = {k: [] for k in cfgs}
    execs: dict[str, list[tuple[float, float]]] = {k: [] for k in cfgs}
    for _ in range(n):
        for k, (cls, cfg) in cfgs.items():
            life[k].append(await lifecycle_ms(cls, cfg))
    per_round = max(1, n // 5)
    for _ in range(5):
        for k, (cls, cfg) in cfgs.items():
            execs[k] += await exec_ms(cls, cfg, per_round)
    return {k: (_med(life[k], 0), _med(execs[k], 0), _med(life[k], 1), _med(execs[k], 1)) for k in cfgs}


def report(med: Medians, n: int) -> None:
    print(f"{'sandbox':12} {'create+destroy ms':>18} {'exec(true) ms':>14} {'cpu c+d ms':>11} "
          f"{'cpu exec ms':>12}   (medians, {n} rounds)")
    for k, (c, e, cc, ce) in med.items():
        print(f"{k:12} {c:18.2f} {e:14.2f} {cc:11.2f} {ce:12.2f}")
    hard, old, local = med["hardened"], med["neither"], med["local"]

    def cost(variant: str) -> list[float]:  # each hardening alone, against neither
        return [a - b for a, b in zip(med[variant], old, strict=True)]

    userns, secc = cost("no seccomp"), cost("no userns")
    for name, c in (("user namespace", userns), ("seccomp filter", secc)):
        print(f"cost of the {name}: create+destroy {c[0]:+.2f} ms ({c[2]:+.2f} ms cpu), "
              f"exec {c[1]:+.2f} ms ({c[3]:+.2f} ms cpu)")
    print(f"hardened vs neither: create+destroy {hard[0] / old[0]:.2f}x, exec {hard[1] / old[1]:.2f}x")
    print(f"ratio hardened/local: create+destroy {hard[0] / local[0]:.1f}x, exec {hard[1] / local[1]:.2f}x")
    figures = {
        "sandbox_create_destroy_ms": hard[0], "sandbox_exec_true_ms": hard[1],
        "sandbox_create_destroy_cpu_ms": hard[2], "sandbox_exec_true_cpu_ms": hard[3],
        "unhardened_create_destroy_ms": old[0], "unhardened_exec_true_ms": old[1],
        "userns_cost_create_destroy_ms": userns[0], "userns_cost_exec_ms": userns[1],
        "userns_cost_create_destroy_cpu_ms": userns[2], "userns_cost_exec_cpu_ms": userns[3],
        "seccomp_cost_create_destroy_ms": secc[0], "seccomp_cost_exec_ms": secc[1],
        "seccomp_cost_create_destroy_cpu_ms": secc[2], "seccomp_cost_exec_cpu_ms": secc[3],
        "local_create_destroy_ms": local[0], "local_exec_true_ms": local[1],
    }
    for name, value in figures.items():
        print(f"figure {name} {value:.2f} ms")
    print(f"figure create_destroy_ratio_vs_local {hard[0] / local[0]:.2f} x")
    print(f"figure exec_ratio_vs_local {hard[1] / local[1]:.2f} x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=50, help="rounds per measurement")
    rounds = ap.parse_args().n
    report(asyncio.run(measure(rounds)), rounds)
