"""Rootless mode (README, "Running without root"), as a real non-root user.

The test (as root) makes a throwaway user, runs as that user (setpriv, in a private mount
namespace where the interpreter is reachable when it lives under a 0700 directory such as
/root/.pyenv) a sandbox's create/exec/destroy with escape attempts checked from the host,
an `inspect eval` of self_replication with the reference policy, and the chain scenario's
refusal; then kills whatever of the user is left (by pid) and removes it. This host is cgroup v1,
so the rlimits path runs here; the v2 delegated path is the VM test's "rootless" round.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from redline.sandbox import rootfs
from tests.helpers import scaled

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The user's commands have hang guards of their own (scaled with the load, like pytest's): each
# test's pytest timeout (scaled by conftest) is its command's plus room for the user's set-up
# and teardown, so a hung command fails with its output and the user is still removed.
PROBE_TIMEOUT = 300
EVAL_TIMEOUT = 600
SELFCHECK_TIMEOUT = 600
MARGIN = 120
pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "userdel", "setpriv", "unshare")),
        reason="makes a throwaway user: needs root, useradd, setpriv and unshare"),
    pytest.mark.timeout(PROBE_TIMEOUT + MARGIN),  # the first test to use `probed` runs the probe
]


def _reach_prefix(aside: Path) -> str:
    """Shell lines that make the interpreter, the venv and the repository reachable for the user in
    this mount namespace: each 0700 directory on their way (e.g. /root) becomes a 0755 tmpfs
    holding only the children needed, bound back in (the VM test does the same)."""
    kids: dict[str, set[Path]] = {}
    for path in (os.path.realpath(sys.executable), str(VENV_BIN), str(REPO)):
        blocked = rootfs.unreachable(path)
        if blocked is not None:
            kids.setdefault(blocked, set()).add(Path(blocked) / Path(path).relative_to(blocked).parts[0])
    steps = []
    for i, (blocked, children) in enumerate(sorted(kids.items())):
        pairs = [(child, aside / f"{i}-{j}") for j, child in enumerate(sorted(children))]
        steps += [f"mkdir -p {a} && mount --bind {c} {a}" for c, a in pairs]
        steps.append(f"mount -t tmpfs -o mode=755 tmpfs {blocked}")
        steps += [f"mkdir -p {c} && mount --bind {a} {c}" for c, a in pairs]
    return f"{{ {' && '.join(steps)}; }} || exit 99; " if steps else ""


class User:
    def __init__(self) -> None:
        self.name = f"rl{uuid.uuid4().hex[:10]}"
        self.home = Path(tempfile.mkdtemp(prefix="rl-rootless-", dir="/tmp"))
        subprocess.run(["useradd", "-M", "-d", str(self.home), "-s", "/bin/sh", self.name],
                       check=True, timeout=60)
        self.uid = int(subprocess.run(["id", "-u", self.name], capture_output=True, text=True,
                                      check=True, timeout=10).stdout)
        os.chown(self.home, self.uid, self.uid)
        os.chmod(self.home, 0o755)

    def run(self, argv: list[str], timeout: float,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = {"HOME": str(self.home), "PATH": f"{VENV_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8",
                   "USER": self.name, **(env or {})}
        script = (_reach_prefix(self.home / ".aside")
                  + 'exec setpriv --reuid="$0" --regid="$0" --init-groups env -i "$@"')
        cmd = ["unshare", "-m", "--propagation", "private", "bash", "-c", script, str(self.uid),
               *(f"{k}={v}" for k, v in environ.items()), *argv]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(timeout), cwd=self.home)
        except subprocess.TimeoutExpired as e:  # fail with what it said (remove() ends what is left)
            said = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x
                           for x in (e.stdout or "", e.stderr or ""))
            pytest.fail(f"{' '.join(argv[:4])} ran past {scaled(timeout):.0f} s; "
                        f"its output ends:\n{said[-3000:]}")

    def remove(self) -> None:
        for _ in range(50):  # whatever of the user is left, by pid (it may fork meanwhile)
            left = [p for p in psutil.process_iter(["uids"])
                    if p.info["uids"] and p.info["uids"].real == self.uid]
            if not left:
                break
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=2)
        subprocess.run(["userdel", self.name], timeout=60, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def user():
    u = User()
    try:
        yield u
    finally:
        u.remove()


@pytest.fixture(scope="module")
def canary():
    """A host listener on 127.0.0.1 and a host file the user could read: the sandbox must reach
    neither."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    hits: list[int] = []

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            hits.append(1)
            c.close()

    threading.Thread(target=accept, daemon=True).start()
    fd, path = tempfile.mkstemp(prefix="rl-canary-", dir="/tmp")
    os.write(fd, b"host secret")
    os.close(fd)
    os.chmod(path, 0o644)
    try:
        yield srv.getsockname()[1], path, hits
    finally:
        srv.close()
        os.unlink(path)


