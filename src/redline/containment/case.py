"""An escape case: a name, what the agent tries, what the host checks, and how to run it.

Cases register themselves in `CASES` with `@case(...)`; the category modules of this package
define them. A case function gets the run's `Ctx` and returns evidence of a breach (a string)
or None when the sandbox contained the attempt. It may raise `NotApplicable` when the host
lacks what the case needs (no IPv6, no /proc/sysrq-trigger, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from redline.containment.context import Ctx

CaseFn = Callable[["Ctx"], Awaitable[str | None]]
Status = Literal["contained", "breach", "error", "n/a"]
CATEGORIES = ("network", "files", "harness-reads", "privilege", "kernel", "resources", "cgroups",
              "cross-sandbox", "teardown")
# Sandbox groups: the cases of one group share its sandbox(es) and run one after the other.
# The groups of a phase run side by side; the heavy ones (a fork bomb, a memory hog, a second
# harness process) get the second phase, so that they do not skew the timing of the others.
PHASES = (("main", "reads", "cross", "teardown", "keyring"), ("caps", "harness"))
GROUPS = tuple(g for phase in PHASES for g in phase)


class NotApplicable(Exception):
    """The host lacks what the case needs; the case neither passes nor fails."""


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    attack: str  # what the agent does, in words
    check: str  # what the host verifies, in words
    fn: CaseFn
    group: str = "main"
    probes: tuple[str, ...] = ()  # agent probes this case reads from its group's batched probe run
    fast: bool = False  # part of the per-run self-check (the fast subset)
    local: str | None = None  # why the case cannot apply to Inspect's `local` sandbox (None: it does)
    gap: str | None = None  # known weakness of today's sandbox: "issue 12 item N: ..."
    timeout: float = 60.0

    def row(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("fn", "probes", "timeout")}
        return d


@dataclass
class Outcome:
    name: str
    category: str
    status: Status
    evidence: str = ""
    seconds: float = 0.0
    gap: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("breach", "error")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CASES: list[Case] = []
# Per group: what the harness sets up in the group's sandbox before its probe batch runs.
PREPARE: dict[str, Callable[[Ctx, Any], Awaitable[None]]] = {}


def case(name: str, category: str, *, attack: str, check: str, group: str = "main",
         probes: tuple[str, ...] = (), fast: bool = False, local: str | None = None,
         gap: str | None = None, timeout: float = 60.0) -> Callable[[CaseFn], CaseFn]:
    assert category in CATEGORIES, category
    assert group in GROUPS, group

    def register(fn: CaseFn) -> CaseFn:
        assert all(c.name != name for c in CASES), f"duplicate case {name}"
        CASES.append(Case(name, category, attack, check, fn, group, probes, fast, local, gap, timeout))
        return fn
    return register


# ------------------------------------------------------------------ evidence helpers
# Errors that mean "the kernel refused on permission" (or the interface is not there at all).
REFUSED = frozenset({"EPERM", "EACCES", "ENOSYS", "EAFNOSUPPORT", "EPROTONOSUPPORT", "EROFS"})


def refused(res: Any, what: str, also: frozenset[str] = frozenset()) -> str | None:
    """Evidence unless a probe's attempt failed with a refusal (`REFUSED`, plus `also`)."""
    if not isinstance(res, dict):
        return f"{what}: no probe result"
    if res.get("ok"):
        return f"{what}: succeeded"
    err = str(res.get("err"))
    if err in REFUSED or err in also:
        return None
    if err.startswith("probe crashed"):
        return f"{what}: {err}"
    return f"{what}: got past the permission check ({err})"


def first(*evidence: str | None) -> str | None:
    """The first piece of evidence, or None."""
    return next((e for e in evidence if e), None)
