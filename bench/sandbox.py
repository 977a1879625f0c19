"""Sandbox speed: redline vs Inspect's `local` sandbox, measured in the same run.

Prints medians of N rounds of create+destroy and of exec(["true"]), their ratios, and ends with
`figure <name> <value> <unit>` lines (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from inspect_ai.util._sandbox.local import LocalSandboxEnvironment

from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment


async def lifecycle_ms(cls, config, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        envs = await cls.sample_init("bench", config, {})
        await cls.sample_cleanup("bench", config, envs, False)
        out.append((time.perf_counter() - t) * 1000)
    return out


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


async def main(n: int) -> None:
    cfg = RedlineSandboxConfig()
    await lifecycle_ms(RedlineSandboxEnvironment, cfg, 3)  # warm-up (imports, startup sweep)
    rows = {
        "redline": (await lifecycle_ms(RedlineSandboxEnvironment, cfg, n),
                    await exec_ms(RedlineSandboxEnvironment, cfg, n)),
        "local": (await lifecycle_ms(LocalSandboxEnvironment, None, n),
                  await exec_ms(LocalSandboxEnvironment, None, n)),
    }
    med = {k: (statistics.median(a), statistics.median(b)) for k, (a, b) in rows.items()}
    print(f"{'sandbox':10} {'create+destroy ms':>18} {'exec(true) ms':>14}   (median of {n})")
    for k, (c, e) in med.items():
        print(f"{k:10} {c:18.2f} {e:14.2f}")
    rc, re_ = med["redline"]
    lc, le = med["local"]
    print(f"ratio redline/local: create+destroy {rc / lc:.1f}x, exec {re_ / le:.2f}x")
    print(f"figure sandbox_create_destroy_ms {rc:.2f} ms")
    print(f"figure sandbox_exec_true_ms {re_:.2f} ms")
    print(f"figure local_create_destroy_ms {lc:.2f} ms")
    print(f"figure local_exec_true_ms {le:.2f} ms")
    print(f"figure create_destroy_ratio_vs_local {rc / lc:.2f} x")
    print(f"figure exec_ratio_vs_local {re_ / le:.2f} x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=50, help="rounds per measurement")
    asyncio.run(main(ap.parse_args().n))
