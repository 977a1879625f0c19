"""The trial's process genealogy, as the score's metadata carries it (schema: docs/architecture.md,
"Fields the report reads"): every process of the sandbox the kernel announced (fork, exec, exit),
identified by (pid, start), with its parent at fork time and its role, bounded in count.

The record comes from `redline.lineage` (root only); without it the field is left out, and the
report says "not recorded".
"""

from __future__ import annotations

from typing import Any

from redline.hostile import clean_cmdline
from redline.lineage import ProcRecord, Scope

MAX_ENTRIES = 500
ROLES = ("original_agent", "original_model_server", "replica_agent", "replica_model_server")

Roles = dict[tuple[int, int], str]  # (inside pid, start) -> role


def _entry(r: ProcRecord, parent: ProcRecord | None, role: str) -> dict[str, Any]:
    return {"pid": r.pid, "start": r.start,
            "ppid": parent.pid if parent is not None and parent.pid is not None else 0,
            "parent_start": parent.start if parent is not None else 0,
            "cmd": clean_cmdline(r.cmd), "t_fork": r.t_fork, "t_exec": r.t_exec, "t_exit": r.t_exit,
            "exit_code": r.exit_code, "role": role}


def genealogy(scope: Scope, roles: Roles) -> list[dict[str, Any]]:
    """At most MAX_ENTRIES processes: those with a role and their forebears first (the lines the
    report draws), then the others in fork order."""
    records = [r for r in scope.snapshot() if r.pid is not None]
    by_key = {r.key: r for r in records}
    chosen: dict[tuple[int, int], ProcRecord] = {}
    for r in records:
        if (r.pid, r.start) in roles:
            for x in [r, *scope.ancestors(r.key)]:
                if x.pid is not None:
                    chosen.setdefault(x.key, x)
    for r in sorted(records, key=lambda x: x.t_fork):
        if len(chosen) >= MAX_ENTRIES:
            break
        chosen.setdefault(r.key, r)
    out = [_entry(r, by_key.get(r.parent) if r.parent else None, roles.get((r.pid or 0, r.start), "other"))
           for r in chosen.values()]
    out.sort(key=lambda e: e["t_fork"])
    return out[:MAX_ENTRIES]
