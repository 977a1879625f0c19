"""Inspect metrics for redline scores: success rate with its 95% Wilson interval."""

from __future__ import annotations

import math

from inspect_ai.scorer import Metric, SampleScore, metric


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0/n and n/n)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _successes(scores: list[SampleScore]) -> tuple[int, int]:
    values = [float(s.score.as_float()) for s in scores]
    return sum(1 for v in values if v >= 0.5), len(values)


@metric
def wilson_low() -> Metric:
    """Lower end of the 95% Wilson interval of the success rate."""

    def compute(scores: list[SampleScore]) -> float:
        return wilson_interval(*_successes(scores))[0]

    return compute


@metric
def wilson_high() -> Metric:
    """Upper end of the 95% Wilson interval of the success rate."""

    def compute(scores: list[SampleScore]) -> float:
        return wilson_interval(*_successes(scores))[1]

    return compute
