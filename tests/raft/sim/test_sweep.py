"""The seed sweep: 500 seeds across 3- and 5-node clusters, every fault kind, full
invariant checking after every event and a liveness check at the end of each run.

Seeds are split into chunks so a failure names its chunk early and the rest still
run; the assertion message is the failing seed's full report, replay command
included. The longer sweep is marked slow.
"""

from __future__ import annotations

import pytest

from raft.sim import run_seed

CHUNK = 25
SWEEPS = [(3, 300, 3000), (5, 200, 2500)]  # (nodes, seeds, steps per seed)


def _chunks() -> list[tuple[int, int, int]]:
    return [
        (nodes, start, steps) for nodes, seeds, steps in SWEEPS for start in range(0, seeds, CHUNK)
    ]


def _sweep(nodes: int, seeds: range, steps: int) -> None:
    failures = []
    for seed in seeds:
        r = run_seed(seed, nodes, steps)
        if not r.ok:
            failures.append(r)
    if failures:
        others = ", ".join(f"{r.seed} ({r.invariant})" for r in failures[1:])
        more = f"\n\nalso failing: {others}" if others else ""
        pytest.fail(f"{len(failures)} failing seed(s); first:\n{failures[0].report}{more}")


@pytest.mark.parametrize(("nodes", "start", "steps"), _chunks())
def test_sweep(nodes: int, start: int, steps: int) -> None:
    _sweep(nodes, range(start, start + CHUNK), steps)


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
def test_long_runs(nodes: int) -> None:
    """Fewer, much longer runs: more membership churn, snapshots and re-adds per run
    (``python -m raft.sim --start 10000 --seeds 500 --steps 30000`` goes further)."""
    _sweep(nodes, range(10_000, 10_008), 20_000)
