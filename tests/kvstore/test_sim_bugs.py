"""CI replays the table of issue 9's bugs planted back (docs/TESTING.md): each, planted
for one run, is caught by the KV simulation at its tabled seed, by the violation named
for it; and its parameters pass without the bug. The search for catching seeds is
``python -m tests.kvstore.sim_bugs``."""

from __future__ import annotations

import pytest

from kvstore.sim.cluster import run_seed
from tests.kvstore.sim_bugs import BUGS, CONTROL_SEEDS, SEEDS, planted

pytestmark = pytest.mark.timeout(300)


def test_every_bug_has_a_tabled_seed() -> None:
    assert sorted(SEEDS) == sorted(BUGS)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_tabled_seed_catches_the_planted_bug(name: str) -> None:
    bug = BUGS[name]
    with planted(name):
        r = run_seed(SEEDS[name], bug.params)
    assert r.violation is not None, f"{name} went unnoticed at seed {SEEDS[name]}"
    print(f"{name}: seed {SEEDS[name]}: {r.violation}")
    assert r.violation.kind in bug.caught_by, str(r.violation)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_parameters_pass_without_the_bug(name: str) -> None:
    for seed in range(1, CONTROL_SEEDS + 1):
        r = run_seed(seed, BUGS[name].params)
        assert r.ok, f"{name} parameters, seed {seed}: {r.violation}"
