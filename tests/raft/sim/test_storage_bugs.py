"""CI replays the table of planted storage bugs (docs/TESTING.md): each bug, planted
back for one run, is caught by the simulator at its tabled seed, by an invariant of
the safety family; and each scenario passes without the bug. The search for catching
seeds is ``python -m tests.raft.sim.storage_bugs``."""

from __future__ import annotations

import pytest

from raft.sim import run_seed
from tests.raft.sim.storage_bugs import BUGS, CONTROL_SEEDS, SEEDS, STEPS, planted


def test_every_bug_has_a_tabled_seed() -> None:
    assert sorted(SEEDS) == sorted(BUGS)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_tabled_seed_catches_the_planted_bug(name: str) -> None:
    bug = BUGS[name]
    with planted(name):
        r = run_seed(SEEDS[name], 3, STEPS, bug.scenario)
    assert not r.ok, f"{name} went unnoticed at seed {SEEDS[name]}"
    print(f"{name}: seed {SEEDS[name]} [{r.invariant}] {r.message.splitlines()[0]}")
    assert r.invariant in bug.caught_by, r.report


@pytest.mark.parametrize("name", sorted(BUGS))
def test_scenario_passes_without_the_bug(name: str) -> None:
    for seed in range(CONTROL_SEEDS):
        r = run_seed(seed, 3, STEPS, BUGS[name].scenario)
        assert r.ok, r.report
