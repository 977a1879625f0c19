"""Running one shard: an Inspect eval set of one task × one model × a slice of trials, in its folder.

This is the body of a grid's Ray task. It resumes whatever an earlier attempt left in the folder
(`eval_set` does), and after a successful run leaves exactly one log there (`resume.py`). It
returns a plain dict, the driver's only source of truth about the shard.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from redline.grid import resume


def _node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())
    except Exception:  # Ray not installed
        pass
    return "local"


def _evaluate(payload: dict[str, Any]) -> Any:
    from inspect_ai import eval_set

    from redline.grid.spec import ModelSpec, ScenarioSpec

    task = ScenarioSpec(label="", task=payload["task"], args=payload["task_args"]).create()
    model = ModelSpec(label="", name=payload["model"], base_url=payload["base_url"],
                      args=payload["model_args"], config=payload["model_config"]).create()
    _, logs = eval_set([task], model=[model], log_dir=payload["folder"], epochs=payload["epochs"],
                       display="none", eval_set_id=payload["eval_set_id"], **payload["eval_options"])
    return logs[0]


def run_shard(payload: dict[str, Any], book: Any = None) -> dict[str, Any]:
    """Run the shard described by `payload` (see `plan.Shard.payload`); report to `book` if given."""
    from redline.grid import progress

    started = time.time()
    folder = payload["folder"]
    result: dict[str, Any] = {"id": payload["id"], "ok": False, "node": _node_ip(), "pid": os.getpid(),
                              "started_at": started, "eval_seconds": None,
                              "log": None, "status": None, "done": 0, "errored": 0, "error": None,
                              "damaged": resume.set_aside_damaged(folder)}
    if book is not None:
        token = uuid.uuid4().hex
        reused = resume.finished_samples(folder)
        book.attempt.remote(payload["id"], token, result["node"], os.getpid(), reused)
        progress.activate(progress.Reporter(book, payload["id"], token))
    try:
        t = time.monotonic()
        log = _evaluate(payload)
        result["eval_seconds"] = time.monotonic() - t
    except Exception as e:  # an error of the set-up (Inspect's prerequisites, the model's creation)
        result["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return result
    finally:
        progress.activate(None)
    result.update(log=log.location, status=log.status)
    result["done"], result["errored"] = resume.counts(log.location)
    # Also after a failure: the newest log holds every sample the older ones did.
    resume.drop_superseded(folder, {log.eval.task_id})
    if log.status != "success":
        err = getattr(log, "error", None)
        result["error"] = f"log status '{log.status}'" + (f": {err.message}" if err is not None else "")
        return result
    resume.write_record(folder, payload["key"], log.location)
    result["ok"] = True
    return result
