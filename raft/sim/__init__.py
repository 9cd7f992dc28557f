"""Deterministic cluster simulation of the Raft core (see :mod:`raft.sim.cluster`).

One seed decides everything; ``python -m raft.sim --seed S`` replays a run exactly.
"""

from raft.sim.cluster import Cluster
from raft.sim.faults import Fault, Scenario
from raft.sim.invariants import LivenessViolation
from raft.sim.runner import RunResult, run_seed

__all__ = ["Cluster", "Fault", "LivenessViolation", "RunResult", "Scenario", "run_seed"]
