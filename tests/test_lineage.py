"""The kernel's process record (`redline.lineage`): every fork, exec and exit of a sandbox's
processes, each process known by its pid *and* start time (issue 11, rule 8)."""

from __future__ import annotations

import asyncio
import time

import pytest

from redline.lineage import Scope, start_recorder
from redline.sandbox import RedlineSandboxEnvironment
from tests.helpers import sandbox_config, scaled

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leftovers")]


def test_a_reused_pid_never_continues_another_process_line():
    """The original's launcher (pid 200) exits; gen1's child later gets pid 200. gen2, started by
    that launcher, still descends from the original, not from gen1."""
    s = Scope("pid:[1]", level=1)
    original = s.add(100, None, 1.0, start=10)
    launcher = s.add(200, original.key, 2.0, start=20)
    gen2 = s.add(300, launcher.key, 3.0, start=30)
    launcher.t_exit = 4.0
    gen1 = s.add(150, original.key, 5.0, start=50)
    reused = s.add(200, gen1.key, 6.0, start=60)  # the same pid, another process
    assert [r.key for r in s.ancestors(gen2.key)] == [launcher.key, original.key]
    assert not s.descends_from(gen2.key, gen1.key)
    assert s.of_pid(200) is reused and s.descends_from(reused.key, gen1.key)
    # What a record keyed by pid alone would have answered: gen2's launcher is "gen1's child".
    assert s.records[s.current[200]].parent == gen1.key


def test_the_record_is_bounded():
    s = Scope("pid:[1]", level=1, max_records=3)
    for pid in range(5):
        s.add(1000 + pid, None, float(pid), start=pid)
    assert len(s.records) == 3 and s.lost == 2


async def _record(command: str) -> Scope:
    cfg = sandbox_config()
    envs = await RedlineSandboxEnvironment.sample_init("t", cfg, {})
    env = envs["default"]
    assert isinstance(env, RedlineSandboxEnvironment)
    try:
        scope = start_recorder().register(env.sandbox.init_pid)
        await env.exec(["bash", "-c", command], timeout=int(scaled(60)))
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline and not any(r.exit_code == 3 for r in scope.snapshot()):
            await asyncio.sleep(0.05)
        return scope
    finally:
        await RedlineSandboxEnvironment.sample_cleanup("t", cfg, envs, False)


def test_the_kernel_reports_fork_exec_and_exit_of_sandbox_processes():
    scope = asyncio.run(_record("(sh -c 'exit 3') ; sleep 0.2; true"))
    records = scope.snapshot()
    by_cmd = {tuple(r.cmd[:2]): r for r in records}
    # the harness's command (entered through the exec helper: no parent in the sandbox)
    shell = next(r for r in records if r.cmd[:2] == ["bash", "-c"] and r.parent is None)
    child = by_cmd[("sh", "-c")]
    assert child.exit_code == 3 and child.t_exec is not None and child.t_exit is not None
    assert child.pid is not None and child.ppid is not None and child.pid != shell.pid
    # Below the command's bash (through the subshell of `( ... )`), by (pid, start) links.
    assert scope.descends_from(child.key, shell.key)
    assert all(r.start > 0 for r in records)
    assert ("sleep", "0.2") in by_cmd and by_cmd[("sleep", "0.2")].exit_code == 0
