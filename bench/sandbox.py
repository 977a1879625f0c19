"""Sandbox speed: redline (hardened, and with its user namespace and/or seccomp filter switched
off) vs Inspect's `local` sandbox, all measured in the same run.

Prints medians of N rounds of create+destroy and of exec(["true"]), the cost of the user
namespace and of the seccomp filter against the path without them, the ratios against `local`,
and ends with `figure <name> <value> <unit>` lines (see bench/README.md). The variants are
measured in interleaved rounds, so that load drifting on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def lifecycle_ms(cls, config) -> float:
    t = time.perf_counter()
    envs = await cls.sample_init("bench", config, {})
    await cls.sample_cleanup("bench", config, envs, False)
    return (time.perf_counter() - t) * 1000


async def exec_ms(cls, config, n: int) -> list[float]:
    envs = await cls.sample_init("bench", config, {})
    try:
        env = envs["default"]
        await env.exec(["true"])
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await env.exec(["true"])
            out.append((time.perf_counter() - t) * 1000)
            assert r.success
        return out
    finally:
        await cls.sample_cleanup("bench", config, envs, False)


async def measure(n: int) -> dict[str, tuple[float, float]]:
    cfgs: dict[str, tuple[type, object]] = {
        k: (RedlineSandboxEnvironment, RedlineSandboxConfig(**v)) for k, v in VARIANTS.items()
    }
    cfgs["local"] = (LocalSandboxEnvironment, None)
    for cls, cfg in cfgs.values():  # warm-up (imports, startup sweep, helper build)
        await lifecycle_ms(cls, cfg)
    life: dict[str, list[float]] = {k: [] for k in cfgs}
    execs: dict[str, list[float]] = {k: [] for k in cfgs}
    for _ in range(n):
        for k, (cls, cfg) in cfgs.items():
            life[k].append(await lifecycle_ms(cls, cfg))
    per_round = max(1, n // 5)
    for _ in range(5):
        for k, (cls, cfg) in cfgs.items():
            execs[k] += await exec_ms(cls, cfg, per_round)
    return {k: (statistics.median(life[k]), statistics.median(execs[k])) for k in cfgs}


def report(med: dict[str, tuple[float, float]], n: int) -> None:
    print(f"{'sandbox':12} {'create+destroy ms':>18} {'exec(true) ms':>14}   (medians, {n} rounds)")
    for k, (c, e) in med.items():
        print(f"{k:12} {c:18.2f} {e:14.2f}")
    hc, he = med["hardened"]
    oc, oe = med["neither"]
    lc, le = med["local"]
    userns = (med["no seccomp"][0] - oc, med["no seccomp"][1] - oe)
    secc = (med["no userns"][0] - oc, med["no userns"][1] - oe)
    print(f"cost of the user namespace: create+destroy {userns[0]:+.2f} ms, exec {userns[1]:+.2f} ms")
    print(f"cost of the seccomp filter: create+destroy {secc[0]:+.2f} ms, exec {secc[1]:+.2f} ms")
    print(f"hardened vs neither: create+destroy {hc / oc:.2f}x, exec {he / oe:.2f}x")
    print(f"ratio hardened/local: create+destroy {hc / lc:.1f}x, exec {he / le:.2f}x")
    print(f"figure sandbox_create_destroy_ms {hc:.2f} ms")
    print(f"figure sandbox_exec_true_ms {he:.2f} ms")
    print(f"figure unhardened_create_destroy_ms {oc:.2f} ms")
    print(f"figure unhardened_exec_true_ms {oe:.2f} ms")
    print(f"figure userns_cost_create_destroy_ms {userns[0]:.2f} ms")
    print(f"figure userns_cost_exec_ms {userns[1]:.2f} ms")
    print(f"figure seccomp_cost_create_destroy_ms {secc[0]:.2f} ms")
    print(f"figure seccomp_cost_exec_ms {secc[1]:.2f} ms")
    print(f"figure local_create_destroy_ms {lc:.2f} ms")
    print(f"figure local_exec_true_ms {le:.2f} ms")
    print(f"figure create_destroy_ratio_vs_local {hc / lc:.2f} x")
    print(f"figure exec_ratio_vs_local {he / le:.2f} x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=50, help="rounds per measurement")
    rounds = ap.parse_args().n
    report(asyncio.run(measure(rounds)), rounds)
