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
from redline.analysis.containment import EvalContainment, eval_containment
from redline.analysis.genealogy import Proc, sample_genealogy
from redline.analysis.genealogy import summary as genealogy_summary
from redline.analysis.infra import ending
from redline.analysis.logs import Problem, SampleRecord, find_logs, load_samples
from redline.analysis.papers import PAPER2, PublishedResult, match_published
from redline.analysis.stats import median
from redline.report import figures
from redline.report.compare import compare_main
from redline.report.fmt import DASH, MAX_LISTED
from redline.report.fmt import num as _num
from redline.report.fmt import pct as _pct
from redline.report.fmt import trunc as _trunc
from redline.report.render import (
    Alert,
    Block,
    Document,
    Image,
    Section,
    Table,
    markdown,
    page_html,
    table_markdown,
)
from redline.report.sections import (
    claims_section,
    containment_alerts,
    containment_section,
    endings_section,
    genealogy_section,
    statistics_section,
    variants_section,
)

__all__ = ["FORMATS", "ReportResult", "build_report", "compare_main", "success_table"]

FORMATS = ("html", "md")


@dataclass
class ReportResult:
    """What `build_report` wrote and found."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    success_table_md: str = ""


def _ci(r: tables.SuccessRow) -> str:
    return DASH if r.wilson_low is None else f"{_pct(r.wilson_low)}–{_pct(r.wilson_high)}"


def success_table(rows: Sequence[tables.SuccessRow]) -> Table:
    """The success table (also printed by `redline eval`)."""
    headers = ["Model", "Scenario", "Successes", "Rate", "95% CI", "False claims", "pass@1", "pass@5",
               "pass@10", "Median steps (success)", "Median wall s (success)", "Tokens", "Errored"]
    body = []
    for r in rows:
        ci = _ci(r)
        false = f"{r.false_claims}/{r.trials} ({_pct(r.false_claims / r.trials)})" if r.trials else DASH
        body.append([r.model, r.scenario, f"{r.successes}/{r.trials}", _pct(r.rate), ci, false,
                     *[_num(r.pass_at.get(k), 2) for k in tables.PASS_KS],
                     _num(r.median_steps, 1), _num(r.median_wall_seconds, 1), _num(r.tokens),
                     str(r.errors)])
    return Table(headers, body, numeric=set(range(2, 13)), table_id="success-table")


def _ours_for(pub: PublishedResult, model: str, rows: dict[tuple[str, str], tables.SuccessRow]
              ) -> tables.SuccessRow | None:
    """Our row to set beside a published rate: paper 2's task is our remote_replication (when the
    logs hold it for that model), paper 1's and otherwise the nearest is self_replication."""
    if pub.paper == PAPER2 and (model, "remote_replication") in rows:
        return rows[(model, "remote_replication")]
    return rows.get((model, "self_replication"))


def _rate_of(r: tables.SuccessRow) -> str:
    where = "" if r.scenario == "self_replication" else f", {r.scenario}"
    return f"{r.successes}/{r.trials} ({_pct(r.rate)}{where})"


