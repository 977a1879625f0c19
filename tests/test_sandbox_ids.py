"""Host uid/gid range allocation for sandbox user namespaces: collision-free across processes,
released at destroy, reclaimed after a crash only once nothing runs in the range."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from redline.sandbox import RedlineSandboxConfig, Sandbox
from redline.sandbox.idmap import SLOT_SIZE, IdRangeError, allocate, range_in_use, release_stale
from redline.sandbox.sweep import sweep

pytestmark = pytest.mark.timeout(120)

FIRST = 0x50000000  # test ranges, away from the default pool that live sandboxes use

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from redline.sandbox.idmap import allocate
    lock_dir, first, slots, count = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    leases = [allocate(lock_dir, first, slots) for _ in range(count)]
    print(" ".join(str(lease.slot) for lease in leases), flush=True)
    sys.stdin.read()  # hold them until told to go
""")


def hold(lock_dir: Path, slots: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(FIRST), str(slots), str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_concurrent_harnesses_never_share_a_range(tmp_path):
    holders = [hold(tmp_path, 48, 10) for _ in range(4)]
    try:
        taken = []
        for h in holders:
            assert h.stdout is not None
            taken += [int(s) for s in h.stdout.readline().split()]
        assert len(taken) == 40 and len(set(taken)) == 40
        # A pool that overlaps this one by half agrees on the slots: it gets exactly the free ones.
        half = set(range(FIRST // SLOT_SIZE + 24, FIRST // SLOT_SIZE + 48))
        other = [allocate(tmp_path, FIRST + 24 * SLOT_SIZE, 24) for _ in half - set(taken)]
        assert {o.slot for o in other} == half - set(taken)
        with pytest.raises(IdRangeError):
            allocate(tmp_path, FIRST + 24 * SLOT_SIZE, 24)
        for o in other:
            o.release()
        # This process finds the 8 slots that remain, then none.
        mine = [allocate(tmp_path, FIRST, 48) for _ in range(8)]
        assert {m.slot for m in mine}.isdisjoint(taken)
        with pytest.raises(IdRangeError):
            allocate(tmp_path, FIRST, 48)
        for m in mine:
            m.release()
        assert len(list(tmp_path.iterdir())) == 40
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_a_dead_holders_range_is_reused_once_nothing_runs_in_it(tmp_path):
    h = hold(tmp_path, 1, 1)
    slot = FIRST // SLOT_SIZE
    lock = tmp_path / f"{slot:05d}"
    assert h.stdout is not None and h.stdout.readline().split() == [str(slot)]
    with pytest.raises(IdRangeError):  # held by a live process
        allocate(tmp_path, FIRST, 1)
    assert release_stale(lock) is False
    h.kill()
    h.wait()
    # The lock died with its holder, but a process still runs as an id of the range.
    squatter = subprocess.Popen(["setpriv", f"--reuid={FIRST + 1000}", f"--regid={FIRST + 1000}",
                                 "--clear-groups", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while not range_in_use(FIRST) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert range_in_use(FIRST)
        with pytest.raises(IdRangeError):
            allocate(tmp_path, FIRST, 1)
    finally:
        squatter.kill()
        squatter.wait()
    lease = allocate(tmp_path, FIRST, 1)
    assert (lease.slot, lease.base) == (slot, FIRST)
    lease.release()
    assert not lock.exists()


@pytest.mark.usefixtures("no_leftovers")
def test_destroy_releases_and_sweep_reclaims_after_a_crash(tmp_path):
    lock_dir = tmp_path / "ids"
    cfg = RedlineSandboxConfig(id_lock_dir=str(lock_dir))
    sb = Sandbox.create(cfg)
    try:
        assert sb.lease is not None
        assert [p.name for p in lock_dir.iterdir()] == [sb.lease.path.name]
        assert sb.id_base == sb.lease.slot * SLOT_SIZE
        assert cfg.id_range_base <= sb.id_base < cfg.id_range_base + cfg.id_range_slots * SLOT_SIZE
    finally:
        sb.destroy()
    assert list(lock_dir.iterdir()) == []

    script = textwrap.dedent(f"""
        import asyncio
        from redline.sandbox import RedlineSandboxConfig, Sandbox
        sb = Sandbox.create(RedlineSandboxConfig(id_lock_dir={str(lock_dir)!r}))
        asyncio.run(sb.run(["bash", "-c", "sleep 600 >/dev/null 2>&1 &"]))
        print(sb.state, flush=True)
        import time; time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        state = Path(holder.stdout.readline().strip())
        assert len(list(lock_dir.iterdir())) == 1
        holder.kill()
        holder.wait()
        assert state.name in sweep(state.parent.parent, only_id=state.name)
        assert list(lock_dir.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
