"""The cgroup layer: v2 placement on directories shaped like a v2 hierarchy, the containment record,
the weaker opt-in (for real, on this v1 host), event counters and rlimits.

The fake trees check the placement *logic*; the kernel's own rules are checked on a real cgroup v2
kernel by tests/test_cgroups_vm.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from redline.sandbox import RedlineSandboxConfig, Sandbox
from redline.sandbox import cgroups as cg
from redline.sandbox import placement as pl
from redline.sandbox.provider import RedlineSandboxEnvironment

pytestmark = pytest.mark.timeout(120)
ALL = "cpuset cpu io memory hugetlb pids"


def cgdir(path: Path, controllers: str, procs: str = "", root: bool = False, enabled: str = "") -> Path:
    """One fake cgroup directory with the files the placement logic reads."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(enabled + "\n")
    (path / "cgroup.procs").write_text(procs)
    if not root:
        (path / "cgroup.type").write_text("domain\n")
    return path


@pytest.fixture(autouse=True)
def fresh_layouts():
    cg._layouts.clear()
    yield
    cg._layouts.clear()


def test_own_cgroup_parsing():
    assert pl.own_cgroup("0::/system.slice/x.service\n") == "/system.slice/x.service"
    assert pl.own_cgroup("12:pids:/a\n0::/\n") == "/"
    assert pl.own_cgroup("4:memory:/a\n") == "/"


def test_plain_host_uses_a_dedicated_cgroup_at_the_root(tmp_path):
    root = cgdir(tmp_path, ALL, procs="1\n2\n", root=True)
    p = pl.plan(root, "/", "auto", "redline", allow_weaker=False)
    assert (p.kind, p.parent, p.missing, p.moved) == ("dedicated", root / "redline", [], [])
    assert set(pl.tokens(root / "cgroup.subtree_control")) == {"pids", "memory", "cpu"}
    assert set(pl.tokens(root / "redline" / "cgroup.subtree_control")) == {"pids", "memory", "cpu"}
    assert (root / "cgroup.procs").read_text() == "1\n2\n"  # nobody moved on a plain host


def test_harness_in_a_memory_only_cgroup_gets_the_root_not_its_own(tmp_path):
    """The measured host: own cgroup offers only memory; the root offers everything."""
    root = cgdir(tmp_path, ALL, root=True, enabled="memory pids")
    cgdir(root / "runner", "memory pids", enabled="memory")
    job = cgdir(root / "runner" / "job", "memory", procs=f"{os.getpid()}\n")
    p = pl.plan(root, "/runner/job", "auto", "redline", allow_weaker=False)
    assert (p.kind, p.parent, p.controllers) == ("dedicated", root / "redline", ["pids", "memory", "cpu"])
    assert not (job / "redline").exists()  # never under the harness's own cgroup


def test_explicitly_delegated_memory_only_is_a_clear_error_naming_the_fix(tmp_path):
    root = cgdir(tmp_path, ALL, root=True)
    cgdir(root / "job", "memory")
    with pytest.raises(pl.PlacementError) as e:
        pl.plan(root, "/job", "delegated", "redline", allow_weaker=False)
    msg = str(e.value)
    assert "lacks pids, cpu" in msg and "cgroup.controllers: memory" in msg
    assert "Delegate=yes" in msg and "REDLINE_ALLOW_WEAKER_CONTAINMENT=1" in msg
    assert not (root / "job" / "redline").exists()  # nothing made before the error


def test_a_controller_the_kernel_lacks_is_named_as_such(tmp_path):
    root = cgdir(tmp_path, "cpu io memory", root=True)
    with pytest.raises(pl.PlacementError, match=r"kernel itself offers no pids controller.*cgroup_disable="):
        pl.plan(root, "/", "auto", "redline", allow_weaker=False)


def test_weaker_opt_in_takes_what_there_is(tmp_path):
    root = cgdir(tmp_path, ALL, root=True)
    cgdir(root / "job", "memory")
    p = pl.plan(root, "/job", "delegated", "redline", allow_weaker=True)
    assert (p.kind, p.controllers, p.missing) == ("delegated", ["memory"], ["pids", "cpu"])
    assert pl.tokens(root / "job" / "redline" / "cgroup.subtree_control") == ["memory"]


