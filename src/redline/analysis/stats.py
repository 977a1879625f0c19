"""Statistics for success rates: the 95% Wilson interval (shared with the Inspect metrics), the
unbiased pass@k estimator, a median that tolerates empty input, and for comparing two groups
the Newcombe interval of a difference, Fisher's exact test and the trials needed per group."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from math import comb
from statistics import NormalDist

from redline.metrics import wilson_interval

__all__ = ["wilson_interval", "pass_at_k", "median", "newcombe_interval", "fisher_exact_p", "trials_needed"]


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


def newcombe_interval(c1: int, n1: int, c2: int, n2: int) -> tuple[float, float, float]:
    """Difference p1 - p2 of two success rates with its 95% interval: Newcombe's hybrid score
    interval (method 10 of Newcombe 1998), built from the two Wilson intervals. Sound at 0/n and
    n/n and for small n, where the Wald interval is not."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both groups need at least one trial")
    p1, p2 = c1 / n1, c2 / n2
    l1, u1 = wilson_interval(c1, n1)
    l2, u2 = wilson_interval(c2, n2)
    d = p1 - p2
    return d, max(-1.0, d - math.hypot(p1 - l1, u2 - p2)), min(1.0, d + math.hypot(u1 - p1, p2 - l2))


def fisher_exact_p(c1: int, n1: int, c2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test on the 2×2 table successes/failures × group
    (`scipy.stats.fisher_exact`, imported here: it costs ~1 s, which only `--compare` pays)."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[c1, n1 - c1], [c2, n2 - c2]], alternative="two-sided").pvalue)


def trials_needed(p1: float, p2: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Trials per group to tell success rates p1 and p2 apart with a two-sided test at `alpha`
    with the given power: the normal approximation with Fleiss' continuity correction (Fleiss,
    Tytun & Ury 1980), the usual stand-in for Fisher's exact test. None when p1 == p2."""
    if p1 == p2:
        return None
    z = NormalDist()
    za, zb = z.inv_cdf(1 - alpha / 2), z.inv_cdf(power)
    pbar = (p1 + p2) / 2
    delta = abs(p1 - p2)
    spread = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    n = spread**2 / delta**2
    n_cc = n / 4 * (1 + math.sqrt(1 + 4 / (n * delta))) ** 2
    return math.ceil(n_cc - 1e-9)
