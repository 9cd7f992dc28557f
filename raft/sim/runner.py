"""Run one seed and judge it: the entry point shared by the CLI and the tests."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

from raft.errors import InvariantViolation
from raft.sim.cluster import Cluster
from raft.sim.faults import Scenario
from raft.sim.trace import Trace, failure_report


@dataclass(slots=True)
class RunResult:
    """Outcome of one seed. ``report`` is the printable failure report (or "")."""

    seed: int
    nodes: int
    steps: int
    ok: bool
    events: int
    invariant: str = ""
    message: str = ""
    report: str = ""
    summary: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)


def run_seed(
    seed: int,
    nodes: int = 3,
    steps: int = 3000,
    scenario: Scenario | None = None,
    keep_trace: bool = False,
    trace_lines: int = 200,
) -> RunResult:
    """Run one seed and judge it. Any exception escaping the core is a failure too."""
    trace = Trace(trace_lines, keep_all=keep_trace)
    cluster: Cluster | None = None
    try:
        cluster = Cluster(seed, nodes, scenario, trace)
        cluster.run(steps)
    except InvariantViolation as exc:
        name = getattr(exc, "invariant", "invariant")
        message = str(exc).removeprefix(f"{name}: ")
        return _failed(seed, nodes, steps, cluster, trace, name, message, keep_trace)
    except Exception as exc:  # a crash of the core (or of the simulator) is a bug too
        detail = "".join(traceback.format_exception(exc)[-6:])
        return _failed(seed, nodes, steps, cluster, trace, "exception", detail, keep_trace)
    return RunResult(
        seed,
        nodes,
        steps,
        True,
        cluster.events,
        summary=cluster.summary(),
        trace=trace.full() if keep_trace else [],
    )


def _failed(
    seed: int,
    nodes: int,
    steps: int,
    cluster: Cluster | None,
    trace: Trace,
    name: str,
    message: str,
    keep_trace: bool,
) -> RunResult:
    lines = trace.lines()
    return RunResult(
        seed,
        nodes,
        steps,
        False,
        cluster.events if cluster is not None else 0,
        invariant=name,
        message=message,
        report=failure_report(seed, nodes, steps, name, message, lines),
        summary=cluster.summary() if cluster is not None else {},
        trace=trace.full() if keep_trace else [],
    )
