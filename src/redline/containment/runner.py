"""Run cases: groups side by side, the cases of a group one after the other, each under a limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from redline.containment.case import PHASES, Case, NotApplicable, Outcome
from redline.containment.context import Ctx, scaled
from redline.containment.lab import HostLab

# Known weaknesses of rootless mode (README, "Running without root"): reported, not failures.
ROOTLESS_GAPS = {
    "x-inotify": "rootless mode: every sandbox of a user has the user's one host uid, and the kernel "
                 "charges inotify instances to it at the host level",
}


async def run_one(ctx: Ctx, c: Case) -> Outcome:
    gap = c.gap or (ROOTLESS_GAPS.get(c.name) if ctx.rootless else None)
    if ctx.kind != "redline" and c.local:
        return Outcome(c.name, c.category, "n/a", f"not for {ctx.kind}: {c.local}", 0.0, gap)
    t0 = time.monotonic()
    try:
        evidence = await asyncio.wait_for(c.fn(ctx), scaled(c.timeout))
        status, text = ("breach", evidence) if evidence else ("contained", "")
    except NotApplicable as e:
        status, text = "n/a", str(e)
    except TimeoutError:
        status, text = "error", f"the case did not finish within {scaled(c.timeout):.0f} s"
    except Exception as e:  # noqa: BLE001 - a broken case is a failed case, with its reason
        status, text = "error", f"{type(e).__name__}: {e}"
    return Outcome(c.name, c.category, status, text, round(time.monotonic() - t0, 3), gap)  # type: ignore[arg-type]


async def run_cases(kind: str, config: Any, cases: list[Case], small_caps: dict[str, int] | None = None,
                    on_result: Callable[[Outcome], None] | None = None,
                    lab: HostLab | None = None) -> list[Outcome]:
    """Run `cases` against fresh `kind` sandboxes made with `config`; every sandbox is gone after.
    `lab` (closed at the end) defaults to a fresh one; every marker the cases use holds its run id."""
    lab = lab or HostLab()
    ctx = Ctx(kind, config, lab, cases, small_caps)
    results: dict[str, Outcome] = {}

    async def group(members: list[Case]) -> None:
        for c in members:
            results[c.name] = await run_one(ctx, c)
            if on_result is not None:
                on_result(results[c.name])

    try:
        for phase in PHASES:
            await asyncio.gather(*(group([c for c in cases if c.group == g]) for g in phase))
    finally:
        try:
            await ctx.close()
        finally:
            lab.close()
    return [results[c.name] for c in cases]
