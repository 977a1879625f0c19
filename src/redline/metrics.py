"""Inspect metrics for redline scores: success rate with its 95% Wilson interval.

Each epoch is one trial (the papers' unit). Inspect reduces a sample's epochs to one score before
metrics see it, so the `trials` reducer keeps the count of trials and successes in the reduced
score's metadata, and the interval is computed over trials, not over samples.
"""

from __future__ import annotations

import math

from inspect_ai.scorer import Metric, SampleScore, Score, ScoreReducer, mean_score, metric, score_reducer


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0/n and n/n).

    The interval always holds the observed rate: at n/n the upper end is exactly 1 and at 0/n the
    lower end exactly 0 (rounding made `centre + half` 0.9999999999999999 for n = 4, 10, 14, …)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes <= 0 else min(p, max(0.0, centre - half))
    high = 1.0 if successes >= n else max(p, min(1.0, centre + half))
    return low, high


def success_of(score: Score) -> float:
    value = score.value
    if isinstance(value, dict):
        return float(value.get("success", 0.0))  # type: ignore[arg-type]
    return float(score.as_float())


@score_reducer(name="trials")
def trials() -> ScoreReducer:
    """The mean of every key, plus how many trials there were and how many succeeded."""
    mean = mean_score()

    def reduce(scores: list[Score]) -> Score:
        reduced = mean(scores)
        successes = sum(1 for s in scores if success_of(s) >= 0.5)
        reduced.metadata = {**(reduced.metadata or {}), "trials": len(scores), "successes": successes}
        return reduced

    return reduce


def _successes(scores: list[SampleScore]) -> tuple[int, int]:
    won = n = 0
    for s in scores:
        meta = s.score.metadata or {}
        if "trials" in meta:
            won, n = won + int(meta["successes"]), n + int(meta["trials"])
        else:  # reduced some other way: count the sample as one trial
            won, n = won + int(success_of(s.score) >= 0.5), n + 1
    return won, n


@metric
def wilson_low() -> Metric:
    """Lower end of the 95% Wilson interval of the success rate over all trials."""

    def compute(scores: list[SampleScore]) -> float:
        return wilson_interval(*_successes(scores))[0]

    return compute


@metric
def wilson_high() -> Metric:
    """Upper end of the 95% Wilson interval of the success rate over all trials."""

    def compute(scores: list[SampleScore]) -> float:
        return wilson_interval(*_successes(scores))[1]

    return compute
