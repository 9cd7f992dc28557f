"""Storage bugs planted back, test-side, for the simulator to catch (issue 8).

Every fsync and directory fsync the storage code performs, and each of the four
durability fixes, has an entry here. A plant is a patch applied for one run: most drop
one fsync call *at one call site* (matched by the chain of callers, so the storage code
itself is not copied or edited), the others revert a fix by replacing one small
function. ``SEEDS`` is the table docs/TESTING.md shows: the first seed found to catch
each bug with its scenario. CI replays those seeds (tests/raft/sim/test_storage_bugs.py);
the search for catching seeds is a separate command::

    python -m tests.raft.sim.storage_bugs [--bug NAME] [--seeds 500]

which prints, per bug, the first catching seed and its invariant, and the seeds of the
control run (the same scenario without the bug must pass 15 seeds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest

from raft.sim import Scenario, run_seed
from raft.storage import disk as disk_module
from raft.storage import wal as wal_module
from raft.storage.simfs import SimFileSystem, _SimFile

STEPS = 3000
MAX_SEEDS = 500
CONTROL_SEEDS = 15

Plant = Callable[[pytest.MonkeyPatch], None]


def _chain(depth: int) -> tuple[str, ...]:
    """Qualified names of the callers above the patched fsync, innermost first."""
    names = []
    frame = sys._getframe(2)
    while frame is not None and len(names) < depth:
        names.append(frame.f_code.co_qualname)
        frame = frame.f_back  # type: ignore[assignment]
    return tuple(names)


def _drop(owner: type, method: str, chain: tuple[str, ...]) -> Plant:
    """A plant that makes ``owner.method`` (an fsync) do nothing when called from
    ``chain`` (innermost caller first), as if that line of the storage code were
    deleted."""

    def plant(mp: pytest.MonkeyPatch) -> None:
        real = getattr(owner, method)

        def skipped(self: Any, *args: Any) -> None:
            if _chain(len(chain)) != chain:
                real(self, *args)

        mp.setattr(owner, method, skipped)

    return plant


def drop_fsync(*chain: str) -> Plant:
    """Drop the file fsync called from ``chain``."""
    return _drop(_SimFile, "fsync", chain)


def drop_dir_fsync(*chain: str) -> Plant:
    """Drop the directory fsync called from ``chain``."""
    return _drop(SimFileSystem, "fsync_dir", chain)


def no_sync_past_membership(mp: pytest.MonkeyPatch) -> None:
    """Item 1 reverted: a batch whose commit passes a membership change is not synced."""
    mp.setattr(disk_module.DiskStorage, "_commit_passes_conf_change", lambda self: False)


def commit_only_with_term_vote(mp: pytest.MonkeyPatch) -> None:
    """Item 1 reverted whole (the code before the fix): the hard state is written only
    when term or vote change, so the commit on disk lags, even after kill -9."""
    real = disk_module.DiskStorage.save
    written: dict[int, tuple[Any, Any]] = {}
    no_sync_past_membership(mp)

    def save(self: Any, hard_state: Any, entries: Any, snapshot: Any, sync: bool) -> None:
        if hard_state is not None:
            if written.get(id(self)) == (hard_state.term, hard_state.vote):
                hard_state = None
            else:
                written[id(self)] = (hard_state.term, hard_state.vote)
        real(self, hard_state, entries, snapshot, sync)

    mp.setattr(disk_module.DiskStorage, "save", save)


def hard_state_only_at_sync(mp: pytest.MonkeyPatch) -> None:
    """Item 2 reverted: the hard state reaches the disk only with a sync (fsync =
    "never" then writes it only at close, so kill -9 forgets votes)."""
    real = disk_module.DiskStorage.save
    pending: dict[int, Any] = {}

    def save(self: Any, hard_state: Any, entries: Any, snapshot: Any, sync: bool) -> None:
        if hard_state is not None:
            pending[id(self)] = hard_state
        if sync:
            real(self, pending.pop(id(self), None), entries, snapshot, True)
        else:
            real(self, None, entries, snapshot, False)

    mp.setattr(disk_module.DiskStorage, "save", save)


def tear_ignores_marks(mp: pytest.MonkeyPatch) -> None:
    """Item 3 reverted: recovery ignores the SYNCED marks, so damage to fsynced data
    at the end of the log passes for a torn write and is cut away."""
    mp.setattr(wal_module, "_durable_mark", lambda replayed, data, off: 0)


CRASHY = dict(
    nemesis_ms=(10, 80),
    weights={"crash": 5, "crash-leader": 3, "isolate-leader": 1, "split": 1, "heal": 1},
    down_ms=(5, 200),
    partition_ms=(50, 400),
    lose_unsynced=True,
    fsync_never=False,
    membership=False,
)


# Followers with disagreeing tails install snapshots and die inside storage operations
# (3% crash points) before their next log write; lagging followers get snapshots.
SNAPSHOT_CRASH_POINTS = Scenario(
    nemesis_ms=(20, 150),
    weights={"isolate-leader": 4, "crash": 2, "crash-leader": 2, "split": 2, "heal": 1},
    down_ms=(5, 100),
    partition_ms=(100, 800),
    lose_unsynced=True,
    fsync_never=False,
    membership=False,
    snapshot_every=3,
    max_msg_entries=1,
    crash_points=0.03,
    catchup_entries=0,
)
MEMBERSHIP_CRASHES = Scenario(
    nemesis_ms=(10, 80),
    weights={
        "crash": 4,
        "crash-leader": 2,
        "promote": 4,
        "demote": 3,
        "remove": 2,
        "readd": 3,
        "isolate-leader": 1,
    },
    down_ms=(5, 200),
    lose_unsynced=True,
    fsync_never=False,
)


@dataclass(frozen=True)
class StorageBug:
    what: str
    plant: Plant
    scenario: Scenario
    caught_by: frozenset[str]


SAFETY = frozenset(
    {
        "election-safety",
        "log-matching",
        "leader-completeness",
        "state-machine-safety",
        "lost-write",
        "commit-durable",
        "membership-durable",
        "restored-log",
        "stale-read",
        "storage-recovery",
        "undetected-corruption",
        "exception",
    }
)

BUGS: dict[str, StorageBug] = {
    "wal-batch-fsync": StorageBug(
        "WAL.sync: the fsync of each batch",
        drop_fsync("WAL.sync", "DiskStorage._sync", "DiskStorage.save"),
        Scenario(**CRASHY),  # type: ignore[arg-type]
        SAFETY,
    ),
    "wal-rotate-fsync": StorageBug(
        "WAL._rotate: the fsync of a full segment before the next is created",
        drop_fsync("WAL._rotate"),
        Scenario(**CRASHY | {"segment_bytes": 512}),  # type: ignore[arg-type]
        SAFETY,
    ),
    "wal-rotate-dir-fsync": StorageBug(
        "WAL._rotate: the directory fsync after creating a segment",
        drop_dir_fsync("WAL._rotate"),
        Scenario(**CRASHY | {"segment_bytes": 512}),  # type: ignore[arg-type]
        SAFETY,
    ),
    "wal-open-fsync": StorageBug(
        "WAL.open: the fsync of the recovered (possibly unsynced) tail",
        drop_fsync("WAL.sync", "WAL._sync_recovered"),
        Scenario(**CRASHY),  # type: ignore[arg-type]
        SAFETY,
    ),
    "snapshot-install-sync": StorageBug(
        "DiskStorage._install: the log sync before the snapshot file is written",
        drop_fsync("WAL.sync", "DiskStorage._sync", "DiskStorage._install"),
        # A follower with a disagreeing tail installs a snapshot and dies before its
        # next log write: only crash points inside storage operations reach that.
        SNAPSHOT_CRASH_POINTS,
        SAFETY,
    ),
    "snapshot-file-fsync": StorageBug(
        "atomic_write: the fsync of the temporary before the rename",
        drop_fsync("atomic_write"),
        Scenario(**CRASHY | {"snapshot_every": 5}),  # type: ignore[arg-type]
        SAFETY,
    ),
    "snapshot-dir-fsync": StorageBug(
        "atomic_write: the directory fsync after the rename",
        drop_dir_fsync("atomic_write"),
        Scenario(**CRASHY | {"snapshot_every": 5}),  # type: ignore[arg-type]
        SAFETY,
    ),
    "open-dir-fsync": StorageBug(
        "DiskStorage.__init__: the directory fsyncs at open (what a restart reads, "
        "a snapshot renamed just before the crash, must be durable)",
        drop_dir_fsync("DiskStorage.__init__"),
        SNAPSHOT_CRASH_POINTS,
        SAFETY,
    ),
    "make-dirs-fsync": StorageBug(
        "make_dirs: the parent fsync of each created directory (item 4)",
        drop_dir_fsync("make_dirs"),
        Scenario(**CRASHY),  # type: ignore[arg-type]
        SAFETY,
    ),
    "commit-past-membership-unsynced": StorageBug(
        "DiskStorage: the forced sync when the commit passes a membership change (item 1)",
        no_sync_past_membership,
        MEMBERSHIP_CRASHES,
        SAFETY,
    ),
    "commit-not-in-wal": StorageBug(
        "DiskStorage: the commit index written with every batch (item 1)",
        commit_only_with_term_vote,
        replace(MEMBERSHIP_CRASHES, lose_unsynced=False),  # kill -9 alone shows it
        SAFETY,
    ),
    "hard-state-only-at-sync": StorageBug(
        "DiskStorage: the hard state written at every change, even unsynced "
        '(item 2, fsync = "never")',
        hard_state_only_at_sync,
        Scenario(**CRASHY | {"lose_unsynced": False, "fsync_never": True}),  # type: ignore[arg-type]
        SAFETY,
    ),
    "tear-ignores-marks": StorageBug(
        "WAL recovery: damage below a SYNCED mark is corruption, not a tear (item 3)",
        tear_ignores_marks,
        Scenario(
            nemesis_ms=(10, 80),
            weights={"corrupt": 6, "crash": 1, "heal": 1},
            down_ms=(5, 200),
            lose_unsynced=False,
            fsync_never=False,
            membership=False,
        ),
        SAFETY,
    ),
}

# The first seed (from 0) that catches each bug, found by the search command above.
SEEDS: dict[str, int] = {
    "wal-batch-fsync": 0,
    "wal-rotate-fsync": 0,
    "wal-rotate-dir-fsync": 0,
    "wal-open-fsync": 0,
    "snapshot-install-sync": 18,
    "snapshot-file-fsync": 0,
    "snapshot-dir-fsync": 0,
    "open-dir-fsync": 6,
    "make-dirs-fsync": 0,
    "commit-past-membership-unsynced": 1,
    "commit-not-in-wal": 0,
    "hard-state-only-at-sync": 0,
    "tear-ignores-marks": 0,
}


@contextmanager
def planted(name: str) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    try:
        BUGS[name].plant(mp)
        yield
    finally:
        mp.undo()


def search(name: str, seeds: int) -> tuple[int, str, str] | None:
    """The first seed in ``range(seeds)`` that catches ``name``."""
    bug = BUGS[name]
    with planted(name):
        for seed in range(seeds):
            r = run_seed(seed, 3, STEPS, bug.scenario)
            if not r.ok:
                return seed, r.invariant, r.message.splitlines()[0][:160]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.raft.sim.storage_bugs")
    p.add_argument("--bug", choices=sorted(BUGS), action="append")
    p.add_argument("--seeds", type=int, default=MAX_SEEDS)
    p.add_argument("--control", type=int, default=CONTROL_SEEDS)
    args = p.parse_args(argv)
    missed = 0
    for name in args.bug or list(BUGS):
        found = search(name, args.seeds)
        if found is None:
            missed += 1
            print(f"{name}: NOT caught in {args.seeds} seeds")
            continue
        seed, invariant, message = found
        bad = [s for s in range(args.control) if not run_seed(s, 3, STEPS, BUGS[name].scenario).ok]
        control = "ok" if not bad else f"FAILS without the bug at seeds {bad}"
        print(f"{name}: seed {seed} [{invariant}] {message} | control {args.control}: {control}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
