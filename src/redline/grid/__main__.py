"""`python -m redline.grid GRID.yaml [--ray ADDRESS]` (the same as `redline grid`)."""

import sys

from redline.grid.cli import main

sys.exit(main())
