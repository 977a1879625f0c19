"""Host uid/gid ranges for sandbox user namespaces, allocated collision-free across processes.

Each sandbox gets a slot: the 65536 host ids `slot * 65536 ...`, mapped to ids 0-65535 inside
(root inside = the slot's first id, the agent's uid 1000 = first + 1000). Slots are numbered
host-wide (not per pool), so harnesses configured with different pools still agree on which
file guards which ids. A slot is held by a lock file `<lock_dir>/<slot>` on which the owning
harness holds an flock for the sandbox's life; the kernel drops the lock when the harness
dies, however it dies.
Every harness on the host (any state root) shares one lock dir, so concurrent runs never
share a range. A slot whose file exists but whose lock is free was left by a dead harness: it
is reused only once no process on the host still runs with an id of its range.
"""

from __future__ import annotations

import fcntl
import os
import random
from dataclasses import dataclass
from pathlib import Path

SLOT_SIZE = 65536


class IdRangeError(RuntimeError):
    pass


@dataclass
class IdLease:
    """One held slot; `release()` once nothing runs in its range any more."""

    slot: int
    base: int
    path: Path
    fd: int

    @property
    def size(self) -> int:
        return SLOT_SIZE

    def release(self, unlink: bool = True) -> None:
        if self.fd < 0:
            return
        try:
            if unlink and _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # drops the lock, after the unlink: no one can take a file we still own
        self.fd = -1


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def range_in_use(base: int, size: int = SLOT_SIZE) -> bool:
    """Does any process on the host run with a real, effective, saved or fs uid in the range?"""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if any(base <= int(u) < base + size for u in line.split()[1:]):
                            return True
                        break
        except (OSError, ValueError):
            continue
    return False


def _try_slot(lock_dir: Path, slot: int) -> IdLease | None:
    path = lock_dir / f"{slot:05d}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fresh = True
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # released meanwhile; another round may take it
        fresh = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    base = slot * SLOT_SIZE
    # The file may have been unlinked by its releasing owner between our open and our lock.
    if not _same_file(fd, path) or (not fresh and range_in_use(base)):
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return IdLease(slot, base, path, fd)


def allocate(lock_dir: Path, first: int, slots: int) -> IdLease:
    """Take a free slot of the pool `first`, `first + 65536`, ... (`slots` of them; `first` a
    multiple of 65536), starting at a random one so that concurrent harnesses rarely contend."""
    if first % SLOT_SIZE:
        raise IdRangeError(f"the first id of the pool ({first}) must be a multiple of {SLOT_SIZE}")
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = random.randrange(slots)
    for i in range(slots):
        lease = _try_slot(lock_dir, first // SLOT_SIZE + (start + i) % slots)
        if lease is not None:
            return lease
    raise IdRangeError(
        f"all {slots} uid ranges under {lock_dir} are taken; end other redline runs, or raise "
        "id_range_slots in the sandbox config"
    )


def release_stale(path: Path) -> bool:
    """Remove a slot file whose owner is gone (for the sweep); False if a live harness holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    IdLease(-1, 0, path, fd).release()
    return True


def write_maps(pid: int, base: int, size: int = SLOT_SIZE) -> None:
    """Map ids 0..size-1 of `pid`'s new user namespace onto host ids base..base+size-1."""
    line = f"0 {base} {size}\n".encode()
    for name in ("uid_map", "gid_map"):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
