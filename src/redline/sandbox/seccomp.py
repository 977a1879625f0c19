"""The sandbox's seccomp policy, compiled to a BPF program with libseccomp (PyPI `pyseccomp`).

Every process of the sandbox carries it: bwrap installs it on the init (`--seccomp FD`) and the
helper (`redline-sbx exec`) on every command; children inherit it and cannot remove it.
Default: allow; the kernel interfaces below fail as if absent or forbidden. docs/containment.md
compares the policy with Docker's default profile and says why it differs.
"""

from __future__ import annotations

import errno
import hashlib
import tempfile
from functools import cache

# Namespace flags of clone(2)/unshare(2); Docker's mask 0x7E020000 is the same set.
CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# Syscalls that fail with EPERM, grouped by why. Nothing the AI system or a shell needs is here.
DENIED: dict[str, tuple[str, ...]] = {
    # The door to most recent kernel privilege escalations (nf_tables, ...) is a nested user
    # namespace; joining or making namespaces is never needed inside.
    "namespaces": ("unshare", "setns"),
    "mounts": ("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
               "fsconfig", "fsmount", "fspick", "mount_setattr"),
    # Kernel keyrings are per user; a sandbox has no business with them.
    "keyrings": ("keyctl", "add_key", "request_key"),
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "tracing and bpf": ("perf_event_open", "bpf", "userfaultfd", "fanotify_init", "lookup_dcookie",
                        "syslog"),
    "modules and boot": ("init_module", "finit_module", "delete_module", "kexec_load",
                         "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
                         "quotactl_fd"),
    "clock": ("settimeofday", "clock_settime", "clock_adjtime"),
    "hardware and legacy": ("iopl", "ioperm", "vhangup", "open_by_handle_at", "uselib", "ustat",
                            "sysfs", "sethostname", "setdomainname"),
}

class SeccompUnavailable(RuntimeError):
    pass


AF_NETLINK = 16
# Address families a program may open: Unix, IPv4, IPv6, netlink. Others (AF_VSOCK reaches the
# hypervisor host and is not network-namespaced; AF_ALG, AF_PACKET, AF_KEY, ...) fail as if the
# kernel lacked them.
ALLOWED_FAMILIES = (1, 2, 10, AF_NETLINK)
# Netlink protocols allowed: ROUTE (ip, getaddrinfo) and SOCK_DIAG (ss). The rest (uevents
# among them: NETLINK_KOBJECT_UEVENT = 15; nf_tables' NETFILTER = 12) fail with EPERM.
ALLOWED_NETLINK = (0, 4)


def _rules(sc) -> list[tuple[int, str, list]]:
    """(action, syscall, argument comparisons) of the policy, in libseccomp terms."""
    eperm = sc.ERRNO(errno.EPERM)
    rules: list[tuple[int, str, list]] = [(eperm, name, []) for names in DENIED.values() for name in names]
    for bit in CLONE_NS_FLAGS.values():
        rules.append((eperm, "clone", [sc.Arg(0, sc.MASKED_EQ, bit, bit)]))
    # clone3 passes its flags in memory, out of a filter's reach: like Docker, say "no clone3" so
    # that libc falls back to clone, whose flags are checked above.
    rules.append((sc.ERRNO(errno.ENOSYS), "clone3", []))
    # libseccomp takes one comparison per argument and rule: ranges are "above the highest
    # allowed" plus each gap below it.
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    rules.append((no_family, "socket", [sc.Arg(0, sc.GT, max(ALLOWED_FAMILIES))]))
    for family in range(max(ALLOWED_FAMILIES)):
        if family not in ALLOWED_FAMILIES:
            rules.append((no_family, "socket", [sc.Arg(0, sc.EQ, family)]))
    netlink = sc.Arg(0, sc.EQ, AF_NETLINK)
    rules.append((eperm, "socket", [netlink, sc.Arg(2, sc.GT, max(ALLOWED_NETLINK))]))
    for proto in range(max(ALLOWED_NETLINK)):
        if proto not in ALLOWED_NETLINK:
            rules.append((eperm, "socket", [netlink, sc.Arg(2, sc.EQ, proto)]))
    return rules


@cache
def program() -> bytes:
    """The policy as a BPF program for the host's native architecture.

    Syscalls of any other ABI (i386 `int 0x80`, x32) kill the process: a filter written for one
    syscall table says nothing about another.
    """
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as e:  # RuntimeError: "Unable to find libseccomp"
        raise SeccompUnavailable(
            f"cannot compile the sandbox's seccomp filter ({e}): it needs the host's libseccomp "
            "(Debian: apt-get install libseccomp2; scripts/setup.sh does it), or seccomp: false "
            "in the sandbox config (weaker containment)"
        ) from e

    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for action, name, args in _rules(sc):
        # add_rule, not add_rule_exactly: a syscall this architecture lacks is simply absent.
        f.add_rule(action, name, *args)
    with tempfile.TemporaryFile() as t:
        f.export_bpf(t)
        t.seek(0)
        return t.read()


def profile_id() -> str:
    """A short fingerprint of the compiled policy, for logs and self-checks."""
    return hashlib.sha256(program()).hexdigest()[:12]
