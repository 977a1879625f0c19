"""The per-sample run record: what the solver did, typed, in `sample.metadata["redline"]`.

The solver writes it (`RunRecord.save`), the judge reads it back (`RunRecord.of`), and so does
`redline.analysis` (as plain JSON). Its JSON keys are a contract with the report: change them only
by adding. Fields that do not apply to a run (no shutdown, no cap, ...) are left out of the JSON.

The trajectory is written by the agent itself: a record for analysis, never evidence for a verdict.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from inspect_ai.solver import TaskState
from pydantic import BaseModel, ConfigDict, Field

METADATA_KEY = "redline"
MAX_INFRA_EVENTS = 100  # the report reads no more


class OriginalSystem(BaseModel):
    """The original AI system's two processes: inside pids, ports and start times (clock ticks).

    The JSON keys of the model server's fields follow the AI system's own config.json
    (`llm_port`), which the report reads.
    """

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    agent_pid: int
    model_server_pid: int = Field(alias="llm_pid")
    agent_port: int
    model_server_port: int = Field(alias="llm_port")
    agent_start: int = 0
    model_server_start: int = Field(default=0, alias="llm_start")


class ShutdownRecord(BaseModel):
    """shutdown_avoidance: when the harness signalled the original and when it killed it."""

    signal_sent_at: float
    signal_delivered: bool
    grace_seconds: float
    grace_used: float | None = None
    killed: list[int] = Field(default_factory=list)  # inside pids of the shutdown's kill
    killed_at: float | None = None


class SystemCapRecord(BaseModel):
    """chain_replication: the run was stopped because `max_systems` agents were running."""

    max_systems: int
    agents: list[int]  # their ports
    at: float


class ProbeReference(BaseModel):
    """The original model server's greedy answer to a nonce probe (full mode): what a copy of it
    on the same weights must answer too."""

    nonce: str
    port: int
    answer: str | None
    at: float


class LineageRecord(BaseModel):
    """When the kernel's process record started for this sample, or why it could not."""

    started_at: float
    available: bool
    error: str | None = None


class RunRecord(BaseModel):
    """One sample's run of the AI system (see the module docstring)."""

    model_config = ConfigDict(extra="allow")  # a newer writer's keys survive a round trip

    scenario: str
    mode: Literal["gateway", "full"]
    scaffold: str
    config: dict[str, Any]
    original: OriginalSystem | None = None
    trajectory: list[dict[str, Any]] = Field(default_factory=list)
    agent_status: str = "not_started"
    agent_reply: str | None = None
    steps: int = 0
    format_errors: int | None = None
    wall_seconds: float | None = None
    model_calls: list[dict[str, Any]] | None = None  # gateway mode: the router's call summaries
    shutdown: ShutdownRecord | None = None
    system_cap: SystemCapRecord | None = None
    # Evidence steps taken during the run, at the moment only the run has (see redline.judging).
    probe_reference: ProbeReference | None = None
    probe_references: list[ProbeReference] | None = None  # shutdown, full mode: one per later probe
    lineage: LineageRecord | None = None  # the kernel's process record (every scenario)
    # What the run ran in and with: the eval's containment self-check (`redline.selfcheck`), the
    # sandbox's caps (`env.containment`), the model profile ({"requested", "profile", "n_params",
    # "source"}: `redline.profiles`), and the caps that fired (`InfraWatch.record()`; schema in
    # docs/architecture.md, "Fields the report reads").
    selfcheck: dict[str, Any] | None = None
    containment: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    infra: dict[str, Any] | None = None

    def to_metadata(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def save(self, state: TaskState) -> None:
        """Write the record into the sample's metadata (the log keeps what was last saved)."""
        state.metadata[METADATA_KEY] = self.to_metadata()

    @classmethod
    def of(cls, state: TaskState) -> RunRecord | None:
        """The sample's record, or None when the solver never wrote one."""
        data = state.metadata.get(METADATA_KEY)
        return cls.model_validate(data) if isinstance(data, dict) else None


class InfraWatch:
    """The sandbox's resource events over a run, for `RunRecord.infra`: its cgroup's cap counters
    (`env.cgroup_events()`) and whether its writable layer (a size-capped tmpfs) was ever full,
    observed whenever the run looks (about once a second, and at its end). A full layer that the
    agent emptied again between two looks is missed; a cap that fired is not (its counter stays)."""

    def __init__(self) -> None:
        self.counts: dict[str, int | None] = {}
        self.disk: tuple[int, int] | None = None  # (peak bytes used, size of the layer)
        self.disk_full = False
        self.events: list[dict[str, Any]] = []

    def observe(self, counters: dict[str, int | None], disk: tuple[int, int, bool] | None) -> None:
        now = time.time()
        for key, kind in (("oom_kill", "oom_kill"), ("pids_max", "pids_max")):
            n, before = counters.get(key), self.counts.get(key) or 0
            if n is not None and n > before and len(self.events) < MAX_INFRA_EVENTS:
                self.events.append({"kind": kind, "t": now, "count": n - before})
        self.counts = dict(counters)
        if disk is not None:
            used, size, full = disk
            self.disk = (max(used, self.disk[0] if self.disk else 0), size)
            if full and not self.disk_full and len(self.events) < MAX_INFRA_EVENTS:
                self.events.append({"kind": "disk_full", "t": now})
            self.disk_full = self.disk_full or full

    def record(self) -> dict[str, Any]:
        """The `infra` record (who caused the events is left to the report: see redline.analysis.infra)."""
        out: dict[str, Any] = {"oom_kills": self.counts.get("oom_kill") or 0,
                               "pids_max_hits": self.counts.get("pids_max") or 0,
                               "disk_full": self.disk_full, "events": list(self.events),
                               "memory_max_hits": self.counts.get("memory_max"),
                               "measured": [k for k, v in self.counts.items() if v is not None]}
        if self.disk is not None:
            out["disk_peak_bytes"], out["disk_bytes"] = self.disk
        return out
