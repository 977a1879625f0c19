#!/bin/bash
# Runs as PID 1 of the cgroup v2 test VM (tests/vm/qemu.py). Builds each host setup of the
# README's matrix out of real cgroups, runs tests/vm/scenarios.py in it, and powers off.
# Results: /run/out/results.jsonl (one JSON object per scenario), log.txt, rc.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/home LANG=C.UTF-8
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY="$REPO/.venv/bin/python"
CG=/sys/fs/cgroup
mkdir -p /run/out /run/home
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none out /run/out
mount -t cgroup2 none $CG
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
exec > /run/out/log.txt 2>&1

check() {  # check NAME [ARGS...]: one scenario, run by a fresh interpreter in the current cgroup
    timeout 600 "$PY" "$REPO/tests/vm/scenarios.py" "$@" >> /run/out/results.jsonl
}
into() { mkdir -p "$CG/$1" && echo $BASHPID > "$CG/$1/cgroup.procs"; }  # move this (sub)shell

echo "kernel $(uname -r); root controllers: $(cat $CG/cgroup.controllers)"
echo "user namespaces: $(unshare -U -r true 2>&1 && echo yes); seccomp: $(grep -c '^Seccomp_filters' /proc/self/status)"
args=$(cat /run/out/args)
[ "$args" = all ] && args="plain svc ci-memory-only delegated-mark container rootless sweep"
for s in $args; do
    echo "=== $s ($(date +%T))"
    case $s in
    plain|sweep)  # plain v2 without systemd, the harness in the root cgroup
        check "$s" ;;
    svc)  # an ordinary child of the root, as a systemd service would be (not delegated)
        (into svc && check svc) ;;
    ci-memory-only)  # a delegated cgroup that offers only memory (containers, CI runners)
        echo "+memory +pids +cpu" > $CG/cgroup.subtree_control
        mkdir -p $CG/runner && echo "+memory" > $CG/runner/cgroup.subtree_control
        (into runner/job && check ci-memory-only) ;;
    delegated-mark)  # what systemd's Delegate=yes leaves: the xattr trusted.delegate=1
        mkdir -p $CG/deleg.scope && setfattr -n trusted.delegate -v 1 $CG/deleg.scope 2>/dev/null \
            || "$PY" -c "import os; os.setxattr('$CG/deleg.scope', 'trusted.delegate', b'1')"
        (into deleg.scope && check delegated-mark) ;;
    container)  # a private cgroup namespace whose root is ours, shared with a container "init"
        mkdir -p $CG/ctr && echo "+memory +pids +cpu" > $CG/cgroup.subtree_control
        (into ctr && unshare -C -m --propagation private bash -c "umount $CG && mount -t cgroup2 none $CG &&
            { sleep 600 & echo \$! > /run/ctr-init; timeout 600 '$PY' '$REPO/tests/vm/scenarios.py' container; }" \
            >> /run/out/results.jsonl)
        kill "$(cat /run/ctr-init)" 2>/dev/null ;;
    rootless)  # a subtree delegated to uid 1000 the way systemd delegates to a user
        echo "+memory +pids +cpu" > $CG/cgroup.subtree_control
        mkdir -p $CG/user-1000 && chown 1000:1000 $CG/user-1000 $CG/user-1000/cgroup.procs \
            $CG/user-1000/cgroup.subtree_control $CG/user-1000/cgroup.threads
        # uid 1000 must reach the interpreter: /root (0700) becomes a 0755 tmpfs holding only .pyenv.
        (into user-1000 && exec unshare -m --propagation private bash -c "
            if [ -d /root/.pyenv ]; then mkdir -p /run/pyenv && mount --bind /root/.pyenv /run/pyenv &&
                mount -t tmpfs -o mode=755 tmpfs /root && mkdir /root/.pyenv && mount --bind /run/pyenv /root/.pyenv; fi
            exec setpriv --reuid=1000 --regid=1000 --clear-groups timeout 600 '$PY' '$REPO/tests/vm/scenarios.py' rootless" \
            >> /run/out/results.jsonl) ;;
    missing-pids)  # booted with cgroup_disable=pids
        check missing-pids ;;
    eval|eval-job|eval-svc)  # the whole eval with the reference policy (slow under emulation: many
        # minutes); eval-job: from a memory-only cgroup, as in ci-memory-only; eval-svc: from an
        # ordinary child of the root, as in svc
        if [ $s = eval-job ]; then
            echo "+memory +pids +cpu" > $CG/cgroup.subtree_control
            mkdir -p $CG/runner && echo "+memory" > $CG/runner/cgroup.subtree_control
        fi
        (if [ $s = eval-job ]; then into runner/job; fi
         if [ $s = eval-svc ]; then into svc; fi
         cd /run/home && timeout 2400 "$REPO/.venv/bin/inspect" eval redline/self_replication \
            --model redline/reference --epochs 1 --log-dir "/run/out/logs-$s" --display plain
         echo "inspect rc=$?"
         check "$s" "/run/out/logs-$s") ;;
    *) echo "unknown scenario $s" ;;
    esac
done
echo "=== leftovers: $(find $CG -mindepth 2 -maxdepth 3 -type d -regex '.*/[0-9a-f]\{12\}' | tr '\n' ' ')"
echo 0 > /run/out/rc
sync
echo o > /proc/sysrq-trigger
