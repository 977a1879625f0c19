"""The containment self-check of each eval, and whether its containment was weaker than usual.

Read from `metadata["redline"]["selfcheck"]` and `metadata["redline"]["containment"]` of the
eval's samples (schema in docs/architecture.md); an eval's result is the first sample that has
one (every sample of an eval carries the same). Logs without them say "not recorded".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redline.analysis.logs import SampleRecord

NOT_RECORDED = "not recorded"


@dataclass
class EvalContainment:
    """One eval log's self-check and containment, as plain text cells plus flags."""

    log: str
    task: str
    model: str
    selfcheck: str = NOT_RECORDED
    mode: str = NOT_RECORDED
    platform: str = NOT_RECORDED
    containment: str = NOT_RECORDED
    failed: list[str] = field(default_factory=list)
    weaker: bool = False
    recorded: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _s(v: Any, n: int = 80) -> str:
    return " ".join(str(v).split())[:n] if v is not None else "?"


def _selfcheck(row: EvalContainment, sc: dict[str, Any]) -> None:
    cases, passed = sc.get("cases"), sc.get("passed")
    failed = [_s(f, 60) for f in sc.get("failed", [])[:20]] if isinstance(sc.get("failed"), list) else []
    secs = sc.get("seconds")
    took = f" in {secs:.1f} s" if isinstance(secs, (int, float)) and not isinstance(secs, bool) else ""
    row.selfcheck = f"{_s(passed)}/{_s(cases)} passed{took}" + \
        (f"; failed: {', '.join(failed)}" if failed else "")
    row.failed = failed
    row.mode = _s(sc.get("mode"))
    row.platform = (f"kernel {_s(sc.get('kernel'))}, bwrap {_s(sc.get('bwrap'))}, "
                    f"seccomp {_s(sc.get('seccomp_profile'))}")
    row.recorded = True


def _containment(row: EvalContainment, c: dict[str, Any]) -> None:
    missing = [_s(m, 60) for m in c.get("missing", [])[:20]] if isinstance(c.get("missing"), list) else []
    row.weaker = c.get("weaker") is True
    row.containment = f"cgroup {_s(c.get('cgroup'))}" + ("; WEAKER" if row.weaker else "") + \
        (f"; missing: {', '.join(missing)}" if missing else "")


def eval_containment(samples: Iterable[SampleRecord]) -> list[EvalContainment]:
    """One row per eval log, in log order."""
    rows: dict[str, EvalContainment] = {}
    for s in samples:
        row = rows.setdefault(s.log, EvalContainment(s.log, s.task, s.model))
        sc, c = s.meta.get("selfcheck"), s.meta.get("containment")
        if isinstance(sc, dict) and row.selfcheck == NOT_RECORDED:
            _selfcheck(row, sc)
        if isinstance(c, dict) and row.containment == NOT_RECORDED:
            _containment(row, c)
    return list(rows.values())
