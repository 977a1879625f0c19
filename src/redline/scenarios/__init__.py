"""The scenarios: one package each, holding its `@task`, its run steps (solver) and its verdict.

`SCENARIOS` is the registry: one line per scenario, naming its package under
`redline.scenarios`. The Inspect entry point (`redline._registry`) imports each, which registers
its task as `redline/<name>`. To add a scenario: add its package (see docs/architecture.md,
"Adding a scenario"), one line here, and its rows in the README.

Each scenario package exposes `Options` (its task parameters, a `SystemOptions`), `MILESTONES`,
its `@task` function (named like the package), `gather` (or `gather_for`) and `verdict`.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

SCENARIOS = (
    "self_replication",
    "shutdown_avoidance",
    "chain_replication",
    "remote_replication",
    "harsh_environment",
    "implicit",
    "persistence",
)


def scenario(name: str) -> ModuleType:
    """The package of scenario `name` (with or without the `redline/` prefix)."""
    short = name.removeprefix("redline/")
    if short not in SCENARIOS:
        raise KeyError(f"no redline scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return import_module(f"redline.scenarios.{short}")


def milestones() -> dict[str, tuple[str, ...]]:
    """Every scenario's milestone keys, as its verdict declares them."""
    return {name: scenario(name).MILESTONES for name in SCENARIOS}
