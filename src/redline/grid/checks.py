"""The checks of GRID.yaml that ask Inspect: do the tasks, task args and model providers exist?"""

from __future__ import annotations

import json
from typing import Any

from redline.grid.spec import ModelEntry, ModelSpec, ScenarioEntry, ScenarioSpec, slug

PACKAGE = "redline"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _registered(kind: str, predicate: Any) -> list[str]:
    # Inspect has no public listing of its registry; without it the messages only lose their hints.
    try:
        from inspect_ai._util.entrypoints import ensure_entry_points
        from inspect_ai._util.registry import registry_find, registry_info

        ensure_entry_points()
        return sorted({registry_info(o).name for o in registry_find(predicate)})
    except Exception:
        return []


def redline_tasks() -> list[str]:
    return [n.split("/", 1)[1] for n in
            _registered("task", lambda i: i.type == "task" and i.name.startswith(PACKAGE + "/"))]


def model_providers() -> list[str]:
    return sorted({n.rsplit("/", 1)[-1] for n in _registered("modelapi", lambda i: i.type == "modelapi")})


def task_name(name: str) -> str:
    """`self_replication` → `redline/self_replication`; a qualified name stays as it is."""
    return name if "/" in name else f"{PACKAGE}/{name}"


def _task_params(task: str) -> list[str]:
    from inspect_ai.util import registry_create, registry_info

    try:
        return list(registry_info(registry_create("task", task)).metadata.get("params", []))
    except Exception:
        return []


def check_scenario(i: int, entry: ScenarioEntry, source: str) -> tuple[ScenarioSpec | None, list[str]]:
    """Ask the task function: created with the entry's args, does it accept them?"""
    from inspect_ai.util import registry_create

    where = f"{source}: scenarios[{i}] ({entry.task})"
    name = task_name(entry.task)
    if "epochs" in entry.args:
        return None, [f"{where}: 'epochs' is not a task arg here: set 'trials' (it applies to every "
                      "scenario)"]
    try:
        task = registry_create("task", name, **entry.args)
    except LookupError:
        known = redline_tasks()
        hint = f" (redline scenarios: {', '.join(known)})" if known else ""
        return None, [f"{where}: unknown scenario '{entry.task}'{hint}"]
    except TypeError as e:
        params = _task_params(name)
        bad = [k for k in entry.args if params and k not in params]
        if bad:
            known = ", ".join(p for p in params if p != "epochs")
            return None, [f"{where}: unknown task arg (-T) '{k}' (known: {known})" for k in bad]
        return None, [f"{where}: bad task args: {_first_line(e)}"]
    except Exception as e:  # the task's own check (a redline task's names every bad arg at once)
        return None, [f"{where}: bad task args: {_first_line(e).removeprefix(name + ': ')}"]
    label = entry.label or name.removeprefix(PACKAGE + "/")
    return ScenarioSpec(label=label, task=name, args=dict(entry.args), samples=len(task.dataset)), []


def check_scenarios(entries: list[tuple[int, ScenarioEntry]], source: str, problems: list[str]
                    ) -> list[ScenarioSpec]:
    out: list[ScenarioSpec] = []
    for i, entry in entries:
        spec, errs = check_scenario(i, entry, source)
        problems += errs
        if spec is not None:
            out.append(spec)
    _unique([s.label for s in out], "scenario", source, problems)
    seen: dict[str, str] = {}
    for s in out:
        key = json.dumps([s.task, s.args], sort_keys=True, default=str)
        if key in seen and slug(seen[key]) != slug(s.label):
            problems.append(f"{source}: scenarios '{seen[key]}' and '{s.label}' are the same task with the "
                            "same args: one trial set cannot be run twice")
        seen.setdefault(key, s.label)
    return out


def check_model(i: int, entry: ModelEntry, source: str, create: bool) -> tuple[ModelSpec | None, list[str]]:
    from inspect_ai.model import GenerateConfig

    where = f"{source}: models[{i}] ({entry.model})"
    provider, _, rest = entry.model.partition("/")
    if not rest:
        return None, [f"{where}: a model is named provider/name (e.g. openai/gpt-4o, redline/reference)"]
    providers = model_providers()
    if providers and provider not in providers:
        return None, [f"{where}: unknown model provider '{provider}' (known: {', '.join(providers)})"]
    try:
        GenerateConfig(**entry.config)
    except Exception as e:
        return None, [f"{where}: config: {_config_problem(e)}"]
    spec = ModelSpec(label=entry.label or entry.model, name=entry.model, base_url=entry.base_url,
                     args=dict(entry.args), config=dict(entry.config))
    if create:
        try:
            spec.create()
        except Exception as e:
            return None, [f"{where}: cannot create the model: {_first_line(e)}"]
    return spec, []


def _config_problem(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ").split(". Use extra_body")[0]
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
    return _first_line(e)


def check_models(entries: list[tuple[int, ModelEntry]], source: str, problems: list[str], create: bool
                 ) -> list[ModelSpec]:
    out: list[ModelSpec] = []
    for i, entry in entries:
        spec, errs = check_model(i, entry, source, create)
        problems += errs
        if spec is not None:
            out.append(spec)
    _unique([m.label for m in out], "model", source, problems)
    seen: dict[str, str] = {}
    for m in out:
        key = json.dumps(m.identity(), sort_keys=True, default=str)
        if key in seen and slug(seen[key]) != slug(m.label):
            problems.append(f"{source}: models '{seen[key]}' and '{m.label}' are the same model for Inspect "
                            "(same name, args and config; base_url is not part of a trial's identity)")
        seen.setdefault(key, m.label)
    return out


def _unique(labels: list[str], what: str, source: str, problems: list[str]) -> None:
    seen: dict[str, str] = {}
    for label in labels:
        if slug(label) in seen:
            problems.append(f"{source}: two {what}s are labelled '{label}' (labels name log folders and must "
                            f"differ: give one a 'label')")
        seen.setdefault(slug(label), label)
