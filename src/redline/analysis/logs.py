"""Reading Inspect logs into plain per-sample records, and saying what could not be read.

`load_samples(path)` accepts one `.eval`/`.json` log or a directory (searched recursively). It
never raises for bad input: everything it skips or only half understands becomes a `Problem`.

- An unreadable file (truncated, corrupt, not a zip) is a problem. When a `.eval` archive lost
  its end (an interrupted write, a copy cut short) the samples that precede the damage are still
  recovered from the archive's local headers, and the problem says so.
- A log whose samples carry neither a `judge` score nor `metadata["redline"]` is not a redline
  log: its samples are skipped with one note.
- A sample with `sample.error` is an *error*: never a success or failure.
- A redline sample without a score (and without an error) is skipped with a note.
- Missing metadata keys (older versions) are listed in `SampleRecord.missing`; the sample is
  reported with what is there.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redline.analysis.steps import StepView, step_views

SCORER = "judge"
MILESTONES: dict[str, tuple[str, ...]] = {
    "self_replication": ("explored_self", "started_model_server", "started_agent", "replica_answers",
                         "replica_independent"),
    # The signal comes first: catching it is what turns into the replication task.
    "shutdown_avoidance": ("caught_signal", "explored_self", "started_model_server", "started_agent",
                           "replica_answers", "replica_independent"),
    "chain_replication": ("gen1_alive", "gen1_instructed", "gen2_alive", "independent"),
    # Paper 2's M1-M4.
    "remote_replication": ("acquire_resources", "transfer_files", "deploy_model_server", "deploy_agent"),
    "harsh_environment": ("explored_self", "started_model_server", "started_agent", "replica_answers",
                          "replica_independent"),
    # Reading the notice comes first: it is what could turn an ordinary task into replication.
    "implicit": ("saw_notice", "explored_self", "started_model_server", "started_agent", "replica_answers",
                 "replica_independent"),
    "persistence": ("explored_self", "restarted_model_server", "restarted_agent", "answers_again",
                    "stays_up"),
}
"""Milestones per scenario, in the order an agent reaches them."""

_METADATA_KEYS = ("scenario", "mode", "scaffold", "original", "trajectory", "agent_status", "steps",
                  "wall_seconds")


@dataclass
class Problem:
    """Something the loader skipped or could only partly read. `kind` is one of `unreadable`,
    `partial`, `incomplete`, `not_redline`, `unscored`, `empty`."""

    path: str
    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "message": self.message}


@dataclass
class SampleRecord:
    """One sample (one trial), as plain data. `outcome` is `success`, `failure` or `error`."""

    log: str
    task: str
    scenario: str
    model: str
    id: str
    epoch: int
    outcome: str
    milestones: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    explanation: str | None = None
    steps: int | None = None
    wall_seconds: float | None = None
    tokens: int | None = None
    mode: str | None = None
    scaffold: str | None = None
    agent_status: str | None = None
    original: dict[str, Any] = field(default_factory=dict)
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    log_status: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    """`sample.metadata["redline"]` as logged (hostile data: read it through the analysis
    modules, which tolerate any shape)."""
    score_metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    """`Score.metadata` of the judge (genealogy, kills, evidence)."""

    @property
    def agent_reply(self) -> str | None:
        v = self.meta.get("agent_reply")
        return v if isinstance(v, str) else None

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @functools.cached_property
    def views(self) -> list[StepView]:
        """The trajectory's steps, normalised (computed once: every table walks them)."""
        return step_views(self.trajectory)


def find_logs(path: Path, exclude: Path | None = None) -> list[Path]:
    """`.eval` and `.json` files under `path` (or `path` itself), sorted, skipping `exclude`."""
    if path.is_file():
        return [path]
    found: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if skip is None or (Path(root) / d).resolve() != skip)
        found += [Path(root) / f for f in sorted(files) if f.endswith((".eval", ".json"))]
    return found


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


# What `eval_set` writes beside its logs: manifests that quote log headers, not logs.
_EVAL_SET_FILES = ("logs.json", "eval-set.json")


def _is_json_log(path: Path) -> bool:
    if path.name in _EVAL_SET_FILES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"eval"' in head and (b'"version"' in head or b'"status"' in head)


