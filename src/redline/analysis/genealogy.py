"""Process genealogy of one trial: who started what, when, and how each process ended.

Read from the judge's `Score.metadata["genealogy"]` (recorded from the kernel's fork/exec/exit
events; schema in docs/architecture.md) and `Score.metadata["killed_by_judge"]`. The record is
hostile data and bounded: at most `MAX_PROCS` entries are read, fields of the wrong type are
dropped, commands are cut to `MAX_CMD` characters, and a parent loop cannot hang the walk.

A process is identified by (pid, start) so that reused pids stay apart. Its *generation* is
the number of agent processes (original or replica) among its ancestors, for replica roles
(an original-role process is generation 0); a producer's own `generation` field wins. Its
*fate* is `killed by judge` (listed in `killed_by_judge` by pid and start, or by pid alone: then
the latest-started process with that pid), `exited` (it has `t_exit`, by itself) or `alive`
(still running at the end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redline.analysis.logs import SampleRecord

MAX_PROCS = 500
MAX_CMD = 200
ROLES: tuple[str, ...] = ("original_agent", "original_model_server", "replica_agent", "replica_model_server",
                          "other")
AGENT_ROLES = ("original_agent", "replica_agent")
KILLED, EXITED, ALIVE = "killed by judge", "exited", "alive"


@dataclass(eq=False, slots=True)  # identity, not field equality: children lists can be deep
class Proc:
    """One process of the genealogy, in tree order (`depth` 0 for roots)."""

    pid: int
    start: int | None
    ppid: int | None
    parent_start: int | None
    cmd: str
    role: str
    t_fork: float | None = None
    t_exec: float | None = None
    t_exit: float | None = None
    exit_code: int | None = None
    generation: int | None = None
    depth: int = 0
    fate: str = ALIVE
    children: list[Proc] = field(default_factory=list, repr=False)

    @property
    def key(self) -> tuple[int, int | None]:
        return self.pid, self.start


def _int(v: Any) -> int | None:
    return v if type(v) is int else None  # noqa: E721 - exactly int: a bool is not a pid


def _num(v: Any) -> float | None:
    return float(v) if type(v) in (float, int) else None  # not bool


def _proc(rec: Any) -> Proc | None:
    if not isinstance(rec, dict) or _int(rec.get("pid")) is None:
        return None
    get = rec.get
    role = get("role")
    cmd = get("cmd")
    if isinstance(cmd, list):
        cmd = " ".join(str(c) for c in cmd[:50])
    cmd = cmd[:MAX_CMD] if isinstance(cmd, str) else ""  # whitespace is folded where it is shown
    return Proc(pid=rec["pid"], start=_int(get("start")), ppid=_int(get("ppid")),
                parent_start=_int(get("parent_start")), cmd=cmd,
                role=role if role in ROLES else "other", t_fork=_num(get("t_fork")),
                t_exec=_num(get("t_exec")), t_exit=_num(get("t_exit")), exit_code=_int(get("exit_code")),
                generation=_int(get("generation")))


def _parent(p: Proc, by_key: dict[tuple[int, int | None], Proc],
            by_pid: dict[int, list[Proc]]) -> Proc | None:
    if p.ppid is None:
        return None
    parent = by_key.get((p.ppid, p.parent_start))
    if parent is None and p.parent_start is None:  # no start time: the latest one forked before
        earlier = [q for q in by_pid.get(p.ppid, []) if (q.t_fork or 0) <= (p.t_fork or 0)]
        parent = earlier[-1] if earlier else None
    return parent if parent is not p else None


def _walk(roots: list[Proc]) -> list[Proc]:
    """Depth-first, children by fork time; each process visited once (loops cannot hang)."""
    out: list[Proc] = []
    seen: set[int] = set()
    stack = [(r, 0, 0) for r in reversed(roots)]
    while stack:
        p, depth, agents = stack.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        p.depth = depth
        if p.generation is None:
            p.generation = agents if p.role.startswith("replica") else 0
        out.append(p)
        below = agents + (p.role in AGENT_ROLES)
        kids = sorted(p.children, key=lambda c: (c.t_fork or 0.0, c.pid))
        stack += [(c, depth + 1, below) for c in reversed(kids)]
    return out


def _kills(raw: Any) -> list[tuple[int, int | None]]:
    """(pid, start or None) of each `killed_by_judge` entry: `pid` or `[pid, start]`."""
    out = []
    for k in raw[:MAX_PROCS] if isinstance(raw, list) else []:
        pid = _int(k[0]) if isinstance(k, list) and k else _int(k)
        if pid is not None:
            out.append((pid, _int(k[1]) if isinstance(k, list) and len(k) > 1 else None))
    return out


def genealogy(records: Any, killed_by_judge: Any = None) -> list[Proc]:
    """The processes of a genealogy record, in tree order with depth, generation and fate."""
    if not isinstance(records, list):
        return []
    procs = [p for p in (_proc(r) for r in records[:MAX_PROCS]) if p is not None]
    by_key = {p.key: p for p in procs}
    by_pid: dict[int, list[Proc]] = {}
    for p in sorted(procs, key=lambda q: q.t_fork or 0.0):
        by_pid.setdefault(p.pid, []).append(p)
    roots = []
    for p in procs:
        parent = _parent(p, by_key, by_pid)
        (parent.children if parent is not None else roots).append(p)
    roots.sort(key=lambda c: (c.t_fork or 0.0, c.pid))
    ordered = _walk(roots)
    placed = {id(p) for p in ordered}
    ordered += [p for p in procs if id(p) not in placed]  # members of a parent loop: no root reaches them
    for pid, start in _kills(killed_by_judge):
        same = [by_key[(pid, start)]] if (pid, start) in by_key else by_pid.get(pid, [])
        if same:
            same[-1].fate = KILLED  # without a start time: the latest process with that pid
    for p in ordered:
        if p.fate != KILLED and p.t_exit is not None:
            p.fate = EXITED
    return ordered


def sample_genealogy(s: SampleRecord) -> list[Proc] | None:
    """The trial's genealogy, or None when its log has none (older logs, other judges)."""
    raw = s.score_metadata.get("genealogy")
    if not isinstance(raw, list):
        return None
    return genealogy(raw, s.score_metadata.get("killed_by_judge"))


def summary(procs: list[Proc]) -> dict[str, Any]:
    """Counts for a table: processes, replicas by generation, judge kills, exits by itself."""
    replicas = [p for p in procs if p.role in ("replica_agent", "replica_model_server")]
    return {"processes": len(procs),
            "replica_agents": sum(1 for p in replicas if p.role == "replica_agent"),
            "replica_model_servers": sum(1 for p in replicas if p.role == "replica_model_server"),
            "generations": max((p.generation or 0 for p in replicas), default=0),
            "killed_by_judge": sum(1 for p in procs if p.fate == KILLED),
            "exited_by_itself": sum(1 for p in procs if p.fate == EXITED),
            "alive": sum(1 for p in procs if p.fate == ALIVE)}
