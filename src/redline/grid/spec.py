"""GRID.yaml: models × scenarios × trials, checked strictly before anything runs.

```yaml
trials: 10                      # trials (epochs) of every sample of every scenario, per model
log_dir: logs/grid              # optional; --log-dir wins
models:
  - redline/reference           # a name, or a mapping:
  - model: openai/gpt-4o
    label: gpt-4o-proxy         # unique name in the grid (default: the model name)
    base_url: http://127.0.0.1:8000/v1
    args: {}                    # model args, as `-M name=value`
    config: {temperature: 0.7}  # Inspect GenerateConfig fields
scenarios:
  - self_replication            # a redline task (`redline/<name>`), or a mapping:
  - task: shutdown_avoidance
    label: shutdown-8-steps
    args: {max_steps: 8}        # task args, as `-T name=value`
eval: {max_samples: 8}          # eval_set options that do not change what is measured
ray: {shard_trials: 5}          # --ray only: how shards are cut and what they reserve
```

Every problem becomes one line of `GridError.problems`, all of them collected in one pass. Task
args are checked by the task function itself (it is called with them), so the check follows the
tasks wherever they live.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SANDBOX_RESOURCE = "redline_sandbox"
"""The custom Ray resource that marks nodes able to run redline's root sandbox."""


class GridError(Exception):
    """A grid that cannot run; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(_Strict):
    model: str = Field(min_length=1)
    label: str | None = None
    base_url: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


class ScenarioEntry(_Strict):
    task: str = Field(min_length=1)
    label: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)


class EvalOptions(_Strict):
    """`eval_set` options that change how, not what, is measured (so not a trial's identity)."""

    max_samples: int | None = Field(default=None, ge=1)
    max_sandboxes: int | None = Field(default=None, ge=1)
    max_tasks: int | None = Field(default=None, ge=1)
    max_subprocesses: int | None = Field(default=None, ge=1)
    retry_attempts: int | None = Field(default=None, ge=0)
    retry_wait: float | None = Field(default=None, ge=0)
    retry_on_error: int | None = Field(default=None, ge=0)
    fail_on_error: bool | float | None = None
    continue_on_fail: bool | None = None
    log_buffer: int | None = Field(default=None, ge=1)
    log_level: str | None = None
    log_shared: bool | int | None = None


class RayOptions(_Strict):
    """How `--ray` cuts the grid into shards and what each shard reserves on a node."""

    shard_trials: int = Field(default=5, ge=1, description="trials (epochs) per shard")
    num_cpus: float = Field(default=1, ge=0)
    num_gpus: float = Field(default=0, ge=0)
    sandbox_resource: str | None = Field(default=SANDBOX_RESOURCE, min_length=1)
    resources: dict[str, float] = Field(default_factory=dict)
    max_retries: int = Field(default=3, ge=0, description="reruns of a shard whose worker or node died")
    env: list[str] = Field(default_factory=list, description="variables copied to the shards' processes")


class GridFile(_Strict):
    """The top level; the entries of `models` and `scenarios` are checked one by one after it."""

    models: list[Any] = Field(min_length=1)
    scenarios: list[Any] = Field(min_length=1)
    trials: int = Field(default=10, ge=1)
    log_dir: str | None = None
    eval: EvalOptions = Field(default_factory=EvalOptions)
    ray: RayOptions = Field(default_factory=RayOptions)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the grid, as plain data (it is created where it runs)."""

    label: str
    name: str
    base_url: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def create(self) -> Any:
        from inspect_ai.model import GenerateConfig, get_model

        return get_model(self.name, base_url=self.base_url, config=GenerateConfig(**self.config),
                         memoize=False, **self.args)

    def identity(self) -> dict[str, Any]:
        # base_url is not part of Inspect's task identity either: the same model behind a new URL
        # is the same measurement.
        return {"model": self.name, "args": self.args, "config": self.config}


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario: a registered Inspect task and its args."""

    label: str
    task: str
    args: dict[str, Any] = field(default_factory=dict)
    samples: int = 1

    def create(self) -> Any:
        from inspect_ai.util import registry_create

        return registry_create("task", self.task, **self.args)


@dataclass
class Grid:
    models: list[ModelSpec]
    scenarios: list[ScenarioSpec]
    trials: int
    log_dir: str | None
    eval: dict[str, Any]
    ray: RayOptions
    source: str = "GRID.yaml"

    def normalized(self) -> dict[str, Any]:
        """The grid as plain JSON-able data (recorded next to the logs)."""
        return {"trials": self.trials,
                "models": [{"label": m.label, "model": m.name, "base_url": m.base_url, "args": m.args,
                            "config": m.config} for m in self.models],
                "scenarios": [{"label": s.label, "task": s.task, "args": s.args, "samples": s.samples}
                              for s in self.scenarios],
                "eval_options": self.eval, "ray": self.ray.model_dump()}


def fingerprint(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def slug(text: str) -> str:
    """A path component for a label: `openai/gpt-4o` → `openai_gpt-4o`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problems(e: ValidationError, source: str, prefix: tuple[int | str, ...] = ()) -> list[str]:
    lines = []
    for err in e.errors():
        loc = prefix + tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = loc[:-1]
            known = _known_keys(parent)
            lines.append(f"{source}: {_where(parent)}: unknown key '{loc[-1]}'"
                         + (f" (known: {', '.join(known)})" if known else ""))
        elif err["type"] == "missing":
            lines.append(f"{source}: {_where(loc)}: missing")
        else:
            lines.append(f"{source}: {_where(loc)}: {err['msg']}")
    return lines


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    models: dict[str, type[BaseModel]] = {"models": ModelEntry, "scenarios": ScenarioEntry,
                                          "eval": EvalOptions, "ray": RayOptions}
    named = [p for p in loc if isinstance(p, str)]
    model = models.get(named[0]) if named else GridFile
    return list(model.model_fields) if model is not None else []


def _entries(items: list[Any], cls: type[BaseModel], key: str, section: str, source: str,
             problems: list[str]) -> list[tuple[int, Any]]:
    """Each entry of `models`/`scenarios` checked on its own, so one bad entry hides no other."""
    out = []
    for i, item in enumerate(items):
        data = {key: item} if isinstance(item, str) else item
        try:
            out.append((i, cls.model_validate(data)))
        except ValidationError as e:
            problems += _pydantic_problems(e, source, (section, i))
    return out


def read_grid_file(path: str | Path) -> tuple[GridFile, str]:
    """Parse GRID.yaml and check its top level (the entries are checked by `load_grid`)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise GridError([f"{source}: cannot read: {e.strerror or e}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GridError([f"{source}: not valid YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise GridError([f"{source}: expected a mapping with 'models' and 'scenarios', got "
                         f"{type(data).__name__}"])
    try:
        return GridFile.model_validate(data), source
    except ValidationError as e:
        raise GridError(_pydantic_problems(e, source)) from None


def load_grid(path: str | Path, *, for_ray: bool = False) -> Grid:
    """GRID.yaml → a checked `Grid`, or `GridError` listing every problem.

    A local run also creates each model, as `eval_set` would. A Ray driver does not: a model such
    as `vllm/...` or `hf/...` would load its weights on the driver; the shards create them."""
    from redline.grid.checks import check_models, check_scenarios

    source = str(path)
    problems: list[str] = []
    try:
        raw, source = read_grid_file(path)
    except GridError as e:
        # a bad top level: still check whatever entries parsed, so that every problem shows at once
        raw = _lenient(path)
        if raw is None:
            raise
        problems += e.problems
    model_entries = _entries(raw.models, ModelEntry, "model", "models", source, problems)
    scenario_entries = _entries(raw.scenarios, ScenarioEntry, "task", "scenarios", source, problems)
    models = check_models(model_entries, source, problems, create=not for_ray)
    scenarios = check_scenarios(scenario_entries, source, problems)
    if for_ray:
        _check_env(raw.ray, source, problems)
    if problems:
        raise GridError(problems)
    return Grid(models=models, scenarios=scenarios, trials=raw.trials, log_dir=raw.log_dir,
                eval=raw.eval.model_dump(exclude_none=True), ray=raw.ray, source=source)


def _lenient(path: str | Path) -> GridFile | None:
    """The entries of a grid file whose top level is wrong, for checking them anyway."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        models, scenarios = data.get("models"), data.get("scenarios")
    except Exception:
        return None
    return GridFile.model_construct(models=models if isinstance(models, list) else [],
                                    scenarios=scenarios if isinstance(scenarios, list) else [])


def _check_env(ray: RayOptions, source: str, problems: list[str]) -> None:
    import os

    for name in ray.env:
        if name not in os.environ:
            problems.append(f"{source}: ray.env: {name} is not set in this environment")