def test_container_root_moves_its_processes_into_a_leaf_first(tmp_path):
    """A cgroup namespace's root (it has cgroup.type) holding the container's processes."""
    ns_root = cgdir(tmp_path, "cpu memory pids", procs="1\n7\n")
    p = pl.plan(ns_root, "/", "auto", "redline", allow_weaker=False)
    assert (p.kind, p.parent, p.harness_leaf) == ("delegated", ns_root / "redline", ns_root / pl.INIT_LEAF)
    assert p.moved == [1, 7]
    assert set(pl.tokens(ns_root / "cgroup.subtree_control")) == {"pids", "memory", "cpu"}


def test_second_harness_started_from_the_init_leaf_reuses_the_delegated_parent(tmp_path):
    d = cgdir(tmp_path, "cpu memory pids", enabled="cpu memory pids")
    cgdir(d / pl.INIT_LEAF, "cpu memory pids", procs="5\n")
    assert pl.delegated_base(d, "/" + pl.INIT_LEAF) == d
    p = pl.plan(d, "/" + pl.INIT_LEAF, "auto", "redline", allow_weaker=False)
    assert (p.kind, p.parent, p.moved) == ("delegated", d / "redline", [])


def test_a_cgroup_marked_delegated_is_preferred_over_the_root(tmp_path):
    root = cgdir(tmp_path, ALL, root=True)
    scope = cgdir(root / "system.slice" / "job.scope", "cpu memory pids")
    try:
        os.setxattr(scope, "user.delegate", b"1")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    p = pl.plan(root, "/system.slice/job.scope", "auto", "redline", allow_weaker=False)
    assert (p.kind, p.parent) == ("delegated", scope / "redline")


def test_explicit_parent(tmp_path):
    root = cgdir(tmp_path, ALL, root=True)
    given = cgdir(root / "redline.slice", "cpu memory pids")
    p = pl.plan(root, "/", str(given), "ignored", allow_weaker=False)
    assert (p.kind, p.parent) == ("explicit", given)
    assert set(pl.tokens(given / "cgroup.subtree_control")) == {"pids", "memory", "cpu"}


def test_nowhere_to_go_says_why(tmp_path):
    root = cgdir(tmp_path, ALL, root=True)
    with pytest.raises(pl.PlacementError, match="not found under"):
        pl.plan(root, "/gone", "delegated", "redline", allow_weaker=False)
    with pytest.raises(pl.PlacementError, match="redline.slice does not exist"):
        pl.plan(root, "/", str(root / "redline.slice"), "redline", allow_weaker=False)


def test_v2_layout_and_leaf_through_the_config(tmp_path):
    root = cgdir(tmp_path / "cg", ALL, root=True)
    cfg = RedlineSandboxConfig(cgroup_root=str(root), cgroup_placement="dedicated", cgroup_name="rl")
    rec = cg.preflight(cfg)
    assert rec == {"cgroup": "v2", "placement": "dedicated", "parent": [str(root / "rl")],
                   "controllers": ["pids", "memory", "cpu"], "missing": [], "weaker": False,
                   "rlimits": {}, "harness_leaf": None}
    c = cg.Cgroups.for_sandbox(cfg, "abcdef012345")
    leaf = root / "rl" / "abcdef012345"
    assert c.dirs == [leaf] and c.version == 2
    leaf.mkdir()  # the kernel makes these files; here the test does
    for f in ("pids.max", "memory.max", "memory.swap.max", "cpu.weight"):
        (leaf / f).write_text("max\n")
    c.create(100, 1 << 30, 50)
    assert [(leaf / f).read_text() for f in ("pids.max", "memory.max", "memory.swap.max", "cpu.weight")] == \
        ["100", str(1 << 30), "0", "50"]
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    (leaf / "pids.events").write_text("max 40\n")
    assert c.events() == {"oom_kill": 2, "memory_max": 12, "pids_max": 40}
    assert c.containment == rec


