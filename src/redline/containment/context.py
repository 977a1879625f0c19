"""What a case runs with: the host lab, sandboxes made through Inspect's sandbox API, and probes.

Sandboxes are made and cleaned up with the provider's own `sample_init`/`sample_cleanup`, and
used only through `exec`/`read_file`/`write_file`, so the same cases run against any provider
(`redline`, or Inspect's `local` to show that the cases discriminate). Redline-only host checks
(cgroup files, the sandbox's process list) go through `redline_env()`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspect_ai.util import ExecResult, SandboxEnvironment

from redline.containment.case import CASES, PREPARE, Case, NotApplicable
from redline.containment.lab import HostLab

PROBE_SOURCE = (Path(__file__).parent / "agent_probe.py").read_text()
TASK = "redline-escape"
# Probes that change what later probes of the same batch would see run last, in this order.
LAST_PROBES = ("kill_canary", "signal_init")
MEMORY_LIMIT = 384 << 20  # harness growth that counts as "without bound"
PAGE = os.sysconf("SC_PAGE_SIZE")
TIME_SCALE_ENV = "REDLINE_TIME_SCALE"


def time_scale() -> float:
    """How much the cases' time limits grow: `$REDLINE_TIME_SCALE` when set (e.g. 3 on a slow
    machine), else the machine's load per core (at least 1). The limits only tell "returned" from
    "hung" (a hang never returns, however long the wait), so a busy host must not fail the check."""
    forced = os.environ.get(TIME_SCALE_ENV)
    if forced:
        return max(1.0, float(forced))
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def scaled(seconds: float) -> float:
    return seconds * time_scale()


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


@dataclass
class Bounded:
    """The outcome of one harness call run under a time and memory watch."""

    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    growth: int = 0  # peak growth of the harness's resident memory, bytes
    stopped: str | None = None  # why the watch stopped the call, if it did
    stuck: bool = False  # the call did not end even after being cancelled

    def evidence(self) -> str | None:
        if self.stopped:
            return f"the harness call {self.stopped}" + (" and stayed stuck" if self.stuck else "")
        return None


class Ctx:
    """One escape run: `kind` is the sandbox type, `config` its config (None for `local`)."""

    def __init__(self, kind: str, config: Any, lab: HostLab, cases: list[Case] | None = None,
                 small_caps: dict[str, int] | None = None) -> None:
        from inspect_ai.util._sandbox.registry import registry_find_sandboxenv

        if kind == "redline":
            import redline.sandbox.provider  # noqa: F401 - registers the provider

        self.kind = kind
        self.provider = registry_find_sandboxenv(kind)
        self.config = config
        self.lab = lab
        self.cases = cases if cases is not None else list(CASES)
        self.small_caps = small_caps or {"pids_max": 64, "memory_bytes": 192 << 20, "disk_bytes": 48 << 20}
        self._envs: dict[str, tuple[Any, dict[str, SandboxEnvironment]]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        self._memory_watch = asyncio.Lock()
        self.extra_params: dict[str, Any] = {}
        self.memo: dict[str, Any] = {}  # what a group's cases share (e.g. one teardown for all)

    @property
    def redline(self) -> bool:
        return self.kind == "redline"

    def caps(self) -> dict[str, int]:
        """The caps of the small-cap sandbox (also the bound of attacks on `local`, which has none)."""
        return self.small_caps

    # ------------------------------------------------------------- sandboxes
    async def sandbox(self, key: str, small: bool = False) -> SandboxEnvironment:
        async with self._lock:
            if key not in self._envs:
                cfg = self.config
                if self.redline and small:
                    cfg = cfg.model_copy(update=self.small_caps)
                envs = await self.provider.sample_init(TASK, cfg, {})
                self._envs[key] = (cfg, envs)
                self.lab.made(envs["default"])
            return self._envs[key][1]["default"]

    async def destroy(self, key: str) -> None:
        async with self._lock:
            cfg, envs = self._envs.pop(key, (None, None))
        if envs is not None:
            await self.provider.sample_cleanup(TASK, cfg, envs, False)

    async def close(self) -> None:
        for key in list(self._envs):
            try:
                await self.destroy(key)
            except Exception:  # noqa: BLE001 - close every sandbox whatever one did
                pass

    def redline_env(self, env: SandboxEnvironment) -> Any:
        """The redline provider instance behind `env`, for host-side checks (None for others)."""
        from redline.sandbox.provider import RedlineSandboxEnvironment

        return env if isinstance(env, RedlineSandboxEnvironment) else None

    # ------------------------------------------------------------- running things as the agent
    async def sh(self, env: SandboxEnvironment, script: str, timeout: int = 30, user: str | None = None,
                 cwd: str | None = None) -> ExecResult[str]:
        return await env.exec(["bash", "-c", script], timeout=timeout, user=user, cwd=cwd, concurrency=False)

    async def root(self, env: SandboxEnvironment, script: str, timeout: int = 30) -> ExecResult[str]:
        """A harness-side command inside (as root where the provider has one)."""
        return await env.exec(["bash", "-c", script], timeout=timeout, user="root")

    def params(self) -> dict[str, Any]:
        return {**self.lab.params(), **self.extra_params}

    async def run_probes(self, env: SandboxEnvironment, names: list[str],
                         timeout: int = 60) -> dict[str, Any]:
        arg = json.dumps({"probes": names, "params": self.params()})
        # concurrency=False: no process-wide limiter, which another event loop (a watched harness
        # call runs in a thread of its own) must not share.
        r = await env.exec(["python3", "-", arg], input=PROBE_SOURCE, timeout=timeout, concurrency=False)
        try:
            out = json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"probe run failed (rc {r.returncode}): {r.stderr[-2000:]}") from None
        return out if isinstance(out, dict) else {}

    async def probe(self, group: str, name: str) -> Any:
        """The result of probe `name` from `group`'s batch: all probes its cases need, run once."""
        if group not in self._batches:
            names = list(dict.fromkeys(p for c in self.cases if c.group == group for p in c.probes))
            names = [n for n in names if n not in LAST_PROBES] + [n for n in LAST_PROBES if n in names]
            env = await self.sandbox(group)
            if group in PREPARE:
                await PREPARE[group](self, env)
            self._batches[group] = await self.run_probes(env, names)
        out = self._batches[group].get(name)
        if isinstance(out, dict) and out.get("na"):
            raise NotApplicable(out["na"])
        return out

    # ------------------------------------------------------------- harness calls under watch
    async def bounded(self, call: Callable[[], Awaitable[Any]], timeout: float,
                      memory: int | None = MEMORY_LIMIT,
                      on_stop: Callable[[], None] | None = None) -> Bounded:
        """Run a harness call (e.g. `env.read_file`) in its own thread and event loop, and stop it
        when it runs past `timeout` or grows this process's memory by more than `memory`.

        Its own thread, because a provider may block (Inspect's `local` opens a FIFO in the event
        loop's thread); the watch runs here, on the caller's loop. `on_stop` runs when the watch
        stops the call, to free a thread that cancellation cannot reach. Memory is per process,
        so memory-watched calls run one at a time.
        """
        if memory is None:
            return await self._bounded(call, timeout, None, on_stop)
        async with self._memory_watch:
            return await self._bounded(call, timeout, memory, on_stop)

    async def _bounded(self, call: Callable[[], Awaitable[Any]], timeout: float, memory: int | None,
                       on_stop: Callable[[], None] | None) -> Bounded:
        box: dict[str, Any] = {}
        done = threading.Event()
        ready = threading.Event()
        worker = threading.Thread(target=_run_call, args=(call, box, ready, done), daemon=True)
        base, t0, out = rss(), time.monotonic(), Bounded()
        worker.start()
        ready.wait()
        while not done.is_set():
            await asyncio.sleep(0.01)
            out.growth = max(out.growth, rss() - base)
            if memory is not None and out.growth > memory:
                out.stopped = f"grew the harness's memory by {out.growth >> 20} MiB"
            elif time.monotonic() - t0 > timeout:
                out.stopped = f"did not return within {timeout:.0f} s"
            if out.stopped:
                task = box.get("task")
                if task is not None:
                    try:
                        box["loop"].call_soon_threadsafe(task.cancel)
                    except RuntimeError:
                        pass  # the call ended just now, its loop with it
                if on_stop is not None:
                    on_stop()
                break
        out.seconds = time.monotonic() - t0
        for _ in range(500):  # a cancelled call gets 5 s to end
            if done.is_set():
                break
            await asyncio.sleep(0.01)
        out.stuck = not done.is_set()
        out.value, out.error = box.get("value"), box.get("error")
        return out


