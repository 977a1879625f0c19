"""redline's analysis library: turn Inspect logs of redline tasks into plain records and facts.

- `load_samples(path) -> (samples, problems)`: read logs into `SampleRecord`s (see `logs`).
- `classify_command(cmd) -> list[str]`: categories of a shell command (see `commands`; the
  parser is `shell`, the program tables `command_rules`).
- `detect_obstacles(trajectory) -> list[Obstacle]`: failures and their resolution (`obstacles`).
- `detect_behaviours(trajectory, original) -> list[Behaviour]`: unexpected moves (`behaviours`).
- `success_table(samples) -> list[SuccessRow]`: rates, Wilson intervals, pass@k; funnels,
  command and tool counts, obstacle and behaviour instances; harsh environments per obstacle
  (`injected_obstacle_rows`) and replication without instruction (`unprompted_rows`) (`tables`).
- `claim_of(sample)`: did the agent claim to have replicated, and falsely? (`claims`).
- `ending(sample)`, `box_events(sample)`: harness / model-API / agent / box endings (`infra`).
- `sample_genealogy(sample)`: the trial's process tree with roles, generations, fates (`genealogy`).
- `eval_containment(samples)`: each eval's self-check and containment (`containment`).
- `compare(samples, a, b)`: two models or scenarios, with Newcombe interval and Fisher's test
  (`compare`).
- `pass_at_k`, `wilson_interval`, `median`, `newcombe_interval`, `fisher_exact_p`,
  `trials_needed` (`stats`); published numbers (`papers`).

Everything returns dataclasses or dicts; nothing here draws or writes files.
"""

from redline.analysis.behaviours import Behaviour, detect_behaviours
from redline.analysis.claims import Claim, claim_of, claims_replication
from redline.analysis.commands import CATEGORIES, SimpleCommand, classify_command, parse_command
from redline.analysis.compare import ComparisonRow, SelectorError, compare
from redline.analysis.containment import EvalContainment, eval_containment
from redline.analysis.genealogy import Proc, sample_genealogy
from redline.analysis.infra import ENDINGS, BoxEvents, box_events, ending
from redline.analysis.logs import MILESTONES, Problem, SampleRecord, load_samples
from redline.analysis.obstacles import TAXONOMY, Obstacle, detect_obstacles
from redline.analysis.papers import PUBLISHED, PublishedResult, match_published, normalize_model_name
from redline.analysis.stats import (
    fisher_exact_p,
    median,
    newcombe_interval,
    pass_at_k,
    trials_needed,
    wilson_interval,
)
from redline.analysis.tables import (
    SuccessRow,
    behaviour_counts,
    behaviour_instances,
    command_counts,
    injected_obstacle_rows,
    milestone_funnel,
    obstacle_instances,
    obstacle_rows,
    success_table,
    tool_counts,
    unprompted_rows,
)

__all__ = [
    "Behaviour", "BoxEvents", "CATEGORIES", "Claim", "ComparisonRow", "ENDINGS", "EvalContainment",
    "MILESTONES", "Obstacle", "PUBLISHED", "Problem", "Proc", "PublishedResult", "SampleRecord",
    "SelectorError", "SimpleCommand", "SuccessRow", "TAXONOMY", "behaviour_counts", "behaviour_instances",
    "box_events", "claim_of", "claims_replication", "classify_command", "command_counts", "compare",
    "detect_behaviours", "detect_obstacles", "ending", "eval_containment", "fisher_exact_p", "load_samples",
    "injected_obstacle_rows", "match_published", "median", "milestone_funnel", "newcombe_interval",
    "normalize_model_name",
    "obstacle_instances", "obstacle_rows", "parse_command", "pass_at_k", "sample_genealogy",
    "success_table", "tool_counts", "trials_needed", "unprompted_rows", "wilson_interval",
]
