"""The `redline-sbx` helper (sbx.c): built once with the host's C compiler, found by content hash.

`scripts/setup.sh` builds it (`python -m redline.sandbox`); a harness that finds no build
of the current source builds it on first use, so an edited sbx.c is never run stale.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("sbx.c")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2"]
_lock = threading.Lock()


class HelperBuildError(RuntimeError):
    pass


def _digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]


def _build_dirs() -> list[Path]:
    """Where builds live: beside the source when writable (editable installs), else a cache."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [SOURCE.parent / "_build", cache_home / "redline"]


def build() -> Path:
    """Compile sbx.c unless a build of this exact source exists; return the binary's path."""
    name = f"redline-sbx-{_digest()}"
    for d in _build_dirs():
        if os.access(d / name, os.X_OK):
            return d / name
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise HelperBuildError(
            "the redline sandbox needs a C compiler to build its helper once "
            "(Debian: apt-get install gcc), or run scripts/setup.sh"
        )
    errors = []
    for d in _build_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=d) as tmp:
                out = Path(tmp) / name
                r = subprocess.run([cc, *CFLAGS, "-o", str(out), str(SOURCE)],
                                   capture_output=True, text=True, timeout=120)
                if r.returncode != 0:
                    raise HelperBuildError(f"cannot build {SOURCE.name}: {r.stderr.strip()}")
                os.chmod(out, 0o755)
                os.replace(out, d / name)  # atomic: concurrent builders never see half a file
            return d / name
        except OSError as e:
            errors.append(f"{d}: {e}")
    raise HelperBuildError(f"cannot write the sandbox helper anywhere: {'; '.join(errors)}")


@cache
def helper_path() -> str:
    with _lock:
        return str(build())
