"""The sandbox on a real cgroup v2 kernel: a QEMU VM booted with cgroup_no_v1=all (tests/vm/).

This host and CI are cgroup v1, and their cgroup mounts are not ours to change; the VM is. Each
scenario builds one host setup of the README's matrix out of real cgroups (tests/vm/guest.sh) and
runs real sandboxes in it (tests/vm/scenarios.py): a memory hog must be OOM-killed inside, a fork
bomb capped, teardown must leave no cgroup, and every command must carry the hardening (its own user
namespace, no capabilities, no_new_privs, seccomp) on the guest's kernel (Debian 12's 6.1).

Under emulation a boot takes minutes, so CI boots the VM once and runs every scenario in that boot:
both placements of issue 19 (a service's ordinary cgroup, a delegated cgroup offering only memory),
a container's delegated cgroup namespace, a Delegate=yes mark, rootless delegation, the sweep, and a
missing controller (the clear error, and the opt-in with weaker containment). The full matrix adds
two boots, real systemd (a service and a `systemd-run --scope -p Delegate=yes`) and a kernel without
the pids controller: `REDLINE_VM_FULL=1 .venv/bin/pytest tests/test_cgroups_vm.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.vm import qemu

CAP_PIDS = 48  # tests/vm/scenarios.py
FULL = os.environ.get("REDLINE_VM_FULL", "") not in ("", "0")
full_matrix = pytest.mark.skipif(not FULL, reason="full VM matrix (two more boots): set REDLINE_VM_FULL=1")
pytestmark = [
    pytest.mark.timeout(2400),
    pytest.mark.skipif(bool(qemu.missing_tools()),
                       reason=f"cgroup v2 VM tooling missing ({', '.join(qemu.missing_tools())}): "
                              "`bash scripts/setup.sh --test` installs it"),
]
CI_SCENARIOS = ["plain", "svc", "ci-memory-only", "delegated-mark", "container", "rootless", "sweep"]


def _boot(tmp: Path, scenarios: list[str], cmdline: str = "",
          guest: str = "guest.sh") -> dict[str, dict[str, Any]]:
    r = qemu.boot(scenarios, tmp, cmdline=cmdline, timeout=2000, guest=guest)
    got = {res["scenario"]: res for res in r["results"]}
    assert r["rc"] == 0 and set(got) == set(scenarios), (
        f"VM run incomplete after {r['seconds']} s\nlog:\n{r['log']}\nconsole:\n{r['console']}")
    failed = {k: v.get("traceback") for k, v in got.items() if not v["ok"]}
    assert not failed, failed
    assert "=== leftovers: \n" in r["log"] or r["log"].rstrip().endswith("=== leftovers:"), r["log"]
    return got


def assert_hardened(res: dict[str, Any]) -> None:
    """Every command in the sandbox: its own user namespace (root inside is an unprivileged host
    uid of the sandbox's range), no capabilities, no_new_privs, seccomp; the overlay works."""
    h = res["hardening"]
    assert (h["CapEff"], h["CapBnd"], h["NoNewPrivs"], h["Seccomp"]) == ("0" * 16, "0" * 16, "1", "2"), h
    assert h["id_base"] > 0 and h["uid_map"].split() == ["0", str(h["id_base"]), "65536"], h
    assert h["unshare"] == "refused", h
    assert h["overlay"][:3] == ["x", "renamed", "host-files-refused"] and h["host_usr_untouched"], h


def assert_capped(res: dict[str, Any], pids_capped_by_cgroup: bool = True) -> None:
    assert res["leaf_existed"]
    assert_hardened(res)
    assert res["hog"] == ["rc=137"], res  # SIGKILLed by the OOM killer, inside
    assert res["alive_after_hog"] == "alive"
    assert 8 < res["bomb_peak"] <= CAP_PIDS + 3, res  # + the root-owned init and helpers (rlimit case)
    assert res["events_after_destroy"]["oom_kill"] >= 1
    if pids_capped_by_cgroup:
        assert res["events_after_destroy"]["pids_max"] >= 1
    assert not res["leaf_left"] and res["leaves_left"] == []


@pytest.fixture(scope="module")
def v2(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """One boot, every scenario CI runs."""
    return _boot(tmp_path_factory.mktemp("vm"), CI_SCENARIOS)


@pytest.fixture(scope="module")
def systemd(tmp_path_factory) -> dict[str, dict[str, Any]]:
    return _boot(tmp_path_factory.mktemp("vm-systemd"), ["systemd-service", "systemd-scope"],
                 guest="systemd.sh")


def test_plain_v2_root_gets_a_dedicated_cgroup(v2):
    res = v2["plain"]
    c = res["containment"]
    assert (c["cgroup"], c["placement"], c["parent"], c["missing"], c["weaker"]) == \
        ("v2", "dedicated", ["/sys/fs/cgroup/redline"], [], False)
    assert res["sandbox_containment"] == c
    assert_capped(res)


def test_service_cgroup_gets_a_dedicated_cgroup(v2):
    """The issue's second failing placement: the harness in an ordinary child of the root, as a
    systemd service is (not delegated). Never the harness's own cgroup."""
    res = v2["svc"]
    assert res["own_cgroup"] == "0::/svc"
    assert (res["containment"]["placement"], res["containment"]["parent"], res["containment"]["missing"]) == \
        ("dedicated", ["/sys/fs/cgroup/redline"], [])
    assert_capped(res)


def test_delegate_mark_gets_a_delegated_placement(v2):
    """What systemd's Delegate=yes leaves (the xattr trusted.delegate=1): redline moves into a leaf of
    its own and puts the sandboxes beside it."""
    res = v2["delegated-mark"]
    c = res["containment"]
    assert res["delegate_xattr"] == "1"
    assert (c["placement"], c["parent"], c["harness_leaf"], c["missing"]) == \
        ("delegated", ["/sys/fs/cgroup/deleg.scope/redline"], "/sys/fs/cgroup/deleg.scope/redline-init", [])
    assert_capped(res)


@full_matrix
def test_systemd_service_gets_a_dedicated_cgroup(systemd):
    """The issue's second failing placement (a service's cgroup, here under real systemd 252):
    never the harness's own cgroup."""
    res = systemd["systemd-service"]
    assert res["own_cgroup"] == "0::/system.slice/redline-vm.service"
    assert (res["containment"]["placement"], res["containment"]["parent"]) == \
        ("dedicated", ["/sys/fs/cgroup/redline"])
    assert_capped(res)


@full_matrix
def test_systemd_delegated_scope(systemd):
    """`systemd-run --scope -p Delegate=yes`: systemd marks the scope, redline moves into its leaf."""
    res = systemd["systemd-scope"]
    scope = "/sys/fs/cgroup/system.slice/redline-deleg.scope"
    assert res["delegate_xattr"] == "1"
    c = res["containment"]
    assert (c["placement"], c["parent"], c["harness_leaf"], c["missing"]) == \
        ("delegated", [f"{scope}/redline"], f"{scope}/redline-init", [])
    assert_capped(res)


def test_harness_in_a_memory_only_cgroup(v2):
    """The issue's first failing placement: the harness's cgroup offers only memory."""
    res = v2["ci-memory-only"]
    assert res["own_cgroup"] == "0::/runner/job"
    assert (res["containment"]["placement"], res["containment"]["missing"]) == ("dedicated", [])
    assert_capped(res)
    # Asked to stay in its delegated cgroup, it says what is missing and how to fix it...
    err = res["delegated_error"]
    assert "lacks pids, cpu" in err and "Delegate=yes" in err and "REDLINE_ALLOW_WEAKER_CONTAINMENT" in err
    # ...or, opted in, runs with memory + rlimits and records weaker containment.
    weak = res["weaker"]
    c = weak["containment"]
    assert (c["placement"], c["controllers"], c["missing"], c["weaker"], c["rlimits"]) == \
        ("delegated", ["memory"], ["pids", "cpu"], True, {"nproc": CAP_PIDS})
    assert c["parent"] == ["/sys/fs/cgroup/runner/job/redline"]
    assert c["harness_leaf"] == "/sys/fs/cgroup/runner/job/redline-init"
    assert_capped(weak, pids_capped_by_cgroup=False)
    assert weak["events_after_destroy"]["pids_max"] is None


def test_container_with_a_delegated_cgroup_namespace(v2):
    res = v2["container"]
    c = res["containment"]
    assert res["own_cgroup"] == "0::/redline-init"  # moved out of the namespace root first
    assert (c["placement"], c["parent"], c["harness_leaf"], c["missing"]) == \
        ("delegated", ["/sys/fs/cgroup/redline"], "/sys/fs/cgroup/redline-init", [])
    assert_capped(res)


def test_rootless_cgroup_layer_in_a_user_delegated_subtree(v2):
    res = v2["rootless"]
    c = res["containment"]
    assert res["uid"] == 1000
    assert (c["placement"], c["parent"], c["missing"]) == \
        ("delegated", ["/sys/fs/cgroup/user-1000/redline"], [])
    assert 8 <= res["members"] <= 16 and res["events"]["pids_max"] >= 1
    assert not res["leaf_left"]


def test_sweep_finds_v2_sandboxes_of_a_killed_harness(v2):
    res = v2["sweep"]
    assert res["leaf_before"] and res["removed"] >= 1 and not res["leaf_after"]


@full_matrix
def test_host_missing_a_controller(tmp_path):
    """Booted with cgroup_disable=pids: one clear error, or (opted in) rlimits and the record."""
    res = _boot(tmp_path, ["missing-pids"], cmdline="cgroup_disable=pids")["missing-pids"]
    assert "lacks pids" in res["error"] and "kernel itself offers no pids" in res["error"]
    assert "REDLINE_ALLOW_WEAKER_CONTAINMENT" in res["error"]
    weak = res["weaker"]
    c = weak["containment"]
    assert (c["placement"], c["missing"], c["weaker"], c["rlimits"]) == \
        ("dedicated", ["pids"], True, {"nproc": CAP_PIDS})
    assert_capped(weak, pids_capped_by_cgroup=False)