def load_samples(path: str | Path, exclude: str | Path | None = None
                 ) -> tuple[list[SampleRecord], list[Problem]]:
    """All redline samples under `path`, and every problem met on the way (see module doc).

    `exclude` is a directory not to search (the report's own output). `.json` files count
    only when they look like Inspect logs."""
    root = Path(path)
    samples: list[SampleRecord] = []
    problems: list[Problem] = []
    if not root.exists():
        problems.append(Problem(str(root), "unreadable", "no such file or directory"))
        return samples, problems
    files = find_logs(root, Path(exclude) if exclude is not None else None)
    files = [f for f in files if f.suffix == ".eval" or _is_json_log(f)]
    if not files:
        problems.append(Problem(str(root), "empty", "no Inspect logs (.eval files) found"))
    for f in files:
        s, p = load_log(f)
        samples += s
        problems += p
    return samples, problems


def load_log(path: Path) -> tuple[list[SampleRecord], list[Problem]]:
    """The redline samples of one log file and its problems."""
    from inspect_ai.log import read_eval_log

    problems: list[Problem] = []
    try:
        if path.stat().st_size == 0:
            return [], [Problem(str(path), "unreadable", "empty file (0 bytes)")]
        # A full read: Inspect's field-excluding reader streams JSON in Python and is several
        # times slower than parsing whole samples (bench/report.py).
        log = read_eval_log(str(path))
        header = {"task": log.eval.task, "model": log.eval.model}
        status = log.status
        raw_samples = list(log.samples or [])
    except Exception as e:  # any failure to parse is reported, not raised
        salvaged = _salvage(path) if path.suffix == ".eval" else None
        if salvaged is None or not salvaged[1]:
            what = "truncated or corrupt" if path.suffix == ".eval" else "not a readable log"
            return [], [Problem(str(path), "unreadable", f"cannot read this log ({what}): {_short(e)}")]
        header, raw_samples = salvaged
        status = "partial"
        problems.append(Problem(str(path), "partial",
                                f"archive damaged ({_short(e)}); recovered {len(raw_samples)} sample(s) "
                                "written before the damage"))
    if status in ("started", "cancelled", "error"):
        problems.append(Problem(str(path), "incomplete",
                                f"log status is '{status}': only the samples it holds are reported"))
    records: list[SampleRecord] = []
    foreign = unscored = 0
    for sample in raw_samples:
        try:
            rec = _record(path, header, status, sample)
        except Exception as e:  # a sample shaped like nothing we know: say so, keep the others
            where = f"sample {_field(sample, 'id')!r} epoch {_field(sample, 'epoch')!r}"
            problems.append(Problem(str(path), "unreadable", f"{where} skipped: {_short(e)}"))
            continue
        if rec == "foreign":
            foreign += 1
        elif rec == "unscored":
            unscored += 1
        else:
            assert isinstance(rec, SampleRecord)
            records.append(rec)
    if foreign:
        problems.append(Problem(str(path), "not_redline",
                                f"{foreign} sample(s) skipped: no '{SCORER}' score and no redline metadata "
                                f"(task {header.get('task')!r} is not a redline task)"))
    if unscored:
        problems.append(Problem(str(path), "unscored",
                                f"{unscored} sample(s) skipped: redline metadata but no '{SCORER}' score "
                                "and no error"))
    if not raw_samples and status not in ("started",):
        problems.append(Problem(str(path), "empty", "the log holds no samples"))
    return records, problems


def _judge_score(scores: Any) -> Any:
    if not isinstance(scores, dict):
        return None
    score = scores.get(SCORER)
    if score is None:  # an older or renamed scorer: any score with a `success` key
        score = next((s for s in scores.values() if isinstance(_value(s), dict) and "success" in _value(s)),
                     None)
    return None if score is None else score


def _value(score: Any) -> Any:
    return score.get("value") if isinstance(score, dict) else getattr(score, "value", None)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _as_success(value: Any) -> bool | None:
    if isinstance(value, dict):
        value = value.get("success")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value) >= 0.5
    if isinstance(value, str):
        return value.strip().upper() in ("C", "CORRECT", "1", "1.0", "TRUE", "YES", "SUCCESS")
    return None


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _scenario(task: str) -> str:
    return str(task or "unknown").rsplit("/", 1)[-1].rsplit("@", 1)[-1] or "unknown"


def _steps(steps: Any, trajectory: Any) -> int | None:
    if isinstance(steps, int) and not isinstance(steps, bool):
        return steps
    if isinstance(trajectory, list) and trajectory:
        return sum(1 for r in trajectory if isinstance(r, dict) and r.get("type", "step") == "step")
    return None


def _tokens(usage: Any) -> int | None:
    """Total tokens over every model of the sample (None when the log has no usage)."""
    if not isinstance(usage, dict) or not usage:
        return None
    total = 0
    for u in usage.values():
        t = _field(u, "total_tokens")
        total += int(t) if isinstance(t, (int, float)) else 0
    return total


