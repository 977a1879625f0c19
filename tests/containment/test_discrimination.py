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
