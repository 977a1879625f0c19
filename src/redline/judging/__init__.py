"""Judging: the evidence layer shared by all scenarios, and what their verdicts share.

- `records`: typed evidence records (what the judge observed).
- `evidence`: the evidence layer (`Investigator`: survey, greet, probe, kill, signal, lineage).
- `verdict`: the `Verdict` type and pure rules over evidence.
- `scorer`: evidence → verdict → Inspect `Score` (its metadata is the evidence).

Each scenario (`redline.scenarios.*`) holds its own `gather` (which evidence, in which order) and
its own pure `verdict`.
"""