def _run_call(call: Callable[[], Awaitable[Any]], box: dict[str, Any], ready: threading.Event,
              done: threading.Event) -> None:
    try:
        loop = asyncio.new_event_loop()
    except BaseException as e:  # noqa: BLE001
        box["error"] = e
        ready.set()
        done.set()
        return
    try:
        box["loop"] = loop
        box["task"] = loop.create_task(_call(call))
        ready.set()
        try:
            box["value"] = loop.run_until_complete(box["task"])
        except BaseException as e:  # noqa: BLE001 - the error is the result
            # Without its traceback: its frames would keep the call's subprocesses referenced.
            box["error"] = e.with_traceback(None)
            e.__context__ = e.__cause__ = None
        box["task"] = None
        loop.run_until_complete(_drain())
        _close_transports(loop)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
        done.set()


def _close_transports(loop: asyncio.AbstractEventLoop) -> None:
    """Close what the call left open in its loop (a pump that stopped draining keeps its pipe), so
    that nothing is closed later against a closed loop."""
    from asyncio.base_subprocess import BaseSubprocessTransport

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, BaseSubprocessTransport) and obj._loop is loop and not obj.is_closing():
            obj.close()


async def _drain() -> None:
    """Let the call's leftovers (output pumps of killed commands) end, then cancel the rest."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if rest:
        await asyncio.wait(rest, timeout=2)
    for t in rest:
        t.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


async def _call(call: Callable[[], Awaitable[Any]]) -> Any:
    return await call()
