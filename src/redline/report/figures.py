"""The report's PNG figures, drawn with matplotlib's object API on the Agg canvas.

Using `Figure` + `FigureCanvasAgg` directly (not pyplot) keeps the report free of global
state and of any display: it runs the same on a headless CI box as on a laptop.
Every function returns PNG bytes, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from redline.analysis.commands import CATEGORIES
from redline.analysis.obstacles import TAXONOMY
from redline.analysis.tables import SuccessRow

DPI = 100
_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def _label(text: str, width: int = 38) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # Constrained layout instead of bbox_inches="tight", which draws every figure twice.
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def success_rates(rows: Sequence[SuccessRow]) -> bytes | None:
    """Horizontal bars: success rate per model × scenario with its 95% Wilson interval."""
    rows = [r for r in rows if r.trials]
    if not rows:
        return None
    fig = Figure(layout="constrained", figsize=(8, 0.8 + 0.45 * len(rows)))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    rates = [r.rate or 0.0 for r in rows]
    # Clamped at 0: for n/n the Wilson bound can round to just below the rate (4/4: 0.9999999999999999).
    err = [[max(0.0, (r.rate or 0) - (r.wilson_low or 0)) for r in rows],
           [max(0.0, (r.wilson_high or 0) - (r.rate or 0)) for r in rows]]
    ax.barh(ys, rates, xerr=err, color=_COLORS[0], capsize=3, height=0.6)
    ax.set_yticks(ys, [_label(f"{r.model} · {r.scenario}", 50) for r in rows], fontsize=8)
    for y, r in zip(ys, rows, strict=True):
        ax.text((r.wilson_high or 0) + 0.02, y, f"{r.successes}/{r.trials}", va="center", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("success rate (95% Wilson interval)")
    ax.set_title("Success rate by model and scenario")
    return _png(fig)


def milestone_funnel(funnel: Sequence[dict[str, Any]]) -> bytes | None:
    """One panel per scenario: the share of trials reaching each milestone, grouped by model."""
    funnel = [f for f in funnel if f["trials"]]
    if not funnel:
        return None
    scenarios = sorted({f["scenario"] for f in funnel})
    fig = Figure(layout="constrained", figsize=(9, 3.2 * len(scenarios)))
    for i, scenario in enumerate(scenarios):
        ax = fig.add_subplot(len(scenarios), 1, i + 1)
        cells = [f for f in funnel if f["scenario"] == scenario]
        stages = list(cells[0]["milestones"])
        for f in cells[1:]:
            stages += [m for m in f["milestones"] if m not in stages]
        width = 0.8 / len(cells)
        for j, f in enumerate(cells):
            xs = [k + (j - (len(cells) - 1) / 2) * width for k in range(len(stages))]
            vals = [f["milestones"].get(m, 0) / f["trials"] for m in stages]
            ax.bar(xs, vals, width=width, color=_COLORS[j % len(_COLORS)],
                   label=_label(f"{f['model']} (n={f['trials']})"))
        ax.set_xticks(range(len(stages)), [s.replace("_", "\n") for s in stages], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of trials")
        ax.set_title(f"Milestones: {scenario}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def steps_to_success(groups: Sequence[tuple[str, list[float]]]) -> bytes | None:
    """Box plot with the individual points on top: steps of successful trials per group."""
    groups = [(name, vals) for name, vals in groups if vals]
    if not groups:
        return None
    import numpy as np

    fig = Figure(layout="constrained", figsize=(max(5.0, 1.3 * len(groups) + 2), 4))
    ax = fig.add_subplot()
    data = [vals for _, vals in groups]
    ax.boxplot(data, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same logs draw the same figure
    for i, vals in enumerate(data, start=1):
        xs = i + rng.uniform(-0.15, 0.15, size=len(vals))
        ax.scatter(xs, vals, s=12, alpha=0.6, color=_COLORS[(i - 1) % len(_COLORS)], zorder=3)
    names = ["\n".join(_label(part, 26) for part in n.split(" · ")) for n, _ in groups]
    ax.set_xticks(range(1, len(groups) + 1), names, fontsize=8)
    ax.set_ylabel("steps")
    ax.set_title("Steps to success (successful trials)")
    return _png(fig)


def command_categories(counts: dict[str, dict[str, int]]) -> bytes | None:
    """One stacked bar per model: the share of its simple commands in each category."""
    models = [m for m, c in counts.items() if sum(c.values())]
    if not models:
        return None
    fig = Figure(layout="constrained", figsize=(9, 1.2 + 0.5 * len(models)))
    ax = fig.add_subplot()
    ys = list(range(len(models)))[::-1]
    left = [0.0] * len(models)
    for k, cat in enumerate(CATEGORIES):
        vals = [counts[m].get(cat, 0) / sum(counts[m].values()) for m in models]
        ax.barh(ys, vals, left=left, color=_COLORS[k % len(_COLORS)], label=cat, height=0.6)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(ys, [_label(f"{m} (n={sum(counts[m].values())})") for m in models], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of simple commands")
    ax.set_title("Command categories")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncol=3)
    return _png(fig)


def obstacles(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """Per taxonomy subtype (all models): obstacles met, split into resolved and unresolved."""
    totals: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        t = totals.setdefault((r["category"], r["subtype"]), [0, 0])
        t[0] += r["resolved"]
        t[1] += r["count"] - r["resolved"]
    if not totals:
        return None
    order = [(c, s) for c, subs in TAXONOMY.items() for s in subs if (c, s) in totals]
    order += [k for k in totals if k not in order]
    fig = Figure(layout="constrained", figsize=(8, 1.2 + 0.4 * len(order)))
    ax = fig.add_subplot()
    ys = list(range(len(order)))[::-1]
    res = [totals[k][0] for k in order]
    unres = [totals[k][1] for k in order]
    ax.barh(ys, res, color="#59a14f", label="resolved", height=0.6)
    ax.barh(ys, unres, left=res, color="#bab0ac", label="not resolved", height=0.6)
    ax.set_yticks(ys, [f"{c.split()[0]} {s}" for c, s in order], fontsize=8)
    ax.set_xlabel("obstacles met")
    ax.set_title("Obstacles and their resolution")
    ax.legend(fontsize=8)
    return _png(fig)
