"""How the report writes numbers and text in its tables."""

from __future__ import annotations

MAX_LISTED = 200  # rows of long instance lists shown in html/md; summary.json keeps all
DASH = "—"


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return DASH
    return f"{x:,.{digits}f}"


def trunc(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"
