"""One progress display for all the shards of a grid on Ray: trials done, running and failed.

Each shard's process reports through an Inspect hook (`on_sample_start`/`on_sample_end`) to one
`ProgressBook`, a Ray actor beside the driver. A shard's counts belong to its current attempt: when
Ray reruns a shard whose node died, the new attempt replaces the old one's counts, so trials that
were running on the dead node stop counting as running and nothing is counted twice. When a shard
ends, the driver replaces its live counts with the exact ones read from its log.

*done* counts trials that were scored (a success or a failure of the agent: both are results);
*failed* counts trials that errored (no verdict) and the trials of shards that could not finish.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from inspect_ai.hooks import Hooks, SampleEnd, SampleStart, hooks


@dataclass
class Attempt:
    token: str
    node: str
    pid: int
    started: float
    reused: int = 0
    running: set[str] = field(default_factory=set)
    done: int = 0
    failed: int = 0
    outcome: str = "running"  # running | finished | failed | lost
    ended: float | None = None

    def summary(self) -> dict[str, Any]:
        return {"node": self.node, "pid": self.pid, "started": self.started, "ended": self.ended,
                "outcome": self.outcome}


class ProgressBook:
    """Counts per shard attempt. Runs as a Ray actor; plain Python, so it is testable without Ray."""

    def __init__(self, planned: dict[str, int]) -> None:
        self.planned = dict(planned)
        self.attempts: dict[str, list[Attempt]] = {k: [] for k in planned}
        self.final: dict[str, dict[str, Any]] = {}

    def _current(self, shard: str, token: str) -> Attempt | None:
        attempts = self.attempts.get(shard) or []
        return attempts[-1] if attempts and attempts[-1].token == token else None

    def attempt(self, shard: str, token: str, node: str, pid: int, reused: int) -> None:
        for old in self.attempts.setdefault(shard, []):
            if old.outcome == "running":  # Ray only reruns a shard whose worker or node died
                old.outcome, old.ended, old.running = "lost", time.time(), set()
        self.attempts[shard].append(Attempt(token, node, pid, time.time(), reused=reused, done=reused))

    def nodes_down(self, nodes: list[str]) -> None:
        """The driver saw these nodes die: their running attempts are lost (Ray reruns them, maybe
        only once a slot frees up elsewhere; until then they are neither running nor done)."""
        for attempts in self.attempts.values():
            for a in attempts:
                if a.outcome == "running" and a.node in nodes:
                    a.outcome, a.ended, a.running = "lost", time.time(), set()

    def sample(self, shard: str, token: str, sample: str, event: str) -> None:
        a = self._current(shard, token)
        if a is None:  # a report from a superseded attempt
            return
        if event == "start":
            a.running.add(sample)
            return
        a.running.discard(sample)
        if event == "error":
            a.failed += 1
        else:
            a.done += 1

    def finish(self, shard: str, result: dict[str, Any]) -> None:
        """The shard's end, from the driver: exact counts, and the outcome of its last attempt."""
        self.final[shard] = result
        attempts = self.attempts.get(shard) or []
        if attempts and attempts[-1].outcome == "running":
            attempts[-1].outcome = "finished" if result.get("ok") else "failed"
            attempts[-1].ended = time.time()
            attempts[-1].running = set()

    def snapshot(self) -> dict[str, Any]:
        shards = {}
        for shard, planned in self.planned.items():
            attempts = self.attempts.get(shard, [])
            live = attempts[-1] if attempts else None
            final = self.final.get(shard)
            if final is not None:
                ok = bool(final.get("ok"))
                done = int(final.get("done", 0))
                failed = int(final.get("errored", 0)) + (0 if ok else max(planned - done, 0))
                state, running = ("finished" if ok else "failed"), 0
            elif live is not None and live.outcome == "running":
                done, failed, running, state = live.done, live.failed, len(live.running), "running"
            elif live is not None:  # lost, and not restarted yet
                done = failed = running = 0
                state = "retrying"
            else:
                done = failed = running = 0
                state = "pending"
            shards[shard] = {"state": state, "planned": planned, "done": done, "running": running,
                             "failed": failed, "node": live.node if live else None,
                             "attempts": [a.summary() for a in attempts]}
        return {"time": time.time(), "shards": shards, "totals": totals(shards)}


