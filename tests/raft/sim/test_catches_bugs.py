"""The simulator earns its keep: plant a classic Raft bug in the core and it must be
caught within a bounded number of seeds, by the invariant that bug breaks.

Each bug is planted by monkeypatching one method of ``raft.core.raft.Raft`` (the
patch points are named below; if the core renames them, these tests fail loudly
rather than silently testing nothing). Each bug gets a scenario whose knobs make
its failure reachable — e.g. one-entry appends so a leader's acks land on old-term
entries, or frequent short crashes so a restarted voter meets a second candidate.
Runs are deterministic, so the seed that catches each bug is stable; it is printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from raft.core.raft import Raft
from raft.messages import ReadIndexResp
from raft.sim import Scenario, run_seed
from raft.types import HardState, Index, NodeId, ReadState

MAX_SEEDS = 200
STEPS = 3000


def forget_vote(mp: pytest.MonkeyPatch) -> None:
    """(a) The HardState handed out for persistence never carries the vote, so a
    restarted node can vote twice in one term (§3.8)."""
    mp.setattr(Raft, "_hard_state", lambda self: HardState(self.term, None, self.log.committed))


def count_old_terms(mp: pytest.MonkeyPatch) -> None:
    """(b) A leader commits an entry of an earlier term by counting replicas — the
    Figure 8 bug (§3.6.2 / paper §5.4.2)."""
    mp.setattr(Raft, "_commit_allowed", lambda self, index: True)


def unconfirmed_reads(mp: pytest.MonkeyPatch) -> None:
    """(c) A leader answers ReadIndex at its commit index at once, without a quorum
    round confirming it still leads (§6.4)."""

    def leader_read(self: Raft, ctx: bytes, requester: NodeId) -> None:
        index: Index = self.log.committed
        if requester == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            resp = ReadIndexResp(src=self.id, dst=requester, term=self.term, ctx=ctx, index=index)
            self._send(resp)

    mp.setattr(Raft, "_leader_read", leader_read)


@dataclass(frozen=True)
class Bug:
    plant: Callable[[pytest.MonkeyPatch], None]
    scenario: Scenario
    caught_by: frozenset[str]  # invariants allowed to report it


BUGS = {
    "unpersisted-vote": Bug(
        forget_vote,
        Scenario(
            nemesis_ms=(10, 60),
            weights={"crash": 6, "crash-leader": 2, "isolate-leader": 2, "split": 1, "heal": 1},
            down_ms=(5, 80),
            partition_ms=(50, 400),
            max_down=1,
            membership=False,
        ),
        frozenset(
            {"election-safety", "log-matching", "leader-completeness", "state-machine-safety"}
        ),
    ),
    "commit-previous-term-by-counting": Bug(
        count_old_terms,
        Scenario(
            nemesis_ms=(10, 80),
            weights={"crash": 4, "crash-leader": 4, "isolate-leader": 2},
            down_ms=(5, 300),
            partition_ms=(50, 300),
            max_down=2,
            membership=False,
            max_msg_entries=1,
            max_inflight_msgs=1,
        ),
        frozenset({"leader-completeness", "state-machine-safety", "lost-write"}),
    ),
    "read-without-leadership-check": Bug(
        unconfirmed_reads,
        Scenario(
            nemesis_ms=(20, 150),
            weights={"transfer": 3, "isolate-leader": 3, "crash-leader": 2, "heal": 1},
            down_ms=(20, 300),
            partition_ms=(100, 600),
            membership=False,
        ),
        frozenset({"stale-read"}),
    ),
}


@pytest.mark.parametrize("name", list(BUGS))
def test_planted_bug_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bug = BUGS[name]
    bug.plant(monkeypatch)
    for seed in range(MAX_SEEDS):
        r = run_seed(seed, 3, STEPS, bug.scenario)
        if not r.ok:
            print(f"{name}: caught by seed {seed} as [{r.invariant}] {r.message}")
            assert r.invariant in bug.caught_by, r.report
            return
    pytest.fail(f"{name} went unnoticed for {MAX_SEEDS} seeds")


@pytest.mark.parametrize("name", list(BUGS))
def test_scenario_passes_without_the_bug(name: str) -> None:
    """Control: the aggressive scenarios alone do not make a correct core fail."""
    for seed in range(15):
        r = run_seed(seed, 3, STEPS, BUGS[name].scenario)
        assert r.ok, r.report
