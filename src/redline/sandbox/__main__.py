"""`python -m redline.sandbox`: build the sandbox's C helper (`redline-sbx`, from sbx.c) unless a
build of this exact source exists, and print its path. `scripts/setup.sh` runs it.

(Not `python -m redline.sandbox.helper`: the package imports that module itself, so running it as
`__main__` would execute it a second time, and Python warns about exactly that.)
"""

import sys

from redline.sandbox.helper import HelperBuildError, build

try:
    print(build())
except HelperBuildError as e:
    sys.exit(f"redline: {e}")