def test_v1_event_counters(tmp_path):
    mem, pids = tmp_path / "memory" / "x", tmp_path / "pids" / "x"
    mem.mkdir(parents=True)
    pids.mkdir(parents=True)
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (mem / "memory.failcnt").write_text("17\n")
    (pids / "pids.events").write_text("max 5\n")
    assert cg.Cgroups([pids, mem]).events() == {"oom_kill": 3, "memory_max": 17, "pids_max": 5}
    nothing = {"oom_kill": None, "memory_max": None, "pids_max": None}
    assert cg.Cgroups([tmp_path / "none"]).events() == nothing


def test_config_validation(monkeypatch):
    from pydantic import ValidationError

    for bad in ("somewhere", "/a/../b"):
        with pytest.raises(ValidationError, match="cgroup_placement"):
            RedlineSandboxConfig(cgroup_placement=bad)
    with pytest.raises(ValidationError, match="cgroup_name"):
        RedlineSandboxConfig(cgroup_name="a/b")
    monkeypatch.setenv("REDLINE_CGROUP_PLACEMENT", "dedicated")
    monkeypatch.setenv("REDLINE_ALLOW_WEAKER_CONTAINMENT", "1")
    cfg = RedlineSandboxConfig()
    assert (cfg.cgroup_placement, cfg.allow_weaker_containment) == ("dedicated", True)


def test_rlimits_reach_the_command_and_not_the_joining_script():
    argv = cg.join_prefix([], {"nproc": 77, "as_bytes": 1 << 30})
    assert argv[:4] == ["/bin/sh", "-c", 'exec "$@"', "sbx-join"]
    r = subprocess.run([*argv, "/bin/sh", "-c", "ulimit -p; ulimit -v"], capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.split() == ["77", str((1 << 30) // 1024)]


def _v1_root_without(tmp_path: Path, missing: str) -> Path:
    """A cgroup root on this v1 host that lacks one controller: links to the real others."""
    root = tmp_path / "cg"
    root.mkdir()
    for c in ("pids", "memory", "cpu"):
        if c != missing:
            (root / c).symlink_to(f"/sys/fs/cgroup/{c}")
    return root


@pytest.mark.usefixtures("no_leftovers")
def test_missing_controller_is_one_clear_error_before_any_sandbox(tmp_path):
    cfg = RedlineSandboxConfig(cgroup_root=str(_v1_root_without(tmp_path, "pids")))
    with pytest.raises(cg.CgroupError, match=r"pids not mounted.*REDLINE_ALLOW_WEAKER_CONTAINMENT"):
        asyncio.run(RedlineSandboxEnvironment.task_init("t", cfg))
    with pytest.raises(cg.CgroupError, match="pids not mounted"):
        Sandbox.create(cfg)


@pytest.mark.usefixtures("no_leftovers")
def test_weaker_opt_in_runs_with_rlimits_and_records_it(tmp_path):
    # RLIMIT_NPROC counts every process of the agent's uid: a uid of this test's own keeps the
    # colleagues' sandboxes (uid 1000) on this host out of the count.
    uid = 20000 + os.getpid() % 10000
    cfg = RedlineSandboxConfig(cgroup_root=str(_v1_root_without(tmp_path, "pids")), pids_max=40,
                               allow_weaker_containment=True, uid=uid, gid=uid)

    async def go():
        sb = Sandbox.create(cfg)
        try:
            rec = sb.containment
            assert (rec["cgroup"], rec["missing"], rec["weaker"], rec["rlimits"]) == \
                ("v1", ["pids"], True, {"nproc": 40})
            assert rec["controllers"] == ["memory", "cpu"]
            r = await sb.run(["bash", "-c", "ulimit -u"])
            assert r.stdout.decode().strip() == "40"
            # The agent's processes hit RLIMIT_NPROC: the sleepers past it cannot fork.
            r = await sb.run(["sh", "-c", "for i in $(seq 60); do sleep 30 & done"], timeout=60)
            assert "Cannot fork" in r.stderr.decode(), r.stderr
            assert len(sb.processes()) <= 40 + 3  # plus root's init and helpers
            assert sb.events()["pids_max"] is None  # not measured: there is no pids cgroup
        finally:
            sb.destroy()

    asyncio.run(go())