def totals(shards: dict[str, dict[str, Any]]) -> dict[str, int]:
    out = {"planned": 0, "done": 0, "running": 0, "failed": 0, "shards": len(shards), "shards_finished": 0,
           "shards_running": 0, "shards_failed": 0, "shards_retrying": 0, "retries": 0}
    for s in shards.values():
        for k in ("planned", "done", "running", "failed"):
            out[k] += s[k]
        out["shards_finished"] += s["state"] == "finished"
        out["shards_running"] += s["state"] == "running"
        out["shards_failed"] += s["state"] == "failed"
        out["shards_retrying"] += s["state"] == "retrying"
        out["retries"] += max(len(s["attempts"]) - 1, 0)
    return out


# ------------------------------------------------------------------------------------------------
# The shard side: an Inspect hook that reports to the book.

_reporter: Reporter | None = None


class Reporter:
    """Sends one shard attempt's sample events to the book (fire and forget)."""

    def __init__(self, book: Any, shard: str, token: str) -> None:
        self.book, self.shard, self.token = book, shard, token

    def send(self, method: str, *args: Any) -> None:
        try:
            getattr(self.book, method).remote(self.shard, self.token, *args)
        except Exception:  # progress is never worth failing a trial for
            pass


def activate(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


@hooks(name="redline_grid_progress", description="Reports a grid shard's trials to the grid's display")
class GridProgress(Hooks):
    def enabled(self) -> bool:
        return _reporter is not None

    async def on_sample_start(self, data: SampleStart) -> None:
        if _reporter is not None:
            _reporter.send("sample", data.sample_id, "start")

    async def on_sample_end(self, data: SampleEnd) -> None:
        if _reporter is not None:
            _reporter.send("sample", data.sample_id, "error" if data.sample.error is not None else "done")


# ------------------------------------------------------------------------------------------------
# The driver side: render snapshots.


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def status_line(snap: dict[str, Any], elapsed: float, nodes: int | None = None) -> str:
    t = snap["totals"]
    node_text = f" · nodes {nodes}" if nodes is not None else ""
    retried = f", {t['retries']} rerun" if t["retries"] else ""
    if t["shards_retrying"]:
        retried += f", {t['shards_retrying']} waiting to rerun"
    return (f"trials {t['done'] + t['failed']}/{t['planned']}: done {t['done']} · running {t['running']} · "
            f"failed {t['failed']} | shards {t['shards_finished']}/{t['shards']} finished, "
            f"{t['shards_running']} running, {t['shards_failed']} failed{retried}{node_text} | "
            f"{_clock(elapsed)}")


class Display:
    """A live bar on a terminal, plain lines (on change, at most every `every` s) otherwise,
    and optionally the snapshot as JSON in `status_file` (for monitoring tools)."""

    def __init__(self, mode: str = "auto", status_file: str | None = None, stream: TextIO | None = None,
                 every: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.mode = ("live" if self.stream.isatty() else "plain") if mode == "auto" else mode
        self.status_file = Path(status_file) if status_file else None
        self.every = every
        self.started = time.monotonic()
        self._last_line = ""
        self._last_print = 0.0
        self._progress: Any = None
        self._bar: Any = None

    def __enter__(self) -> Display:
        if self.mode == "live":
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("redline grid"), BarColumn(bar_width=20),
                                      TextColumn("{task.description}"), console=Console(file=self.stream))
            self._progress.start()
            self._bar = self._progress.add_task("", total=1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, snap: dict[str, Any], nodes: int | None = None, final: bool = False) -> None:
        line = status_line(snap, time.monotonic() - self.started, nodes)
        if self.status_file is not None:
            tmp = self.status_file.with_name(self.status_file.name + ".tmp")
            tmp.write_text(json.dumps({**snap, "nodes": nodes, "line": line}))
            os.replace(tmp, self.status_file)
        t = snap["totals"]
        if self._progress is not None:
            self._progress.update(self._bar, total=max(t["planned"], 1), completed=t["done"] + t["failed"],
                                  description=line.split(": ", 1)[1])
        elif self.mode == "plain":
            now = time.monotonic()
            core = line.rsplit(" | ", 1)[0]
            if final or (core != self._last_line and now - self._last_print >= self.every):
                print(f"redline grid: {line}", file=self.stream, flush=True)
                self._last_line, self._last_print = core, now

    def note(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(f"redline grid: {text}", file=self.stream, flush=True)
