"""`redline grid`: a grid of models × scenarios × trials, on this machine or on a Ray cluster.

`main(argv)` is the command (wired as `redline grid`). The modules, in the order data flows:
`spec` (GRID.yaml, checked) → `plan` (shards) → `local` (one eval set) or `cluster` (Ray tasks
running `shard`) → `resume` (what is finished; what a dead run left) and `manifest` (grid.json),
with `progress` for the Ray display and `loopback` for a test cluster on one machine.
"""

from redline.grid.cli import main

__all__ = ["main"]
