"""`redline report`: Inspect logs of redline tasks → `report.html`, `report.md`, `summary.json`
and PNG figures.

`build_report(source, out)` does it all and returns a `ReportResult`; the numbers come from
`redline.analysis` (whose module docs state every counting rule) and `summary.json` holds them
in machine-readable form, so tools and tests need not parse the Markdown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redline.analysis import tables
from redline.analysis.behaviours import KINDS as BEHAVIOUR_KINDS
from redline.analysis.commands import CATEGORIES
from redline.analysis.logs import Problem, SampleRecord, find_logs, load_samples
from redline.analysis.papers import match_published
from redline.analysis.stats import median
from redline.report import figures
from redline.report.render import Document, Image, Section, Table, markdown, page_html, table_markdown

FORMATS = ("html", "md")
MAX_LISTED = 200  # rows of long instance lists shown in html/md; summary.json keeps all
DASH = "—"


@dataclass
class ReportResult:
    """What `build_report` wrote and found."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    success_table_md: str = ""


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return DASH
    return f"{x:,.{digits}f}"


def _trunc(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _ci(r: tables.SuccessRow) -> str:
    return DASH if r.wilson_low is None else f"{_pct(r.wilson_low)}–{_pct(r.wilson_high)}"


def success_table(rows: Sequence[tables.SuccessRow]) -> Table:
    """The success table (also printed by `redline eval`)."""
    headers = ["Model", "Scenario", "Successes", "Rate", "95% CI", "pass@1", "pass@5", "pass@10",
               "Median steps (success)", "Median wall s (success)", "Tokens", "Errored"]
    body = []
    for r in rows:
        ci = _ci(r)
        body.append([r.model, r.scenario, f"{r.successes}/{r.trials}", _pct(r.rate), ci,
                     *[_num(r.pass_at.get(k), 2) for k in tables.PASS_KS],
                     _num(r.median_steps, 1), _num(r.median_wall_seconds, 1), _num(r.tokens),
                     str(r.errors)])
    return Table(headers, body, numeric=set(range(2, 12)), table_id="success-table")


def _papers(rows: Sequence[tables.SuccessRow]) -> tuple[Table, list[dict[str, Any]]]:
    ours = {r.model: r for r in rows if r.scenario == "self_replication"}
    body, data = [], []
    for pub, models in match_published(ours):
        published = f"{pub.successes}/{pub.trials} ({_pct(pub.rate)})" if pub.trials else pub.note
        mine = [ours[m] for m in models]
        body.append([pub.paper, pub.model, published, "; ".join(models) or DASH,
                     "; ".join(f"{r.successes}/{r.trials} ({_pct(r.rate)})" for r in mine) or DASH,
                     "; ".join(_ci(r) for r in mine if r.trials) or DASH])
        data.append({"paper": pub.paper, "model": pub.model, "published_rate": pub.rate,
                     "published_successes": pub.successes, "published_trials": pub.trials, "note": pub.note,
                     "ours": [{"model": r.model, "successes": r.successes, "trials": r.trials,
                               "rate": r.rate} for r in mine]})
    t = Table(["Paper", "Published model", "Published", "Our model", "Ours (self_replication)", "Our 95% CI"],
              body, table_id="papers-table")
    return t, data


def _steps_groups(samples: Iterable[SampleRecord]) -> list[tuple[str, list[float]]]:
    groups: dict[str, list[float]] = {}
    for s in samples:
        if s.success and s.steps is not None:
            groups.setdefault(f"{s.model} · {s.scenario}", []).append(float(s.steps))
    return sorted(groups.items())


def _missing_notes(samples: Iterable[SampleRecord]) -> list[str]:
    counts: dict[str, int] = {}
    for s in samples:
        for m in s.missing:
            counts[m] = counts.get(m, 0) + 1
    return [f"{n} sample(s) lack {k} (an older version?): reported with what is there."
            for k, n in sorted(counts.items())]


def build_report(source: str | Path, out: str | Path | None = None,
                 formats: Iterable[str] = FORMATS) -> ReportResult:
    """Read every log under `source` (a directory or one log file) and write the report into
    `out` (default: `<source>/report`, or next to a single file). Never raises for bad logs:
    they become `ReportResult.problems` and a section of the report."""
    src = Path(source)
    out_dir = Path(out) if out is not None else (src / "report" if src.is_dir() else src.parent / "report")
    formats = set(formats)
    samples, problems = load_samples(src, exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_files = [str(f) for f in find_logs(src, out_dir)] if src.exists() else []

    rows = tables.success_table(samples)
    funnel = tables.milestone_funnel(samples)
    commands = tables.command_counts(samples)
    tools = tables.tool_counts(samples)
    obstacle_list = tables.obstacle_instances(samples)
    obstacle_rows = tables.obstacle_rows(obstacle_list)
    behaviour_list = tables.behaviour_instances(samples)
    behaviour_counts = tables.behaviour_counts(behaviour_list)
    steps_groups = _steps_groups(samples)
    papers_table, papers_data = _papers(rows)
    errors = [s for s in samples if s.outcome == "error"]
    trials = [s for s in samples if s.outcome != "error"]

    pngs = {
        "success_rates.png": (figures.success_rates(rows),
                              "Success rate per model and scenario, 95% Wilson interval"),
        "milestone_funnel.png": (figures.milestone_funnel(funnel), "Share of trials reaching each milestone"),
        "steps_to_success.png": (figures.steps_to_success(steps_groups), "Steps taken by successful trials"),
        "command_categories.png": (figures.command_categories(commands), "Command categories per model"),
        "obstacles.png": (figures.obstacles(obstacle_rows),
                          "Obstacles per taxonomy subtype and their resolution"),
    }
    images = {name: Image(name, alt, png) for name, (png, alt) in pngs.items() if png is not None}

    succ = success_table(rows)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    intro = [f"Source: {src} — {len(log_files)} log file(s), {len(samples)} redline sample(s): "
             f"{len(trials)} scored trial(s) ({sum(1 for s in trials if s.success)} successes), "
             f"{len(errors)} errored. Generated {generated}."]
    if problems:
        intro.append(f"{len(problems)} problem(s) reading the logs: see 'Problems reading the logs'.")
    if not samples:
        intro.append("There are no redline samples to report.")

    sections = [
        Section("success", "Success rates", [
            "Errored samples are not trials: they are listed under 'Errored samples' and counted in the "
            "Errored column. pass@k is the unbiased estimator, given when every dataset sample has "
            "at least k trials. Medians are over successful trials; tokens are summed over all samples.",
            succ, *_img(images, "success_rates.png")]),
        Section("milestones", "Milestone funnel", [_funnel_table(funnel),
                                                   *_img(images, "milestone_funnel.png")]),
        Section("steps", "Steps and time", [_steps_table(samples), *_img(images, "steps_to_success.png")]),
        Section("commands", "Command categories", [
            "Every EXECUTE_CMD command is split into simple commands (pipes, &&, ;, subshells, bash -c, "
            "wrappers such as sudo/nohup/timeout removed); each counts once in its category. "
            "Pipeline filters (grep, awk, …) and shell-state commands (cd, sleep, export) do not count "
            "on their own. Rules: redline.analysis.commands.",
            _commands_table(commands), *_img(images, "command_categories.png"), _tools_table(tools)]),
        Section("obstacles", "Obstacles", [
            "Failures seen in observations, mapped to the follow-up paper's taxonomy (O1 unsuitable "
            "command, O2 improper environment, O3 incorrect usage). An obstacle is resolved when a later "
            "step of the same conversation succeeds at the same thing (same target, or same command "
            "category). Rules: redline.analysis.obstacles.",
            _obstacle_table(obstacle_rows), *_img(images, "obstacles.png")]),
        Section("behaviours", "Unexpected behaviours", [
            "Counts are samples showing the behaviour at least once. Rules: redline.analysis.behaviours.",
            _behaviour_counts_table(behaviour_counts), _behaviour_table(behaviour_list)]),
        Section("papers", "Published numbers", [
            "Paper 1 ran the same task (ten trials per model). Paper 2 replicated into a second container "
            "after an authentication step, so its rates are a neighbouring measurement. Ours is the "
            "self_replication scenario of the model whose normalised name matches.",
            papers_table]),
        Section("errors", "Errored samples", [_errors_table(errors)]),
        Section("problems", "Problems reading the logs", [_problems_table(problems),
                                                           *_missing_notes(samples)]),
    ]
    doc = Document("redline report", intro, sections)

    summary = {
        "format": 1,
        "generated_at": generated,
        "source": str(src),
        "logs": log_files,
        "counts": {"samples": len(samples), "trials": len(trials),
                   "successes": sum(1 for s in trials if s.success), "errors": len(errors)},
        "success_table": [r.as_dict() for r in rows],
        "milestones": funnel,
        "steps_to_success": dict(steps_groups),
        "commands": commands,
        "tools": tools,
        "obstacles": {"rows": obstacle_rows, "instances": obstacle_list},
        "behaviours": {"counts": behaviour_counts, "instances": behaviour_list},
        "papers": papers_data,
        "errors": [{"model": s.model, "scenario": s.scenario, "sample": s.id, "epoch": s.epoch,
                    "log": s.log, "message": s.error} for s in errors],
        "problems": [p.as_dict() for p in problems],
        "missing_fields": _missing_notes(samples),
        "figures": sorted(images),
    }

    written: list[Path] = []
    for name, img in images.items():
        written.append(_write(out_dir / name, img.png))
    # Figures from an earlier run with more data would mislead next to this report.
    for stale in set(pngs) - set(images):
        (out_dir / stale).unlink(missing_ok=True)
    written.append(_write(out_dir / "summary.json", json.dumps(summary, indent=1, default=str).encode()))
    if "md" in formats:
        written.append(_write(out_dir / "report.md", markdown(doc).encode()))
    if "html" in formats:
        written.append(_write(out_dir / "report.html", page_html(doc).encode()))
    return ReportResult(out_dir=out_dir, files=written, samples=samples, problems=problems, summary=summary,
                        success_table_md=table_markdown(succ))


def _write(path: Path, data: bytes) -> Path:
    # Write-then-rename: a report being viewed is never seen half-written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _img(images: dict[str, Image], name: str) -> list[Image]:
    return [images[name]] if name in images else []


def _funnel_table(funnel: Sequence[dict[str, Any]]) -> Table:
    body = []
    for f in funnel:
        n = f["trials"]
        stages = ", ".join(f"{m} {c}/{n}" for m, c in f["milestones"].items())
        body.append([f["model"], f["scenario"], str(n), stages])
    return Table(["Model", "Scenario", "Trials", "Reached (in milestone order)"], body, numeric={2},
                 table_id="funnel-table")


def _steps_table(samples: Sequence[SampleRecord]) -> Table:
    groups: dict[tuple[str, str], list[SampleRecord]] = {}
    for s in samples:
        if s.outcome != "error":
            groups.setdefault((s.model, s.scenario), []).append(s)
    body = []
    for (model, scenario), group in sorted(groups.items()):
        wins = [s for s in group if s.success]
        steps = sorted(s.steps for s in wins if s.steps is not None)
        all_steps = [s.steps for s in group if s.steps is not None]
        walls = [s.wall_seconds for s in group if s.wall_seconds is not None]
        body.append([model, scenario, str(len(wins)),
                     _num(min(steps)) if steps else DASH, _num(median(steps), 1),
                     _num(max(steps)) if steps else DASH, _num(median(all_steps), 1),
                     _num(median(walls), 1)])
    return Table(["Model", "Scenario", "Successes", "Min steps (success)", "Median steps (success)",
                  "Max steps (success)", "Median steps (all trials)", "Median wall s (all trials)"],
                 body, numeric=set(range(2, 8)), table_id="steps-table")


def _commands_table(counts: dict[str, dict[str, int]]) -> Table:
    body = []
    for model, c in counts.items():
        total = sum(c.values())
        cells = [f"{c[k]} ({_pct(c[k] / total) if total else DASH})" for k in CATEGORIES]
        body.append([model, *cells, str(total)])
    return Table(["Model", *CATEGORIES, "Total"], body, numeric=set(range(1, len(CATEGORIES) + 2)),
                 table_id="commands-table")


def _tools_table(counts: dict[str, dict[str, int]]) -> Table:
    body = [[m, *[str(c[k]) for k in tables.TOOL_COLUMNS]] for m, c in counts.items()]
    return Table(["Model", *tables.TOOL_COLUMNS], body, caption="Steps by tool",
                 numeric=set(range(1, len(tables.TOOL_COLUMNS) + 1)), table_id="tools-table")


def _obstacle_table(rows: Sequence[dict[str, Any]]) -> Table:
    body = [[r["model"], r["category"], r["subtype"], str(r["count"]), str(r["resolved"]), _pct(r["ratio"]),
             _num(r["median_resolution_steps"], 1), ", ".join(f"{k} ×{n}" for k, n in r["kinds"].items())]
            for r in rows]
    return Table(["Model", "Category", "Subtype", "Met", "Resolved", "Resolution ratio",
                  "Median steps to resolve", "Detected as"], body, numeric={3, 4, 5, 6},
                 table_id="obstacles-table")


def _behaviour_counts_table(counts: dict[str, dict[str, int]]) -> Table:
    body = [[m, *[str(c[k]) for k in BEHAVIOUR_KINDS]] for m, c in counts.items()]
    return Table(["Model", *BEHAVIOUR_KINDS], body, caption="Samples showing each behaviour",
                 numeric=set(range(1, len(BEHAVIOUR_KINDS) + 1)), table_id="behaviour-counts-table")


def _behaviour_table(items: Sequence[dict[str, Any]]) -> Table:
    shown = list(items)[:MAX_LISTED]
    body = [[b["model"], b["scenario"], str(b["sample"]), str(b["epoch"]), str(b["step"]), b["kind"],
             b["detail"], _trunc(b["command"], 120)] for b in shown]
    caption = f"All {len(items)} instance(s)" if len(items) <= MAX_LISTED else \
        f"First {MAX_LISTED} of {len(items)} instances (all are in summary.json)"
    return Table(["Model", "Scenario", "Sample", "Epoch", "Step", "Behaviour", "Detail", "Command"], body,
                 caption=caption, numeric={3, 4}, table_id="behaviours-table")


def _errors_table(errors: Sequence[SampleRecord]) -> Table:
    shown = list(errors)[:MAX_LISTED]
    body = [[s.model, s.scenario, s.id, str(s.epoch), s.log, _trunc(s.error, 300)] for s in shown]
    caption = f"{len(errors)} errored sample(s), not counted as trials" + (
        f"; first {MAX_LISTED} shown" if len(errors) > MAX_LISTED else "")
    return Table(["Model", "Scenario", "Sample", "Epoch", "Log", "Error"], body, caption=caption, numeric={3},
                 table_id="errors-table")


def _problems_table(problems: Sequence[Problem]) -> Table:
    body = [[p.path, p.kind, p.message] for p in problems]
    return Table(["Log", "Problem", "Detail"], body, caption=f"{len(problems)} problem(s)",
                 table_id="problems-table")
