"""One trial's process genealogy as a small timeline figure: inline SVG for the HTML report,
an indented text tree for Markdown.

SVG rather than a matplotlib PNG: a report of 1,000 trials draws 1,000 of them, and building
the markup by hand costs microseconds where a PNG costs ~100 ms. Every piece of text in it comes
from the agent's sandbox (command lines), so all of it is escaped.

Each row is a process, indented under its parent, in fork order. Its bar runs from its fork to
its exit (or the end of the record), coloured by role; a tick marks its exec; its end shows
its fate: a red cross where the judge killed it, a grey bar end where it exited by itself
(with the exit code), an open arrow when it was still alive. A thin line joins each child to
its parent at the moment of the fork.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from redline.analysis.genealogy import ALIVE, EXITED, KILLED, Proc

COLORS = {"original_agent": "#4e79a7", "original_model_server": "#76b7b2", "replica_agent": "#e15759",
          "replica_model_server": "#f28e2b", "other": "#bab0ac"}
LABELS = {"original_agent": "original agent", "original_model_server": "original model server",
          "replica_agent": "replica agent", "replica_model_server": "replica model server", "other": "other"}
MAX_ROWS = 40
ROW, LABEL_W, PLOT_W, PAD = 16, 300, 400, 6  # px: the figure is 720 px wide


def _span(procs: list[Proc]) -> tuple[float, float]:
    times = [t for p in procs for t in (p.t_fork, p.t_exec, p.t_exit) if t is not None]
    if not times:
        return 0.0, 1.0
    t0, t1 = min(times), max(times)
    return t0, t1 if t1 > t0 else t0 + 1.0


def _row_svg(p: Proc, y: int, x: Callable[[float], float], t_end: float,
             parent_y: int | None) -> list[str]:
    e = html.escape
    start = p.t_fork if p.t_fork is not None else p.t_exec
    x0 = x(start) if start is not None else LABEL_W
    end = p.t_exit if p.t_exit is not None else t_end
    x1 = max(x0 + 2, x(end))
    gen = f" · gen {p.generation}" if p.role.startswith("replica") else ""
    code = f", exit {p.exit_code}" if p.exit_code is not None else ""
    tip = f"pid {p.pid} · {LABELS[p.role]}{gen} · {p.fate}{code}\n{' '.join(p.cmd.split())}"
    cmd = " ".join(p.cmd.split())
    label = f"{p.pid} {cmd}"
    label = label if len(label) <= 40 - p.depth else label[:39 - p.depth] + "…"
    out = [f'<g><title>{e(tip)}</title>',
           f'<text x="{4 + 8 * min(p.depth, 12)}" y="{y + 11}" font-size="10">{e(label)}</text>',
           f'<rect x="{x0:.1f}" y="{y + 3}" width="{x1 - x0:.1f}" height="{ROW - 6}" '
           f'fill="{COLORS[p.role]}"/>']
    if parent_y is not None:
        out.append(f'<line x1="{x0:.1f}" y1="{parent_y + ROW - 3}" x2="{x0:.1f}" y2="{y + 3}" '
                   'stroke="#888" stroke-width="0.8"/>')
    if p.t_exec is not None and p.t_fork is not None:
        out.append(f'<line x1="{x(p.t_exec):.1f}" y1="{y + 1}" x2="{x(p.t_exec):.1f}" y2="{y + ROW - 1}" '
                   'stroke="#222" stroke-width="1"/>')
    if p.fate == KILLED:
        out.append(f'<text x="{x1 + 1:.1f}" y="{y + 12}" font-size="12" fill="#d00" '
                   'font-weight="bold">✕</text>')
    elif p.fate == EXITED:
        out.append(f'<rect x="{x1 - 1:.1f}" y="{y + 1}" width="2" height="{ROW - 2}" fill="#555"/>')
    elif p.fate == ALIVE:
        out.append(f'<text x="{x1 + 1:.1f}" y="{y + 12}" font-size="11" fill="#2a2">▶</text>')
    out.append("</g>")
    return out


def svg(procs: list[Proc]) -> str:
    """The timeline figure of one trial's processes (at most `MAX_ROWS` rows drawn)."""
    shown = procs[:MAX_ROWS]
    t0, t1 = _span(procs)
    width = LABEL_W + PLOT_W + 20

    def x(t: float) -> float:
        return LABEL_W + (t - t0) / (t1 - t0) * PLOT_W

    rows: dict[int, int] = {}
    body: list[str] = []
    parent_of = {id(c): p for p in shown for c in p.children}
    for i, p in enumerate(shown):
        y = PAD + i * ROW
        rows[id(p)] = y
        parent = parent_of.get(id(p))
        body += _row_svg(p, y, x, t1, rows.get(id(parent)) if parent is not None else None)
    height = PAD * 2 + len(shown) * ROW + 28
    axis_y = PAD + len(shown) * ROW + 4
    legend = "".join(f'<rect x="{10 + 140 * k}" y="{axis_y + 12}" width="10" height="8" fill="{c}"/>'
                     f'<text x="{23 + 140 * k}" y="{axis_y + 20}" font-size="9">{LABELS[r]}</text>'
                     for k, (r, c) in enumerate(COLORS.items()))
    axis = (f'<line x1="{LABEL_W}" y1="{axis_y}" x2="{LABEL_W + PLOT_W}" y2="{axis_y}" stroke="#999"/>'
            f'<text x="{LABEL_W}" y="{axis_y - 1 + 10}" font-size="9">0 s</text>'
            f'<text x="{LABEL_W + PLOT_W - 40}" y="{axis_y + 9}" font-size="9">{t1 - t0:.1f} s</text>')
    more = f'<text x="4" y="{axis_y + 9}" font-size="9">+{len(procs) - len(shown)} more processes</text>' \
        if len(procs) > len(shown) else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="genealogy" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif">'
            f'{"".join(body)}{axis}{more}<g>{legend}</g></svg>')


def text_tree(procs: list[Proc], limit: int = MAX_ROWS) -> str:
    """The same genealogy as an indented list (Markdown reports), one process a line."""
    lines = []
    for p in procs[:limit]:
        gen = f", gen {p.generation}" if p.role.startswith("replica") else ""
        code = f", exit {p.exit_code}" if p.exit_code is not None and p.fate == EXITED else ""
        cmd = " ".join(p.cmd.split())[:80].replace("`", "'")
        lines.append(f"{'  ' * min(p.depth, 12)}- {p.pid} [{LABELS[p.role]}{gen}; {p.fate}{code}] `{cmd}`")
    if len(procs) > limit:
        lines.append(f"- … {len(procs) - limit} more processes")
    return "\n".join(lines)
