"""Statistics for success rates: the 95% Wilson interval (shared with the Inspect metrics), the
unbiased pass@k estimator, and a median that tolerates empty input."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from math import comb

from redline.metrics import wilson_interval

__all__ = ["wilson_interval", "pass_at_k", "median"]


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Probability that at least one of k trials drawn from n (c of them successes) succeeds:
    1 - C(n-c, k) / C(n, k) (Chen et al. 2021). None when n < k: the data cannot say."""
    if k <= 0 or n < k or c < 0 or c > n:
        return None
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def median(values: Iterable[float | int | None]) -> float | None:
    """Median of the non-None values, or None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None
