#!/bin/bash
# The VM under systemd (Debian's, from the host's read-only root). As PID 1 (from the initramfs):
# install a unit that runs the scenarios, then hand over to systemd. As that unit (`stage`): run
# them from a plain service, then from a scope that systemd delegates (Delegate=yes).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/home LANG=C.UTF-8
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY="$REPO/.venv/bin/python"
if [ "${1:-}" != stage ]; then
    mkdir -p /run/out /run/home /run/systemd/system
    mount -t 9p -o trans=virtio,version=9p2000.L,cache=none out /run/out
    cat > /run/systemd/system/redline-vm.service <<UNIT
[Unit]
Description=redline cgroup v2 scenarios under systemd
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/bash $REPO/tests/vm/systemd.sh stage
UNIT
    # Started by the default target (multi-user), like any service of the host.
    mkdir -p /run/systemd/system/multi-user.target.wants
    ln -s ../redline-vm.service /run/systemd/system/multi-user.target.wants/redline-vm.service
    exec /lib/systemd/systemd
fi
exec > /run/out/log.txt 2>&1
echo "$(systemctl --version | head -1); this service's cgroup: $(cat /proc/self/cgroup)"
echo "=== systemd-service ($(date +%T))"
timeout 600 "$PY" "$REPO/tests/vm/scenarios.py" systemd-service >> /run/out/results.jsonl
echo "=== systemd-scope ($(date +%T))"
systemd-run --scope -p Delegate=yes --unit=redline-deleg --quiet \
    timeout 600 "$PY" "$REPO/tests/vm/scenarios.py" systemd-scope >> /run/out/results.jsonl
echo "=== leftovers: $(find /sys/fs/cgroup -mindepth 2 -maxdepth 4 -type d -regex '.*/[0-9a-f]\{12\}' | tr '\n' ' ')"
echo 0 > /run/out/rc
sync
echo o > /proc/sysrq-trigger
