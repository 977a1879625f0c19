"""redline's escape suite: hostile cases run as the agent through Inspect's sandbox API, each
judged from the host side. `redline.selfcheck` runs them (a fast subset before every eval, all of
them on demand); `tests/containment/` runs them under pytest.

Importing this package registers every case in `CASES`, in a stable order.
"""

# ruff: noqa: F401 - the category modules register their cases on import
from redline.containment import (
    cases_cross,
    cases_files,
    cases_kernel,
    cases_net,
    cases_priv,
    cases_reads,
    cases_res,
    cases_teardown,
)
from redline.containment.case import CASES, CATEGORIES, Case, Outcome
from redline.containment.runner import run_cases

CASES.sort(key=lambda c: CATEGORIES.index(c.category))  # stable: keeps each module's order

__all__ = ["CASES", "CATEGORIES", "Case", "Outcome", "run_cases"]
