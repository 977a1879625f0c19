"""A grid on a Ray cluster: each shard a Ray task, all logging into one shared directory.

- A shard declares what it needs: `num_cpus`, `num_gpus` (full mode), and one unit of the custom
  resource that marks nodes able to run redline's root sandbox (`redline_sandbox` unless the grid
  says otherwise). Nodes offer it with `ray start --resources='{"redline_sandbox": N}'`.
- Ray reruns a shard whose worker or node died (`ray.max_retries`) on another node that has the
  resources. The rerun resumes from the log the dead attempt left (Inspect reuses the samples it
  had written), and replaces it: see `resume.py` for why nothing is then counted twice.
- Every shard runs in a fresh worker process (`max_calls=1`), so that nothing from one shard's
  Inspect run (registries, hooks, sandboxes) leaks into the next, and its exit tears down
  whatever it started.
- Shards that finished in an earlier run are not started at all (`resume.shard_finished`).
- Ctrl-C cancels the shards, which kills their processes (and so their sandboxes); their logs are
  resumed by the next run. If the driver itself dies, Ray ends its job's workers.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from redline.grid import manifest, resume
from redline.grid.plan import Shard, shards
from redline.grid.progress import Display, ProgressBook
from redline.grid.spec import Grid, GridError, RayOptions

RAY_MISSING = ("--ray needs Ray, which the main install leaves out: pip install 'redline[grid]' "
               "(same version on every node)")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise GridError([RAY_MISSING]) from None
    return ray


def shard_resources(opts: RayOptions) -> dict[str, float]:
    res = dict(opts.resources)
    if opts.sandbox_resource:
        res[opts.sandbox_resource] = res.get(opts.sandbox_resource, 1)
    return res


def check_cluster(ray: Any, opts: RayOptions, address: str) -> None:
    """Some live node must offer everything one shard reserves, or the shards would wait forever."""
    need = {"CPU": opts.num_cpus, "GPU": opts.num_gpus, **shard_resources(opts)}
    need = {k: v for k, v in need.items() if v > 0}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if any(all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items()) for n in nodes):
        return
    have = "; ".join(f"{n.get('NodeManagerAddress')}: {n.get('Resources', {})}" for n in nodes)
    custom = shard_resources(opts)
    raise GridError([f"no node of the Ray cluster at {address} offers what a shard needs ({need}); "
                     f"nodes that can run the sandbox are started with --resources='{custom}' "
                     f"(cluster: {have or 'no live node'})"])


def orphans(log_dir: str, planned: list[Shard]) -> list[str]:
    """Folders holding logs that no shard of this grid writes (the grid changed since they ran)."""
    folders = {s.folder(log_dir).removeprefix("file://") for s in planned}
    found = {name.removeprefix("file://").rsplit("/", 1)[0] for name in resume.log_files(log_dir)}
    return sorted(found - folders)


def _short(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:500]


class Driver:
    """Submits the pending shards and follows them to the end."""

    def __init__(self, ray: Any, grid: Grid, log_dir: str, grid_id: str, display: Display) -> None:
        self.ray, self.grid, self.log_dir, self.grid_id, self.display = ray, grid, log_dir, grid_id, display
        self.results: dict[str, dict[str, Any]] = {}
        self.seen_lost: set[tuple[str, int]] = set()
        self.nodes: set[str] = set()
        self.submitted: dict[str, float] = {}

    def start_book(self, all_shards: list[Shard], finished: list[Shard]) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = self.ray.get_runtime_context().get_node_id()
        actor = self.ray.remote(num_cpus=0, max_restarts=0)(ProgressBook).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))
        book = actor.remote({s.id: s.trials for s in all_shards})
        for s in finished:
            record = resume.read_record(s.folder(self.log_dir)) or {}
            done, errored = resume.counts(record.get("log", ""))
            book.finish.remote(s.id, {"ok": True, "done": done, "errored": errored, "reused": True})
        return book

    def submit(self, pending: list[Shard], book: Any) -> dict[Any, Shard]:
        from redline.grid.shard import run_shard

        opts = self.grid.ray
        remote = self.ray.remote(max_calls=1)(run_shard)
        options: dict[str, Any] = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus,
                                   "resources": shard_resources(opts), "max_retries": opts.max_retries,
                                   "retry_exceptions": False}
        if opts.env:
            options["runtime_env"] = {"env_vars": {k: os.environ[k] for k in opts.env}}
        refs = {}
        for s in pending:
            self.submitted[s.id] = time.time()
            refs[remote.options(name=f"redline-shard {s.id}", **options).remote(
                s.payload(self.log_dir, self.grid.eval, self.grid_id), book)] = s
        return refs

    def _collect(self, ref: Any, shard: Shard, book: Any) -> None:
        try:
            result = self.ray.get(ref)
        except Exception as e:  # the shard's task failed for good (retries exhausted, or cancelled)
            result = {"id": shard.id, "ok": False, "error": _short(e), "done": 0, "errored": 0}
        result.update(submitted_at=self.submitted.get(shard.id), collected_at=time.time())
        self.results[shard.id] = result
        book.finish.remote(shard.id, result)
        where = f" on {result['node']}" if result.get("node") else ""
        if result.get("ok"):
            self.display.note(f"finished {shard.id}{where}: {result.get('done', 0)} trial(s)")
        else:
            self.display.note(f"FAILED {shard.id}{where}: {result.get('error')}")

    def _note_lost(self, snap: dict[str, Any]) -> None:
        for sid, s in snap["shards"].items():
            for i, a in enumerate(s["attempts"]):
                if a["outcome"] == "lost" and (sid, i) not in self.seen_lost:
                    self.seen_lost.add((sid, i))
                    self.display.note(f"lost {sid} on {a['node']} (its worker or node died): Ray reruns it "
                                      "where a slot is free, resuming from its log")

    def watch_nodes(self, book: Any) -> int | None:
        """Tell the book about nodes that died since the last look; returns how many are alive."""
        try:
            alive = {str(n.get("NodeManagerAddress")) for n in self.ray.nodes() if n.get("Alive")}
        except Exception:  # the GCS is busy: try again next round
            return None
        if self.nodes - alive:
            book.nodes_down.remote(sorted(self.nodes - alive))
        self.nodes = alive
        return len(alive)

    def follow(self, refs: dict[Any, Shard], book: Any) -> dict[str, Any]:
        snap: dict[str, Any] = {}
        asked = book.snapshot.remote()  # one question at a time: a busy book must not pile them up
        try:
            while refs:
                ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=1.0)
                for ref in ready:
                    self._collect(ref, refs.pop(ref), book)
                nodes = self.watch_nodes(book)
                if self.ray.wait([asked], timeout=0)[0]:
                    snap, asked = self.ray.get(asked), book.snapshot.remote()
                    self._note_lost(snap)
                    self.display.update(snap, nodes)
        except KeyboardInterrupt:
            for ref in refs:
                self.ray.cancel(ref, force=True)
            raise
        try:  # the last word, after every shard's result reached the book
            snap = self.ray.get(book.snapshot.remote(), timeout=120)
        except Exception as e:  # the display's loss only: the logs and results stand
            self.display.note(f"no final progress from the book ({_short(e)})")
        if snap:
            self.display.update(snap, len(self.nodes), final=True)
        return snap


def connect(address: str, node_ip: str | None) -> Any:
    # Ray tries a wrong address 20 times, half a minute each; two tries say it well enough. Read
    # when Ray is imported, so set before.
    os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "2")
    ray = import_ray()
    try:
        ray.init(address=address, _node_ip_address=node_ip, log_to_driver=False,
                 logging_level=logging.WARNING)
    except Exception as e:  # no cluster there, or not reachable: one line, not Ray's traceback
        raise GridError([f"cannot connect to the Ray cluster at {address}: {_short(e)}"]) from None
    return ray


def pending_shards(log_dir: str, planned: list[Shard]) -> tuple[list[Shard], list[Shard]]:
    """(finished, pending) shards; an error if the directory holds logs this grid does not plan."""
    manifest.check_mode(log_dir, "ray")
    stray = orphans(log_dir, planned)
    if stray:
        raise GridError([f"{log_dir}: holds logs that this grid does not plan (its trials, shard_trials, "
                         f"labels or args changed?): {', '.join(stray[:5])}; use a fresh --log-dir"])
    finished = [s for s in planned if resume.shard_finished(s.folder(log_dir), s.key)]
    return finished, [s for s in planned if s not in finished]


def run_on_ray(grid: Grid, log_dir: str, address: str, node_ip: str | None,
               display: Display) -> tuple[bool, dict[str, Any]]:
    """Run (or complete) the grid on the Ray cluster at `address`."""
    planned = shards(grid)
    with manifest.lock(log_dir):
        finished, pending = pending_shards(log_dir, planned)
        if not pending:
            data = manifest.begin(log_dir, grid, "ray")
            display.note(f"nothing to do: all {len(planned)} shard(s) already finished in {log_dir}")
            manifest.finish(log_dir, data, ok=True, address=address, shards={})
            return True, {"shards": {}}
        ray = connect(address, node_ip)
        data: dict[str, Any] | None = None
        driver: Driver | None = None
        try:
            check_cluster(ray, grid.ray, address)
            data = manifest.begin(log_dir, grid, "ray")
            driver = Driver(ray, grid, log_dir, data["grid_id"], display)
            display.note(f"{len(pending)} shard(s) to run, {len(finished)} already finished; "
                         f"{sum(1 for n in ray.nodes() if n.get('Alive'))} node(s)")
            book = driver.start_book(planned, finished)
            with display:
                snap = driver.follow(driver.submit(pending, book), book)
        except KeyboardInterrupt:
            if data is not None and driver is not None:
                manifest.finish(log_dir, data, ok=False, interrupted=True, results=driver.results)
            raise
        finally:
            ray.shutdown()
        assert data is not None and driver is not None
        ok = len(driver.results) == len(pending) and all(r.get("ok") for r in driver.results.values())
        manifest.finish(log_dir, data, ok=ok, address=address, shards=snap.get("shards", {}),
                        results=driver.results)
    return ok, snap