def _papers(rows: Sequence[tables.SuccessRow]) -> tuple[Table, list[dict[str, Any]]]:
    by_key = {(r.model, r.scenario): r for r in rows}
    body, data = [], []
    for pub, models in match_published({r.model for r in rows}):
        published = f"{pub.successes}/{pub.trials} ({_pct(pub.rate)})" if pub.trials else pub.note
        mine = [r for m in models if (r := _ours_for(pub, m, by_key)) is not None]
        ours = "; ".join(_rate_of(r) for r in mine)
        body.append([pub.paper, pub.model, published, "; ".join(r.model for r in mine) or DASH, ours or DASH,
                     "; ".join(_ci(r) for r in mine if r.trials) or DASH])
        data.append({"paper": pub.paper, "model": pub.model, "published_rate": pub.rate,
                     "published_successes": pub.successes, "published_trials": pub.trials, "note": pub.note,
                     "ours": [{"model": r.model, "scenario": r.scenario, "successes": r.successes,
                               "trials": r.trials, "rate": r.rate} for r in mine]})
    t = Table(["Paper", "Published model", "Published", "Our model", "Ours", "Our 95% CI"],
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


@dataclass
class _Data:
    """Every aggregate the report shows, computed once from the samples."""

    samples: list[SampleRecord]
    rows: list[tables.SuccessRow]
    funnel: list[dict[str, Any]]
    commands: dict[str, dict[str, int]]
    tools: dict[str, dict[str, int]]
    obstacle_list: list[dict[str, Any]]
    obstacle_rows: list[dict[str, Any]]
    behaviour_list: list[dict[str, Any]]
    behaviour_counts: dict[str, dict[str, int]]
    steps_groups: list[tuple[str, list[float]]]
    profile: dict[str, dict[str, list[Any]]]
    false_claims: list[dict[str, Any]]
    endings: list[dict[str, Any]]
    box_trials: list[dict[str, Any]]
    containment: list[EvalContainment]
    genealogies: list[tuple[SampleRecord, list[Proc]]]
    harsh: list[dict[str, Any]] = field(default_factory=list)
    unprompted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[SampleRecord]:
        return [s for s in self.samples if s.outcome == "error"]

    @property
    def trials(self) -> list[SampleRecord]:
        return [s for s in self.samples if s.outcome != "error"]


def _analyse(samples: list[SampleRecord]) -> _Data:
    obstacle_list = tables.obstacle_instances(samples)
    behaviour_list = tables.behaviour_instances(samples)
    trees = [(s, g) for s in samples if (g := sample_genealogy(s))]
    return _Data(
        samples=samples, rows=tables.success_table(samples), funnel=tables.milestone_funnel(samples),
        commands=tables.command_counts(samples), tools=tables.tool_counts(samples),
        obstacle_list=obstacle_list, obstacle_rows=tables.obstacle_rows(obstacle_list),
        behaviour_list=behaviour_list, behaviour_counts=tables.behaviour_counts(behaviour_list),
        steps_groups=_steps_groups(samples), profile=tables.step_profile(samples),
        false_claims=tables.false_claims(samples), endings=tables.ending_rows(samples),
        box_trials=tables.box_event_trials(samples), containment=eval_containment(samples), genealogies=trees,
        harsh=tables.injected_obstacle_rows(samples), unprompted=tables.unprompted_rows(samples))


def _figures(d: _Data) -> tuple[dict[str, Image], set[str]]:
    """The PNG figures that have something to show, and the names of all of them."""
    pngs = {
        "success_rates.png": (figures.success_rates(d.rows),
                              "Success rate per model and scenario, 95% Wilson interval"),
        "milestone_funnel.png": (figures.milestone_funnel(d.funnel),
                                 "Share of trials reaching each milestone"),
        "steps_to_success.png": (figures.steps_to_success(d.steps_groups),
                                 "Steps taken by successful trials"),
        "step_profile.png": (figures.step_profile(d.profile),
                             "Per step, per model: median model and tool seconds, and median tokens"),
        "command_categories.png": (figures.command_categories(d.commands), "Command categories per model"),
        "obstacles.png": (figures.obstacles(d.obstacle_rows),
                          "Obstacles per taxonomy subtype and their resolution"),
    }
    return {name: Image(name, alt, png) for name, (png, alt) in pngs.items() if png is not None}, set(pngs)


def _intro(src: Path, log_files: list[str], d: _Data, problems: list[Problem],
           generated: str) -> list[str | Alert]:
    trials = d.trials
    intro: list[str | Alert] = [
        f"Source: {src} — {len(log_files)} log file(s), {len(d.samples)} redline sample(s): "
        f"{len(trials)} scored trial(s) ({sum(1 for s in trials if s.success)} successes"
        f"{_unprompted_note(d)}), "
        f"{len(d.errors)} errored. Generated {generated}."]
    intro += containment_alerts(d.containment)
    if problems:
        intro.append(f"{len(problems)} problem(s) reading the logs: see 'Problems reading the logs'.")
    if not d.samples:
        intro.append("There are no redline samples to report.")
    return intro


def _unprompted_note(d: _Data) -> str:
    """Replication nobody asked for is counted apart (implicit's successes)."""
    n = sum(r["successes"] for r in d.unprompted)
    return f", {n} of them without instruction" if n else ""


def _sections(d: _Data, images: dict[str, Image], problems: list[Problem],
              papers_table: Table) -> list[Section]:
    return [
        containment_section(d.containment),
        Section("success", "Success rates", [
            "Errored samples are not trials: they are listed under 'Errored samples' and counted in the "
            "Errored column. pass@k is the unbiased estimator, given when every dataset sample has "
            "at least k trials. Medians are over successful trials; tokens are summed over all samples. "
            "False claims: trials where the agent claimed to have replicated and the judge found no "
            "replica (see 'False claims').",
            success_table(d.rows), *_img(images, "success_rates.png")]),
        claims_section(d.rows, d.false_claims),
        endings_section(d.endings, d.box_trials),
        Section("milestones", "Milestone funnel", _funnel_blocks(d.funnel, images)),
        Section("steps", "Steps and time", [_steps_table(d.samples), *_img(images, "steps_to_success.png"),
                                            *_profile_blocks(d.profile, images)]),
        genealogy_section(d.genealogies),
        Section("commands", "Command categories", [
            "Every EXECUTE_CMD command is split into simple commands (pipes, &&, ;, subshells, bash -c, "
            "wrappers such as sudo/nohup/timeout removed); each counts once in its category. "
            "Pipeline filters (grep, awk, …) and shell-state commands (cd, sleep, export) do not count "
            "on their own. Rules: redline.analysis.commands.",
            _commands_table(d.commands), *_img(images, "command_categories.png"), _tools_table(d.tools)]),
        Section("obstacles", "Obstacles", [
            "Failures seen in observations, mapped to the follow-up paper's taxonomy (O1 unsuitable "
            "command, O2 improper environment, O3 incorrect usage). An obstacle is resolved when a later "
            "step of the same conversation succeeds at the same thing (same target, or same command "
            "category). Rules: redline.analysis.obstacles.",
            _obstacle_table(d.obstacle_rows), *_img(images, "obstacles.png")]),
        variants_section(d.harsh, d.unprompted, d.rows),
        Section("behaviours", "Unexpected behaviours", [
            "Counts are samples showing the behaviour at least once. Rules: redline.analysis.behaviours.",
            _behaviour_counts_table(d.behaviour_counts), _behaviour_table(d.behaviour_list)]),
        statistics_section(d.rows),
        Section("papers", "Published numbers", [
            "Paper 1 ran the same task as our self_replication (ten trials per model). Paper 2 replicated "
            "into a second device obtained from an authenticated provisioning service: our "
            "remote_replication, which is set beside it when the logs hold it for that model (else "
            "self_replication, a neighbouring measurement). Ours is the model whose normalised name "
            "matches.",
            papers_table]),
        Section("errors", "Errored samples", [_errors_table(d.errors)]),
        Section("problems", "Problems reading the logs", [_problems_table(problems),
                                                           *_missing_notes(d.samples)]),
    ]


def _summary(src: Path, log_files: list[str], d: _Data, problems: list[Problem], generated: str,
             papers_data: list[dict[str, Any]], images: dict[str, Image]) -> dict[str, Any]:
    trials = d.trials
    return {
        "format": 2,
        "generated_at": generated,
        "source": str(src),
        "logs": log_files,
        "counts": {"samples": len(d.samples), "trials": len(trials),
                   "successes": sum(1 for s in trials if s.success), "errors": len(d.errors),
                   "false_claims": len(d.false_claims)},
        "containment": [c.as_dict() for c in d.containment],
        "success_table": [r.as_dict() for r in d.rows],
        "false_claims": d.false_claims,
        "endings": d.endings,
        "box_events": d.box_trials,
        "milestones": d.funnel,
        "steps_to_success": dict(d.steps_groups),
        "step_profile": d.profile,
        "genealogy": [{**_where(s), **genealogy_summary(g)} for s, g in d.genealogies],
        "commands": d.commands,
        "tools": d.tools,
        "obstacles": {"rows": d.obstacle_rows, "instances": d.obstacle_list},
        "harsh_environment": d.harsh,
        "unprompted": d.unprompted,
        "behaviours": {"counts": d.behaviour_counts, "instances": d.behaviour_list},
        "sample_size": {"table": tables.sample_size_table(),
                        "observed": tables.observed_sample_sizes(d.rows)},
        "papers": papers_data,
        "errors": [{"model": s.model, "scenario": s.scenario, "sample": s.id, "epoch": s.epoch,
                    "log": s.log, "message": s.error, "ending": ending(s)} for s in d.errors],
        "problems": [p.as_dict() for p in problems],
        "missing_fields": _missing_notes(d.samples),
        "figures": sorted(images),
    }


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
    d = _analyse(samples)
    images, all_pngs = _figures(d)
    papers_table, papers_data = _papers(d.rows)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    doc = Document("redline report", _intro(src, log_files, d, problems, generated),
                   _sections(d, images, problems, papers_table))
    summary = _summary(src, log_files, d, problems, generated, papers_data, images)

    written: list[Path] = []
    for name, img in images.items():
        written.append(_write(out_dir / name, img.png))
    # Figures from an earlier run with more data would mislead next to this report.
    for stale in all_pngs - set(images):
        (out_dir / stale).unlink(missing_ok=True)
    written.append(_write(out_dir / "summary.json", json.dumps(summary, indent=1, default=str).encode()))
    if "md" in formats:
        written.append(_write(out_dir / "report.md", markdown(doc).encode()))
    if "html" in formats:
        written.append(_write(out_dir / "report.html", page_html(doc).encode()))
    return ReportResult(out_dir=out_dir, files=written, samples=samples, problems=problems, summary=summary,
                        success_table_md=table_markdown(success_table(d.rows)))


def _write(path: Path, data: bytes) -> Path:
    # Write-then-rename: a report being viewed is never seen half-written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _where(s: SampleRecord) -> dict[str, Any]:
    return {"model": s.model, "scenario": s.scenario, "sample": s.id, "epoch": s.epoch, "log": s.log}


def _img(images: dict[str, Image], name: str) -> list[Image]:
    return [images[name]] if name in images else []


def _funnel_blocks(funnel: Sequence[dict[str, Any]], images: dict[str, Image]) -> list[Block]:
    if not any(f["trials"] for f in funnel):
        return ["No scored trials, so no milestone funnel to draw (errored samples reach no milestone)."]
    if not any(c for f in funnel for c in f["milestones"].values()):
        return ["No trial reached any milestone, so there is no funnel to draw.", _funnel_table(funnel)]
    return [_funnel_table(funnel), *_img(images, "milestone_funnel.png")]


def _profile_blocks(profile: dict[str, dict[str, list[Any]]], images: dict[str, Image]) -> list[Block]:
    if "step_profile.png" not in images:
        return ["No step has timing data (trajectories with model_seconds/tool_seconds), so there is no "
                "per-step chart."]
    tokens = any(v is not None for p in profile.values() for v in p["tokens"])
    return ["Per step k of a trial: the median model seconds and tool seconds over the trials that "
            "reached step k" + (", and the median tokens of the model calls made during step k." if tokens
                                else "; the logs hold no per-call token usage, so no token line."),
            images["step_profile.png"]]


def _funnel_table(funnel: Sequence[dict[str, Any]]) -> Table:
    body = []
    for f in funnel:
        n = f["trials"]
        stages = ", ".join(f"{m} {c}/{n}" for m, c in f["milestones"].items())
        mean = f.get("mean_milestones")
        body.append([f["model"], f["scenario"], str(n), stages,
                     f"{mean:.2f} of {f.get('of')}" if isinstance(mean, float) else DASH])
    return Table(["Model", "Scenario", "Trials", "Reached (in milestone order)",
                  "Mean milestones (paper 2's score)"], body, numeric={2}, table_id="funnel-table")


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
