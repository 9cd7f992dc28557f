"""Hypothesis drives the simulator with explicit fault schedules, so a failing run
shrinks to the few faults (and the seed) that matter."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.sim import Fault, Scenario, run_seed
from raft.sim.faults import FAULT_KINDS

STEPS = 1500

faults = st.builds(
    Fault,
    kind=st.sampled_from(FAULT_KINDS),
    a=st.integers(0, 31),
    b=st.integers(0, 4),
    duration=st.integers(0, 3000),
)
schedules = st.lists(st.tuples(st.integers(0, 5000), faults), max_size=12).map(tuple)


@settings(
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    nodes=st.sampled_from([3, 5]),
    schedule=schedules,
    lose_unsynced=st.booleans(),
)
def test_generated_fault_schedule(
    seed: int, nodes: int, schedule: tuple[tuple[int, Fault], ...], lose_unsynced: bool
) -> None:
    scenario = Scenario(schedule=schedule, lose_unsynced=lose_unsynced)
    r = run_seed(seed, nodes, STEPS, scenario)
    assert r.ok, (
        f"replay: run_seed({seed}, {nodes}, {STEPS}, "
        f"Scenario(schedule={schedule!r}, lose_unsynced={lose_unsynced}))\n{r.report}"
    )