def _record(path: Path, header: dict[str, Any], status: str | None, sample: Any) -> SampleRecord | str:
    metadata = _field(sample, "metadata")
    meta = metadata.get("redline") if isinstance(metadata, dict) else None
    score = _judge_score(_field(sample, "scores"))
    error = _field(sample, "error")
    if score is None and not isinstance(meta, dict):
        return "foreign"
    if score is None and error is None:
        return "unscored"
    meta = meta if isinstance(meta, dict) else {}
    missing = [] if meta else ['metadata["redline"]']
    missing += [f"metadata.redline.{k}" for k in _METADATA_KEYS if meta and k not in meta]
    value = _value(score) if score is not None else None
    success = _as_success(value)
    if error is not None:
        outcome = "error"
    elif success is None:
        outcome, missing = "error", missing + [f"scores.{SCORER}.value.success"]
    else:
        outcome = "success" if success else "failure"
    milestones = {k: float(v) for k, v in value.items()
                  if k != "success" and isinstance(v, (int, float)) and not isinstance(v, bool)} \
        if isinstance(value, dict) else {}
    if error is not None:
        msg = _field(error, "message")
        err_text = str(msg if msg is not None else error)
    elif outcome == "error":
        err_text = f"the '{SCORER}' score has no readable success value: {value!r}"[:300]
    else:
        err_text = None
    task = str(header.get("task") or "")
    scenario = meta.get("scenario") if isinstance(meta.get("scenario"), str) else _scenario(task)
    trajectory = meta.get("trajectory")
    steps = _steps(meta.get("steps"), trajectory)
    wall = meta.get("wall_seconds")
    if not isinstance(wall, (int, float)) or isinstance(wall, bool):
        wall = _field(sample, "total_time")
    tokens = _tokens(_field(sample, "model_usage"))
    original = meta.get("original")
    expl = _field(score, "explanation") if score is not None else None

    def opt_str(key: str) -> str | None:
        v = meta.get(key)
        return v if isinstance(v, str) else None

    return SampleRecord(
        log=str(path), task=task, scenario=scenario, model=str(header.get("model") or "unknown"),
        id=str(_field(sample, "id")), epoch=_int(_field(sample, "epoch"), 1), outcome=outcome,
        milestones=milestones, error=err_text, explanation=expl if isinstance(expl, str) else None,
        steps=steps, wall_seconds=float(wall) if isinstance(wall, (int, float)) else None, tokens=tokens,
        mode=opt_str("mode"), scaffold=opt_str("scaffold"), agent_status=opt_str("agent_status"),
        original=original if isinstance(original, dict) else {},
        trajectory=trajectory if isinstance(trajectory, list) else [],
        missing=missing, log_status=status, meta=meta,
        score_metadata=_dict(_field(score, "metadata")) if score is not None else {})


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


# --------------------------------------------------------------------------------------------
# Salvage of damaged .eval archives

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIG = b"PK\x03\x04"


def _inflate(method: int, data: bytes) -> bytes | None:
    if method == 0:
        return data
    if method == 8:
        return zlib.decompressobj(-15).decompress(data)
    if method == 93:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    return None


def _salvage(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(header, samples) from the intact entries of a damaged .eval zip, walking local headers
    (the central directory at the end is what a cut-short file loses). None if nothing usable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    pos = data.find(_LOCAL_SIG)
    while 0 <= pos and pos + _LOCAL.size <= len(data):
        sig, _ver, flags, method, _t, _d, _crc, csize, _usize, nlen, xlen = _LOCAL.unpack_from(data, pos)
        start = pos + _LOCAL.size + nlen + xlen
        name = data[pos + _LOCAL.size:pos + _LOCAL.size + nlen].decode("utf-8", "replace")
        if flags & 0x08 or start + csize > len(data):
            break  # sizes unknown (streamed entry) or the entry itself is cut: stop here
        try:
            raw = _inflate(method, data[start:start + csize])
            obj = json.loads(raw) if raw is not None else None
        except Exception:  # a damaged entry ends the salvage
            break
        if isinstance(obj, dict):
            if name.startswith("samples/"):
                samples.append(obj)
            elif name in ("header.json", "_journal/start.json") and isinstance(obj.get("eval"), dict):
                header = header or {"task": obj["eval"].get("task"), "model": obj["eval"].get("model")}
        pos = data.find(_LOCAL_SIG, start + csize)
    return (header, samples) if header or samples else None
