"""The four bugs of issue 9, planted back test-side, for the KV simulation to catch.

Each plant reverts one fix for one run (a patch, undone after): the code under test is
not copied or edited, except where a fix is one condition inside a larger function
(``done-future``, below, replaces ``RaftEngine._apply`` with its body minus the fix).
``SEEDS`` is the table docs/TESTING.md shows: the first seed found to catch each bug
with its parameters. CI replays it (tests/kvstore/test_sim_bugs.py); the search is::

    python -m tests.kvstore.sim_bugs [--bug NAME] [--seeds 500] [--control 15]

which prints, per bug, the first catching seed and its violation, and whether the same
parameters pass ``--control`` seeds without the bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest

from kvstore.commands import CLOCKED_FORMATS, ExpireLease, OpenSession, Tick
from kvstore.sim.cluster import KVSim, SimParams, run_seed
from kvstore.sim.node import SimKVNode
from kvstore.state_machine import KVStateMachine
from raft.core import raft as raft_core
from raft.errors import ProposalDropped
from raft.runtime.node import RaftEngine
from raft.types import EntryKind

MAX_SEEDS = 500
CONTROL_SEEDS = 15

Plant = Callable[[pytest.MonkeyPatch], None]


class _AnyContext(dict):  # type: ignore[type-arg]
    """A forwarded-reads table that claims every context as its own."""

    def __contains__(self, ctx: object) -> bool:
        return True

    def __delitem__(self, ctx: object) -> None:
        self.pop(ctx, None)


def reads_of_a_past_life(mp: pytest.MonkeyPatch) -> None:
    """Item 1 reverted: read contexts restart at 1 in every process, and the core
    takes any read answer, even one meant for this node's previous life."""
    raft_init, engine_init = raft_core.Raft.__init__, RaftEngine.__init__

    def raft(self: Any, *args: Any, **kw: Any) -> None:
        raft_init(self, *args, **kw)
        self.forwarded_reads = _AnyContext()

    def engine(self: Any, *args: Any, **kw: Any) -> None:
        engine_init(self, *args, **kw)
        self._read_prefix = bytes(8)

    mp.setattr(raft_core.Raft, "__init__", raft)
    mp.setattr(RaftEngine, "__init__", engine)


def data_commands_open_sessions(mp: pytest.MonkeyPatch) -> None:
    """Item 2 reverted: a data command for an unknown client opens its session (and
    an ended id may come back), so a retry after an eviction applies again."""
    real = KVStateMachine._apply

    def apply(self: Any, header: Any, cmd: Any) -> Any:
        unknown = header.client_id not in self._sessions
        if unknown and not isinstance(cmd, OpenSession | Tick | ExpireLease):
            self._open_session(header.client_id, header.format in CLOCKED_FORMATS)
        return real(self, header, cmd)

    mp.setattr(KVStateMachine, "_apply", apply)


def answer_done_futures(mp: pytest.MonkeyPatch) -> None:
    """Item 3 reverted: a proposal's future is answered even when its caller gave up
    (a cancelled future): InvalidStateError ends the Raft loop."""

    def _apply(self: Any, rd: Any) -> None:  # RaftEngine._apply without the done() checks
        if rd.snapshot is not None:
            self._sm.restore(rd.snapshot.data)
            self._applied = self._snapshot_index = rd.snapshot.meta.index
            for index in [i for i in self._proposals if i <= self._applied]:
                _, fut = self._proposals.pop(index)
                fut.set_exception(TimeoutError("outcome unknown: replaced by a snapshot"))
        for e in rd.committed_entries:
            if e.index <= self._applied:
                continue
            result: object = None
            if e.kind is EntryKind.NORMAL and e.data:
                result = self._sm.apply(e.index, e.data)
            self._applied = e.index
            waiter = self._proposals.pop(e.index, None)
            if waiter is not None:
                term, fut = waiter
                if term == e.term:
                    fut.set_result(result)
                else:
                    fut.set_exception(ProposalDropped(f"entry {e.index} was overwritten"))
        for rs in rd.read_states:
            read = self._read_waiters.get(rs.ctx)
            if read is not None:
                self._reads_ready.append((rs.index, read))
        self._serve_reads()

    mp.setattr(RaftEngine, "_apply", _apply)


def wall_clock_leases(mp: pytest.MonkeyPatch) -> None:
    """Item 4 reverted: leases run out by the leader's wall clock."""

    def clock(self: KVSim, node: SimKVNode) -> Callable[[], float]:
        return node.clock.wall

    mp.setattr(KVSim, "lessor_clock", clock)


@dataclass(frozen=True)
class SimBug:
    what: str
    plant: Plant
    params: SimParams
    caught_by: frozenset[str]


_ONLY = SimParams(load_s=20.0)

BUGS: dict[str, SimBug] = {
    "reads-of-a-past-life": SimBug(
        "item 1: read contexts unique across lives, answers only for this life's reads",
        reads_of_a_past_life,
        # Followers restart often and fast, while clients read from them.
        replace(
            _ONLY,
            faults=("crash",),
            fault_every_s=(0.1, 0.8),
            down_s=(0.05, 0.3),
            redial_s=(0.5, 3.0),
            max_delay_ms=100,
            read_ratio=0.8,
            writers=6,
        ),
        frozenset({"stale-read"}),
    ),
    "data-commands-open-sessions": SimBug(
        "item 2: only OpenSession opens a session, an ended id never comes back",
        data_commands_open_sessions,
        replace(_ONLY, faults=("crash", "partition", "stall")),
        frozenset({"applied-twice"}),
    ),
    "answer-done-futures": SimBug(
        "item 3: a future whose caller gave up is left alone",
        answer_done_futures,
        replace(_ONLY, faults=("stall",)),
        frozenset({"raft-loop-died"}),
    ),
    "wall-clock-leases": SimBug(
        "item 4: leases run out by the leader's monotonic clock, not its wall clock",
        wall_clock_leases,
        replace(_ONLY, faults=("clock",)),
        frozenset({"early-expiry", "late-expiry"}),
    ),
}

# The first seed (from 1) that catches each bug, found by the search command above.
SEEDS: dict[str, int] = {
    "reads-of-a-past-life": 6,
    "data-commands-open-sessions": 2,
    "answer-done-futures": 1,
    "wall-clock-leases": 1,
}


@contextmanager
def planted(name: str) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    try:
        BUGS[name].plant(mp)
        yield
    finally:
        mp.undo()


def search(name: str, seeds: int) -> tuple[int, str] | None:
    """The first seed in ``1..seeds`` that catches ``name``, and its violation."""
    with planted(name):
        for seed in range(1, seeds + 1):
            r = run_seed(seed, BUGS[name].params)
            if r.violation is not None:
                return seed, str(r.violation)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.kvstore.sim_bugs")
    ap.add_argument("--bug", choices=sorted(BUGS), action="append")
    ap.add_argument("--seeds", type=int, default=MAX_SEEDS)
    ap.add_argument("--control", type=int, default=CONTROL_SEEDS)
    args = ap.parse_args(argv)
    missed = 0
    for name in args.bug or list(BUGS):
        found = search(name, args.seeds)
        if found is None:
            missed += 1
            print(f"{name}: NOT caught in {args.seeds} seeds")
            continue
        seed, violation = found
        params = BUGS[name].params
        bad = [s for s in range(1, args.control + 1) if not run_seed(s, params).ok]
        control = "ok" if not bad else f"FAILS without the bug at seeds {bad}"
        print(f"{name}: seed {seed} [{violation[:150]}] | control {args.control}: {control}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
