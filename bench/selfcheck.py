"""Containment self-check cost: the fast subset (before every eval) and the whole escape suite.

Baseline, measured in the same run: one sandbox lifecycle as a sample pays it (create, one
`exec(["true"])`, destroy). Prints medians and ends with `figure <name> <value> <unit>` lines
(see bench/README.md). Goal: the fast subset under 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from redline import selfcheck
from redline.containment import CASES
from redline.sandbox import RedlineSandboxConfig, RedlineSandboxEnvironment


async def lifecycle_s(cfg: RedlineSandboxConfig, n: int) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        envs = await RedlineSandboxEnvironment.sample_init("bench", cfg, {})
        await envs["default"].exec(["true"])
        await RedlineSandboxEnvironment.sample_cleanup("bench", cfg, envs, False)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


async def main(n: int, full: bool) -> None:
    cfg = RedlineSandboxConfig(state_root=tempfile.mkdtemp(prefix="redline-bench-"))
    base = await lifecycle_s(cfg, 5)
    fast = [(await selfcheck.run(cfg))["seconds"] for _ in range(n)]
    fast_s = statistics.median(fast)
    print(f"sandbox lifecycle (create, exec true, destroy), median of 5: {base * 1000:.1f} ms")
    print(f"fast subset ({len(selfcheck.fast_cases())} cases), median of {n}: {fast_s:.2f} s "
          f"({fast_s / base:.0f}x one lifecycle); runs: {', '.join(f'{s:.2f}' for s in fast)}")
    print(f"figure selfcheck_fast_s {fast_s:.2f} s")
    print(f"figure selfcheck_fast_vs_lifecycle {fast_s / base:.1f} x")
    if full:
        t = time.perf_counter()
        result = await selfcheck.run(cfg, list(CASES), subset="full")
        wall = time.perf_counter() - t
        print(f"full escape suite ({result['cases']} cases): {wall:.1f} s")
        print(f"figure escape_suite_full_s {wall:.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="runs of the fast subset")
    ap.add_argument("--no-full", action="store_true", help="skip the whole suite")
    args = ap.parse_args()
    asyncio.run(main(args.n, not args.no_full))