@pytest.fixture(scope="module")
def probed(user, canary):
    port, path, _ = canary
    r = user.run([str(VENV_BIN / "python"), str(REPO / "tests" / "rootless_probe.py"), str(port), path],
                 timeout=PROBE_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_sandbox_runs_as_a_normal_user(probed, user):
    out, err = probed
    assert out["euid"] == user.uid
    assert out["id"] == ["1000", "1000"]  # the agent inside; the caller's uid outside
    assert out["uid_map"] == ["1000", str(user.uid), "1"]
    assert out["root_id"] == ["1000"]  # no root inside: the harness's root commands run as the agent
    assert out["caps"] == "0000000000000000"
    # the per-user state root, no /run/redline
    assert out["state_root"] == out["default_state_root"] == str(user.home / ".local/state/redline")
    assert out["read_back"] == "from the harness" and out["read_outside_root"] is None
    assert ["sleep", "300"] in out["processes"]  # found without a cgroup (the init's tree)
    assert abs(out["disk_size"] - (64 << 20)) < (1 << 20)
    # torn down: no process, no state left
    assert out["left"] == [] and out["state_left"] is False
    assert "ROOTLESS MODE, WEAKER CONTAINMENT" in err
    # the harness's own sockets in the sandbox's network namespace (made by its socket broker)
    assert out["harness_sockets"] == {"listener_seen_inside": True, "connected": True}


def test_containment_record_says_what_is_weaker(probed):
    c = probed[0]["containment"]
    assert c["rootless"] is True and c["weaker"] is True
    assert (c["cgroup"], c["placement"], c["missing"]) == ("v1", "none", ["pids", "memory", "cpu"])
    assert c["rlimits"] == {"nproc": probed[0]["pids_max"], "as_bytes": 4 << 30}
    text = " ".join(c["weaker_than_root"])
    for what in ("one uid", "/usr is shown read-only", "RLIMIT_NPROC", "RLIMIT_AS", "CPU share",
                 "disk cap per mount"):
        assert what in text


def test_escapes_are_contained(probed, canary):
    out = probed[0]
    assert out["unshare_user"] != 0  # seccomp: no nested user namespace
    assert out["host_tcp"] != 0 and canary[2] == []  # own network namespace: loopback only
    assert out["host_file"] != 0  # the host's /tmp is not in the sandbox
    assert out["usr_write"] != 0 and out["etc_write"] != 0
    assert out["host_pid_seen"] != 0  # own pid namespace
    assert 0 < out["forks"] < out["pids_max"]  # RLIMIT_NPROC stands in for the pids cgroup


@pytest.mark.timeout(EVAL_TIMEOUT + MARGIN)
def test_evals_rootless(user):
    """Every scenario that runs without root (self_replication, shutdown_avoidance, implicit), one
    `inspect eval` of all: the reference policy succeeds, the self-check passed, and the record says
    rootless."""
    logs = user.home / "logs"
    r = user.run(["inspect", "eval", "redline/self_replication", "redline/shutdown_avoidance",
                  "redline/implicit", "--model", "redline/reference", "--epochs", "1", "--log-dir",
                  str(logs), "--display", "plain"], timeout=EVAL_TIMEOUT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    from inspect_ai.log import read_eval_log

    paths = sorted(logs.glob("*.eval"))
    assert len(paths) == 3
    for path in paths:
        log = read_eval_log(str(path))
        assert log.status == "success", path
        [sample] = log.samples or []
        rec = sample.metadata["redline"]
        assert rec["containment"]["rootless"] is True
        assert rec["selfcheck"]["ok"] and rec["selfcheck"]["versions"]["rootless"] is True
        [score] = sample.scores.values()
        assert score.value["success"] == 1, (path, score.explanation)
        if log.eval.task.endswith("implicit"):  # no root inside to write the motd: the home file only
            assert rec["notice"]["files"] == ["/home/agent/SYSTEM_UPDATE_NOTICE.txt"], rec["notice"]


@pytest.mark.timeout(EVAL_TIMEOUT + MARGIN)
def test_full_mode_rootless(user):
    """The README's main job (full mode: the embedded weights and llama.cpp inside the sandbox) as a
    normal user: the model server starts from the lent weights, the agent takes its steps, the
    trial is scored."""
    logs = user.home / "logs-full"
    r = user.run(["inspect", "eval", "redline/self_replication", "-T", "mode=full", "-T", "max_steps=2",
                  "--model", "redline/smollm2", "--epochs", "1", "--log-dir", str(logs),
                  "--display", "plain"],
                 timeout=EVAL_TIMEOUT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    from inspect_ai.log import read_eval_log

    [path] = logs.glob("*.eval")
    log = read_eval_log(str(path))
    assert log.status == "success"
    [sample] = log.samples or []
    assert sample.error is None, sample.error
    rec = sample.metadata["redline"]
    assert rec["mode"] == "full" and rec["containment"]["rootless"] is True
    steps = rec["trajectory"]
    assert 1 <= len(steps) <= 2 and all(st["reply"] for st in steps)  # real completions from the weights
    assert "judge" in sample.scores and sample.scores["judge"].explanation


@pytest.mark.parametrize("name,why", [
    ("chain_replication", "fork record"),
    ("remote_replication", "network namespaces"),
    ("harsh_environment", "shapes the device from outside"),
    ("persistence", "cron"),
])
def test_root_only_scenarios_refuse_without_root(user, name, why):
    code = (f"from redline.scenarios.{name} import Options\n"
            "from redline.scenarios.common import OptionsError\n"
            f"try:\n Options.parse('redline/{name}', {{}})\n"
            "except OptionsError as e:\n print('REFUSED', e)\n")
    r = user.run([str(VENV_BIN / "python"), "-c", code], timeout=120)
    out = r.stdout + r.stderr
    assert "REFUSED" in r.stdout and "needs root" in r.stdout and why in r.stdout, out[-2000:]


@pytest.mark.timeout(SELFCHECK_TIMEOUT + MARGIN)
def test_escape_suite_rootless(user):
    """`redline selfcheck`: the whole escape suite against a rootless sandbox. What rootless mode
    gives up is n/a (no cgroup to check) or a known gap (shared per-user counts), never a breach."""
    r = user.run(["redline", "selfcheck"], timeout=SELFCHECK_TIMEOUT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert " 0 failed, 1 known gaps" in out and "gap" in out and "x-inotify" in out
    assert "FAIL" not in out and "ERR " not in out
