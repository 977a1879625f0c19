"""redline's analysis library: turn Inspect logs of redline tasks into plain records and facts.

- `load_samples(path) -> (samples, problems)`: read logs into `SampleRecord`s (see `logs`).
- `classify_command(cmd) -> list[str]`: categories of a shell command (see `commands`).
- `detect_obstacles(trajectory) -> list[Obstacle]`: failures and their resolution (`obstacles`).
- `detect_behaviours(trajectory, original) -> list[Behaviour]`: unexpected moves (`behaviours`).
- `success_table(samples) -> list[SuccessRow]`: rates, Wilson intervals, pass@k; funnels,
  command and tool counts, obstacle and behaviour instances (`tables`).
- `pass_at_k`, `wilson_interval`, `median` (`stats`); published numbers (`papers`).

Everything returns dataclasses or dicts; nothing here draws or writes files.
"""

from redline.analysis.behaviours import Behaviour, detect_behaviours
from redline.analysis.commands import CATEGORIES, SimpleCommand, classify_command, parse_command
from redline.analysis.logs import MILESTONES, Problem, SampleRecord, load_samples
from redline.analysis.obstacles import TAXONOMY, Obstacle, detect_obstacles
from redline.analysis.papers import PUBLISHED, PublishedResult, match_published, normalize_model_name
from redline.analysis.stats import median, pass_at_k, wilson_interval
from redline.analysis.tables import (
    SuccessRow,
    behaviour_counts,
    behaviour_instances,
    command_counts,
    milestone_funnel,
    obstacle_instances,
    obstacle_rows,
    success_table,
    tool_counts,
)

__all__ = [
    "Behaviour", "CATEGORIES", "MILESTONES", "Obstacle", "PUBLISHED", "Problem", "PublishedResult",
    "SampleRecord", "SimpleCommand", "SuccessRow", "TAXONOMY", "behaviour_counts", "behaviour_instances",
    "classify_command", "command_counts", "detect_behaviours", "detect_obstacles", "load_samples",
    "match_published", "median", "milestone_funnel", "normalize_model_name", "obstacle_instances",
    "obstacle_rows", "parse_command", "pass_at_k", "success_table", "tool_counts", "wilson_interval",
]
