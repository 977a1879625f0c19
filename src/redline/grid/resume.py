"""What is finished, and what a killed run left behind, in a folder of Inspect logs.

`eval_set` decides what is finished and resumes the rest; this module only closes the gaps it
leaves to its caller, using its own helpers:

- `eval_set` never removes a `started` log written by another process, because nothing on disk
  says that process is dead. A run killed mid-way (a Ray node that died, a Ctrl-C, a SIGKILL)
  leaves such a log; the retry resumes from it and writes a new, complete one, and the report
  would then count the trials of both. The grid knows the old writer is dead (it holds the
  folder's lock, or Ray only reruns a shard after its worker died), so after a successful run it
  asks `eval_set`'s own `cleanup_older_eval_logs` to treat every run in the folder as its own:
  the newest log of each task stays, the rest go.
- A `.eval` file whose header cannot be read makes `eval_set` fail for the whole folder. Such a
  file is renamed to `<name>.damaged` (Inspect and the report then skip it) and its trials run
  again.
- A Ray driver must know which shards are finished without starting them (a model such as
  `vllm/...` would load its weights just to find out). A shard that finished writes
  `shard.json`: its identity and its log. The shard is finished while that log is still there,
  still `success`, still the same task, and alone in the folder; anything else, and the shard
  runs, and `eval_set` decides.

Paths are local paths or any fsspec URL that Inspect accepts.
"""

from __future__ import annotations

import json
from typing import Any

RECORD = "shard.json"


def _fs(path: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(path)


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return bool(fs.exists(p))


def log_files(folder: str) -> list[str]:
    """The `.eval`/timestamped `.json` logs under `folder` (recursively), as Inspect lists them."""
    from inspect_ai.log import list_eval_logs

    if not exists(folder):
        return []
    return [info.name for info in list_eval_logs(folder)]


def read_header(log: str) -> Any | None:
    from inspect_ai.log import read_eval_log

    try:
        return read_eval_log(log, header_only=True)
    except Exception:  # damaged, truncated, or gone
        return None


def set_aside_damaged(folder: str) -> list[str]:
    """Rename logs whose header cannot be read to `<name>.damaged`; returns their names."""
    moved = []
    for log in log_files(folder):
        if read_header(log) is None and exists(log):
            fs, p = _fs(log)
            fs.mv(p, p + ".damaged")
            moved.append(log)
    return moved


def drop_superseded(folder: str, task_ids: set[str]) -> None:
    """Keep only the newest log of each of `task_ids` in `folder` (the caller is its only writer)."""
    from inspect_ai._eval.evalset import cleanup_older_eval_logs, list_all_eval_logs

    run_ids = {log.header.eval.run_id for log in list_all_eval_logs(folder)}
    cleanup_older_eval_logs(folder, task_ids, owned_run_ids=run_ids)


def write_record(folder: str, key: str, log: str) -> None:
    from inspect_ai import task_identifier

    header = read_header(log)
    record = {"key": key, "log": log.removeprefix("file://"),
              "task_identifier": task_identifier(header, None) if header is not None else None}
    fs, p = _fs(folder)
    with fs.open(f"{p.rstrip('/')}/{RECORD}", "w") as f:
        json.dump(record, f, indent=1)


def read_record(folder: str) -> dict[str, Any] | None:
    fs, p = _fs(folder)
    try:
        with fs.open(f"{p.rstrip('/')}/{RECORD}", "r") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def shard_finished(folder: str, key: str) -> bool:
    """True when the shard of identity `key` finished in `folder` and nothing since changed that."""
    from inspect_ai import task_identifier

    record = read_record(folder)
    if record is None or record.get("key") != key or not isinstance(record.get("log"), str):
        return False
    logs = [name.removeprefix("file://") for name in log_files(folder)]
    if logs != [record["log"]]:
        return False
    header = read_header(record["log"])
    return (header is not None and header.status == "success" and not header.invalidated
            and task_identifier(header, None) == record.get("task_identifier"))


def finished_samples(folder: str) -> int:
    """Samples already in the newest log of `folder` (what a resumed run will not redo)."""
    from inspect_ai.log import read_eval_log_sample_summaries

    logs = log_files(folder)
    if not logs:
        return 0
    try:
        return sum(1 for s in read_eval_log_sample_summaries(logs[0]) if s.error is None)
    except Exception:  # a log being written, or damaged: no estimate
        return 0


def counts(log: str) -> tuple[int, int]:
    """(scored, errored) samples of a log."""
    from inspect_ai.log import read_eval_log_sample_summaries

    try:
        summaries = read_eval_log_sample_summaries(log)
    except Exception:
        return 0, 0
    errored = sum(1 for s in summaries if s.error is not None)
    return len(summaries) - errored, errored
