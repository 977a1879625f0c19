"""Is A really better than B? Two models (or two scenarios) compared on the same footing.

A and B are *selectors*, each one of:
- a model name as the logs spell it (`openai/gpt-4o`), or a unique normalised match
  (`qwen2.5-72b` for `ollama/qwen2.5:72b`);
- a scenario name (`self_replication`);
- `MODEL@SCENARIO` for one cell.

When both select models, they are compared scenario by scenario (every scenario both ran);
when both select scenarios, model by model; `MODEL@SCENARIO` pairs compare their cells
directly. Rows never pool trials across scenarios: the scenarios are different tasks.
For each row: successes/trials of each side (errored samples are not trials), the difference
of rates with its 95% Newcombe interval, Fisher's exact two-sided p-value, and the trials per
group that would tell the two observed rates apart at 80% power (`stats.trials_needed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from redline.analysis.logs import SampleRecord
from redline.analysis.papers import normalize_model_name
from redline.analysis.stats import fisher_exact_p, newcombe_interval, trials_needed


class SelectorError(ValueError):
    """A selector that matches nothing, or more than one model."""


@dataclass
class Selector:
    text: str
    model: str | None = None
    scenario: str | None = None

    @property
    def kind(self) -> str:
        return "cell" if self.model and self.scenario else "model" if self.model else "scenario"


@dataclass
class ComparisonRow:
    stratum: str  # the scenario (models compared) or the model (scenarios compared)
    a: str
    b: str
    a_successes: int
    a_trials: int
    b_successes: int
    b_trials: int
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    fisher_p: float | None = None
    trials_needed: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _model(text: str, models: set[str]) -> str | None:
    if text in models:
        return text
    norm = normalize_model_name(text)
    hits = sorted(m for m in models if normalize_model_name(m) == norm)
    if len(hits) > 1:
        raise SelectorError(f"{text!r} matches several models: {', '.join(hits)}; give the full name")
    return hits[0] if hits else None


def parse_selector(text: str, samples: Sequence[SampleRecord]) -> Selector:
    """Resolve `text` against the models and scenarios of `samples` (see the module doc)."""
    models = {s.model for s in samples}
    scenarios = {s.scenario for s in samples}
    if text in scenarios:
        return Selector(text, scenario=text)
    model = _model(text, models)
    if model is not None:
        return Selector(text, model=model)
    if "@" in text:
        m, _, scen = text.rpartition("@")
        model = _model(m, models)
        if model is not None and scen in scenarios:
            return Selector(text, model=model, scenario=scen)
    raise SelectorError(f"{text!r} is no model or scenario of these logs. Models: "
                        f"{', '.join(sorted(models))}; scenarios: {', '.join(sorted(scenarios))}; "
                        "or MODEL@SCENARIO")


def _tally(samples: Sequence[SampleRecord], model: str | None, scenario: str | None) -> tuple[int, int]:
    trials = [s for s in samples if s.outcome != "error" and (model is None or s.model == model)
              and (scenario is None or s.scenario == scenario)]
    return sum(1 for s in trials if s.success), len(trials)


def _row(samples: Sequence[SampleRecord], stratum: str, a: Selector, b: Selector,
         where_a: tuple[str | None, str | None], where_b: tuple[str | None, str | None]) -> ComparisonRow:
    (ca, na), (cb, nb) = _tally(samples, *where_a), _tally(samples, *where_b)
    row = ComparisonRow(stratum, a.text, b.text, ca, na, cb, nb)
    if na and nb:
        row.difference, row.low, row.high = newcombe_interval(ca, na, cb, nb)
        row.fisher_p = fisher_exact_p(ca, na, cb, nb)
        row.trials_needed = trials_needed(ca / na, cb / nb)
    return row


def compare(samples: Sequence[SampleRecord], a_text: str, b_text: str) -> list[ComparisonRow]:
    """Rows comparing selector A with selector B (raises `SelectorError` for bad selectors)."""
    a, b = parse_selector(a_text, samples), parse_selector(b_text, samples)
    if a.kind != b.kind and "cell" not in (a.kind, b.kind):
        raise SelectorError(f"compare a model with a model or a scenario with a scenario "
                            f"({a.text!r} is a {a.kind}, {b.text!r} a {b.kind}); or use MODEL@SCENARIO")
    if "cell" in (a.kind, b.kind):
        return [_row(samples, f"{a.scenario or '*'} / {b.scenario or '*'}", a, b, (a.model, a.scenario),
                     (b.model, b.scenario))]
    if a.kind == "model":
        strata = sorted({s.scenario for s in samples if s.model == a.model}
                        & {s.scenario for s in samples if s.model == b.model})
        return [_row(samples, st, a, b, (a.model, st), (b.model, st)) for st in strata]
    strata = sorted({s.model for s in samples if s.scenario == a.scenario}
                    & {s.model for s in samples if s.scenario == b.scenario})
    return [_row(samples, st, a, b, (st, a.scenario), (st, b.scenario)) for st in strata]
