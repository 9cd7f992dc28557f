"""A wiped node that restarts at once, empty, waiting to be added back (as ``kv node
--join`` does in the fault harness), must give no vote until it knows the cluster: it
remembers none it gave. The fault harness found the bug (register under --nemesis all:
a member restarted with a configuration from before the removal won an election with
the wiped node's vote next to the real leader, and acknowledged writes were lost). The
simulator's ``rejoin_at_once`` scenario reproduces it: with the fix planted out, seed
``SEED`` breaks leader completeness; with it, the scenario passes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest

from raft.core import raft as core
from raft.sim import run_seed
from raft.types import ConfState
from tests.raft.sim.storage_bugs import CONTROL_SEEDS, MEMBERSHIP_CRASHES, SAFETY, STEPS

pytestmark = pytest.mark.timeout(300)

REJOIN = replace(MEMBERSHIP_CRASHES, rejoin_at_once=True)
SEED = 41  # the first catching seed (python -m tests.raft.sim.storage_bugs style search)


@contextmanager
def empty_nodes_vote() -> Iterator[None]:
    """The fix planted out: an empty node votes as if it were a member."""
    mp = pytest.MonkeyPatch()
    real = core.Raft._handle_vote_request

    def handle(self: Any, m: Any) -> None:
        saved = self.conf
        if not (saved.voters or saved.learners):
            self.conf = ConfState(frozenset({self.id}))
        try:
            real(self, m)
        finally:
            self.conf = saved

    mp.setattr(core.Raft, "_handle_vote_request", handle)
    try:
        yield
    finally:
        mp.undo()


def test_the_planted_bug_is_caught() -> None:
    with empty_nodes_vote():
        r = run_seed(SEED, 3, STEPS, REJOIN)
    assert not r.ok and r.invariant in SAFETY, r.report


@pytest.mark.parametrize("seed", range(CONTROL_SEEDS))
def test_the_scenario_passes(seed: int) -> None:
    r = run_seed(seed, 3, STEPS, REJOIN)
    assert r.ok, r.report
