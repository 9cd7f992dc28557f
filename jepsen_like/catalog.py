"""Every workload ``jepsen-like run --workload`` accepts, by name."""

from __future__ import annotations

from typing import Final

from jepsen_like.workload_append import AppendWorkload
from jepsen_like.workload_lease import LeaseWorkload
from jepsen_like.workload_lock import LockWorkload
from jepsen_like.workload_watch import WatchWorkload
from jepsen_like.workloads import (
    Recorder,
    RegisterWorkload,
    SetWorkload,
    Workload,
    WorkloadOptions,
)

__all__ = ["WORKLOADS", "WorkloadError", "make_workload", "workload_class"]

WORKLOADS: Final[dict[str, type[Workload]]] = {
    "register": RegisterWorkload,
    "set": SetWorkload,
    "append": AppendWorkload,
    "watch": WatchWorkload,
    "lock": LockWorkload,
    "lease": LeaseWorkload,
}


class WorkloadError(ValueError):
    """An unknown workload was asked for."""


def workload_class(name: str) -> type[Workload]:
    """The workload called ``name``; WorkloadError names the choices when there is none."""
    if name not in WORKLOADS:
        known = ", ".join(sorted(WORKLOADS))
        raise WorkloadError(f"unknown workload {name!r}; choose from {known}")
    return WORKLOADS[name]


def make_workload(name: str, opts: WorkloadOptions, recorder: Recorder) -> Workload:
    return workload_class(name)(opts, recorder)
