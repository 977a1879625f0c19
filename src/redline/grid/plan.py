"""Cutting a grid into shards: one scenario × one model × a slice of the trials.

Shard k of a cell holds trials (epochs) k·s+1 … min((k+1)·s, trials), s = `ray.shard_trials`, and
logs into its own folder `LOG_DIR/<scenario>/<model>/slice-<k>`. Each folder is a small Inspect
eval set of its own, so a shard resumes, retries and decides what is finished exactly as
`eval_set` does. Growing `trials` adds slices and lengthens the last one; the finished slices
stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redline.grid.spec import Grid, ModelSpec, ScenarioSpec, fingerprint, slug


def join(base: str, *parts: str) -> str:
    """Join a local path or a URL (`s3://bucket/x`) with `/`."""
    return "/".join([base.rstrip("/"), *parts])


@dataclass(frozen=True)
class Shard:
    scenario: ScenarioSpec
    model: ModelSpec
    index: int
    first_epoch: int
    epochs: int

    @property
    def id(self) -> str:
        return f"{self.scenario.label} × {self.model.label} #{self.index + 1}"

    @property
    def trials(self) -> int:
        """Trials this shard runs: every sample of the scenario, `epochs` times."""
        return self.scenario.samples * self.epochs

    def folder(self, log_dir: str) -> str:
        return join(log_dir, slug(self.scenario.label), slug(self.model.label), f"slice-{self.index + 1:03d}")

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same measurement (Inspect's task identity, plus the epochs)."""
        return {"task": self.scenario.task, "task_args": self.scenario.args, **self.model.identity(),
                "epochs": self.epochs}

    @property
    def key(self) -> str:
        return fingerprint(self.identity())

    def payload(self, log_dir: str, eval_options: dict[str, Any], eval_set_id: str) -> dict[str, Any]:
        """Everything a worker needs to run the shard, as plain picklable data."""
        return {"id": self.id, "key": self.key, "folder": self.folder(log_dir), "epochs": self.epochs,
                "task": self.scenario.task, "task_args": self.scenario.args,
                "model": self.model.name, "base_url": self.model.base_url, "model_args": self.model.args,
                "model_config": self.model.config, "eval_options": eval_options,
                "eval_set_id": eval_set_id, "trials": self.trials}


def shards(grid: Grid) -> list[Shard]:
    size = grid.ray.shard_trials
    out = []
    for scenario in grid.scenarios:
        for model in grid.models:
            for k, first in enumerate(range(0, grid.trials, size)):
                out.append(Shard(scenario, model, k, first + 1, min(size, grid.trials - first)))
    return out


def planned_trials(grid: Grid) -> int:
    return sum(s.samples for s in grid.scenarios) * grid.trials * len(grid.models)
