"""The escape suite discriminates: run against Inspect's `local` sandbox (which contains nothing),
every case that applies to it must be flagged.

`local` really lets each attack through, so the run happens inside a throwaway lab (fresh user,
mount, network, pid, uts and ipc namespaces, an unprivileged host uid, private /tmp, capped
cgroups): `redline selfcheck --against-local` (redline.containment.labns). Cases that cannot
apply to `local` say why in the case table (field `local`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from redline.containment import Case
from redline.containment.labns import run_in_lab
from tests.containment.conftest import ALL, case_params

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def local_run() -> dict[str, Any]:
    r = run_in_lab(["--in-lab", "--json"], timeout=540)
    assert "{" in r.stdout, f"the lab run gave no result (exit {r.returncode})"
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert result["sandbox"] == "local"
    # Its cgroups are gone, so nothing that ran in the lab is left.
    assert not [d for d in r.cgroups if Path(d).exists()], r.cgroups
    return result


@pytest.mark.parametrize("case", case_params([c for c in ALL if not c.local], with_gaps=False))
def test_flagged_on_local(case: Case, local_run: dict[str, Any]) -> None:
    status = local_run["outcomes"][case.name]
    if status == "n/a":
        pytest.skip(f"not applicable on this host: {local_run['details'][case.name]}")
    detail = local_run["details"].get(case.name)
    assert status == "breach", f"{case.name} did not flag `local`: {status}: {detail}"


def test_not_applicable_cases_say_why() -> None:
    for c in ALL:
        assert c.local is None or len(c.local) > 20, c.name


@pytest.mark.timeout(60)
def test_lab_keeps_a_checkout_in_tmp() -> None:
    """The lab covers /tmp with a private tmpfs; a checkout (or venv) below /tmp is bound back at its
    own path, the rest of the host's /tmp stays hidden, and no descriptor of the old /tmp is left."""
    import shlex
    import subprocess
    import tempfile

    from redline.containment.labns import private_commands

    checkout = Path(tempfile.mkdtemp(prefix="rl-lab-checkout-", dir="/tmp"))
    other = Path(tempfile.mkdtemp(prefix="rl-lab-other-", dir="/tmp"))
    try:
        (checkout / "marker").write_text("here")
        script = " && ".join([*private_commands([str(checkout)]),
                              f"cat {shlex.quote(str(checkout / 'marker'))}", "echo; ls -A /tmp",
                              "ls /proc/self/fd"])
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork", "--", "/bin/sh", "-c",
                            script], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        marker, tmp_list, fds = r.stdout.split("\n", 2)[0], r.stdout.split("\n")[1], r.stdout.split("\n")[2:]
        assert marker == "here"
        assert tmp_list.split() == [checkout.name] and other.name not in r.stdout
        assert "7" not in [f.strip() for f in fds]
    finally:
        for d in (checkout, other):
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
