"""`grid.json` beside the logs: the grid's id, how it runs, and what each run did.

It also keeps one log directory to one way of running: a grid started locally (one eval set over
the whole directory) cannot be continued on Ray (one eval set per shard folder), or the other way
round, because each would misread the other's logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redline.grid import resume
from redline.grid.plan import join
from redline.grid.spec import Grid, GridError

MANIFEST = "grid.json"


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def read(log_dir: str) -> dict[str, Any] | None:
    fs, p = resume._fs(join(log_dir, MANIFEST))
    try:
        with fs.open(p, "r") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(log_dir: str, data: dict[str, Any]) -> None:
    fs, p = resume._fs(join(log_dir, MANIFEST))
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as f:
        json.dump(data, f, indent=1, default=str)


def check_mode(log_dir: str, mode: str) -> dict[str, Any] | None:
    """The manifest, if any; an error if the directory was started the other way."""
    data = read(log_dir)
    if data is not None and data.get("mode") not in (None, mode):
        other = "locally" if data.get("mode") == "local" else "on Ray"
        raise GridError([f"{log_dir}: this grid was started {other}; continue it the same way, or use a "
                         "fresh --log-dir"])
    return data


def begin(log_dir: str, grid: Grid, mode: str) -> dict[str, Any]:
    """The manifest for a run in `mode` ("local" or "ray"), created or continued."""
    data = check_mode(log_dir, mode)
    if data is None:
        data = {"grid_id": uuid.uuid4().hex[:22], "mode": mode, "runs": []}
    data["grid"] = grid.normalized()
    data["runs"].append({"started": time.time(), "ended": None})
    write(log_dir, data)
    return data


def finish(log_dir: str, data: dict[str, Any], **run: Any) -> None:
    data["runs"][-1].update(ended=time.time(), **run)
    write(log_dir, data)


@contextlib.contextmanager
def lock(log_dir: str) -> Iterator[None]:
    """Hold `LOG_DIR/.grid.lock` (local directories only): one grid run per directory at a time,
    so that whatever logs a dead run left are known to be dead. The kernel drops the lock when the
    holder dies, however it dies."""
    if not is_local(log_dir):
        yield
        return
    path = Path(log_dir.removeprefix("file://"))
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".grid.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GridError([f"{log_dir}: another redline grid is running on this directory"]) from None
        yield
    finally:
        os.close(fd)
