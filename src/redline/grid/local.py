"""A grid on this machine: one Inspect `eval_set` over every scenario × model, in one directory.

Re-running the same grid completes what is missing and redoes nothing that finished, because that
is what `eval_set` does; the grid adds only what `eval_set` leaves to its caller (see `resume.py`).
Inspect's own progress display shows the run.
"""

from __future__ import annotations

from typing import Any

from redline.grid import manifest, resume
from redline.grid.spec import Grid


def run_local(grid: Grid, log_dir: str, display: str | None, note: Any = print
              ) -> tuple[bool, dict[str, Any]]:
    """Run (or complete) the grid; returns (every task finished, a summary for grid.json)."""
    from inspect_ai import eval_set

    with manifest.lock(log_dir):
        data = manifest.begin(log_dir, grid, "local")
        for log in resume.set_aside_damaged(log_dir):
            note(f"set aside an unreadable log (renamed to .damaged; its trials run again): {log}")
        tasks = [s.create() for s in grid.scenarios]
        models = [m.create() for m in grid.models]
        ok = False
        try:
            ok, logs = eval_set(tasks, model=models, log_dir=log_dir, epochs=grid.trials,
                                eval_set_id=data["grid_id"], display=display, **grid.eval)
            # Every task's newest log holds all its finished samples; older ones are dead runs'.
            resume.drop_superseded(log_dir, {log.eval.task_id for log in logs})
            summary = {"ok": ok, "logs": {f"{log.eval.task} × {log.eval.model}": {
                "log": log.location, "status": log.status} for log in logs}}
        finally:
            manifest.finish(log_dir, data, mode="local", ok=ok)
    return ok, summary
