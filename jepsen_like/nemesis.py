"""Faults, and a schedule that injects them on a timeline and always heals.

Theory of operation
-------------------
A *fault* has a ``start`` (inject) and a ``stop`` (undo) and records what it did in
the nemesis timeline. The kinds are Jepsen's:

- partitions (through :class:`jepsen_like.proxy.ProxyNet`, as a *grudge*: the set of
  directed links to block): ``partition-halves`` (a random minority cut from the
  majority), ``partition-one`` (one random node isolated), ``partition-leader`` (the
  current leader isolated), ``partition-ring`` (majorities ring: every node still
  hears a majority, no two nodes the same one), ``partition-bridge`` (two halves that
  only a bridge node joins);
- ``latency``: every link delayed by a random ``delay ± jitter``;
- ``drop``: every peer connection reset, repeatedly, while the fault lasts;
- ``kill-one``, ``kill-leader``, ``kill-all``: SIGKILL (all victims at once), and the
  stop restarts them from their data directories;
- ``pause-one``, ``pause-leader``: SIGSTOP, and the stop sends SIGCONT;
- ``transfer``: the leader is asked (the ``transfer_leader`` admin op) to hand
  leadership to a random other node; nothing to undo;
- ``membership``: a random non-leader voter is removed (``member_remove``), killed and
  its Raft state wiped; the stop brings it back as a new machine would come: started
  empty with ``--join``, added as a learner, promoted to voter once it has caught up.
  Only one node is ever out, so a majority of the original voters stays alive.

``--nemesis`` takes a comma list of kinds or groups (``partition``, ``kill``,
``pause`` expand to every kind of the group). The :class:`Schedule` alternates a
healthy interval and a fault interval of ``--nemesis-interval`` seconds, taking the
kinds in a seeded random order (reshuffled every round, so each kind gets its turn),
and only one fault is active at a time, so every window in
the timeline has a single cause. :meth:`Schedule.heal` ends the active fault and then
heals everything regardless (all links open, no latency, every process resumed and
every dead node restarted); the runner calls it in a ``finally``, so a run always ends
healed before its final reads.

Not available: clock faults. They need root (or libfaketime), and the store reads no
wall clock for safety decisions; asking for one is an error that says so.

Partition shapes are pure functions of the node list and an RNG, tested apart.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from jepsen_like.proxy import Grudge, Link
from kvstore.client import ClientError, Conflict, Unavailable

__all__ = [
    "FAULTS",
    "GROUPS",
    "UNAVAILABLE",
    "Fault",
    "NemesisError",
    "Schedule",
    "TimelineEvent",
    "bridge",
    "complete_grudge",
    "halves",
    "isolate",
    "majorities_ring",
    "parse_nemesis",
    "reachable_from",
]


class NemesisError(ValueError):
    """An unknown or unavailable nemesis was asked for."""


# ---- partition shapes (pure) -------------------------------------------------------


def complete_grudge(components: Iterable[Iterable[str]]) -> Grudge:
    """Block every link between nodes of different components (both directions)."""
    comps = [frozenset(c) for c in components]
    return frozenset(
        (a, b)
        for i, ca in enumerate(comps)
        for j, cb in enumerate(comps)
        if i != j
        for a in ca
        for b in cb
    )


def halves(nodes: Sequence[str], rng: random.Random) -> tuple[frozenset[str], frozenset[str]]:
    """A random minority (``n // 2`` nodes) and the majority."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    k = len(shuffled) // 2
    return frozenset(shuffled[:k]), frozenset(shuffled[k:])


def isolate(nodes: Sequence[str], node: str) -> tuple[frozenset[str], frozenset[str]]:
    return frozenset({node}), frozenset(n for n in nodes if n != node)


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Jepsen's majorities ring: on a random ring, each node hears only the window of a
    majority ``m`` of nodes around itself (itself included); every other link *into* it
    is blocked. Each node thus hears a majority, and no two hear the same one. With 5
    nodes the windows are centred (hear both neighbours: symmetric); with 3 they cannot
    be (each hears itself and its successor), so the grudge is asymmetric."""
    ring = list(nodes)
    rng.shuffle(ring)
    n = len(ring)
    m = n // 2 + 1
    back = (m - 1) // 2
    grudge: set[Link] = set()
    for i, dst in enumerate(ring):
        hears = {ring[(i - back + k) % n] for k in range(m)}
        grudge |= {(src, dst) for src in ring if src not in hears}
    return frozenset(grudge)


def bridge(nodes: Sequence[str], rng: random.Random) -> tuple[Grudge, str]:
    """Two halves joined only through one bridge node, which hears and is heard by
    everyone (Jepsen's ``bridge``). Returns (grudge, the bridge node)."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    k = len(shuffled) // 2
    left, node, right = shuffled[:k], shuffled[k], shuffled[k + 1 :]
    return complete_grudge([left, right]), node


def reachable_from(nodes: Sequence[str], grudge: Grudge, dst: str) -> set[str]:
    """The nodes whose messages reach ``dst`` under ``grudge`` (``dst`` included)."""
    return {src for src in nodes if src == dst or (src, dst) not in grudge}


# ---- what faults act on ------------------------------------------------------------


class Net(Protocol):
    def partition(self, grudge: Iterable[Link]) -> None: ...
    def set_latency(self, delay_s: float, jitter_s: float) -> None: ...
    def drop_connections(self) -> int: ...
    def heal(self) -> None: ...


class DB(Protocol):
    nodes: list[str]
    paused: set[str]

    def kill(self, nodes: list[str]) -> list[str]: ...
    def restart(self, node: str) -> int | None: ...
    def pause(self, node: str) -> bool: ...
    def resume(self, node: str) -> bool: ...
    def dead(self) -> list[str]: ...
    async def leader(self) -> str | None: ...
    async def transfer_leader(self, to: str) -> str: ...
    def running(self, node: str) -> bool: ...
    def wipe(self, node: str) -> None: ...
    async def member_list(self, node: str | None = None) -> Any: ...
    async def member_add(self, node: str, learner: bool) -> Any: ...
    async def member_remove(self, node: str) -> Any: ...
    async def wait_caught_up(self, node: str, timeout: float) -> int: ...


@dataclass
class Env:
    """What a fault needs: the network, the processes and the schedule's RNG."""

    net: Net
    db: DB
    rng: random.Random


# ---- faults --------------------------------------------------------------------------


class Fault(abc.ABC):
    """One kind of fault. ``start`` returns details for the timeline; ``stop`` undoes."""

    kind: str = ""
    group: str = ""

    @abc.abstractmethod
    async def start(self, env: Env) -> dict[str, Any]:
        """Inject the fault; the details go on the nemesis timeline."""

    @abc.abstractmethod
    async def stop(self, env: Env) -> dict[str, Any]:
        """Undo the fault completely (the schedule always ends healed)."""


async def _leader_or_random(env: Env) -> tuple[str, bool]:
    leader = await env.db.leader()
    if leader is not None:
        return leader, True
    return env.rng.choice(env.db.nodes), False


def _show_grudge(grudge: Grudge) -> list[str]:
    return sorted(f"{s}->{d}" for s, d in grudge)


class Partition(Fault):
    group = "partition"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def start(self, env: Env) -> dict[str, Any]:
        nodes, rng = env.db.nodes, env.rng
        details: dict[str, Any] = {}
        if self.kind == "partition-halves":
            minority, majority = halves(nodes, rng)
            grudge = complete_grudge([minority, majority])
            details["components"] = [sorted(minority), sorted(majority)]
        elif self.kind in ("partition-one", "partition-leader"):
            if self.kind == "partition-leader":
                victim, was_leader = await _leader_or_random(env)
                details["leader"] = victim if was_leader else None
            else:
                victim = rng.choice(nodes)
            grudge = complete_grudge(isolate(nodes, victim))
            details["isolated"] = victim
        elif self.kind == "partition-ring":
            grudge = majorities_ring(nodes, rng)
            details["hears"] = {
                n: sorted(reachable_from(nodes, grudge, n) - {n}) for n in sorted(nodes)
            }
        elif self.kind == "partition-bridge":
            grudge, node = bridge(nodes, rng)
            details["bridge"] = node
        else:
            raise NemesisError(f"unknown partition kind {self.kind}")
        env.net.partition(grudge)
        details["blocked"] = _show_grudge(grudge)
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        env.net.partition(())
        return {}


class Latency(Fault):
    kind = group = "latency"

    def __init__(self, max_delay_s: float = 0.2) -> None:
        self.max_delay_s = max_delay_s

    async def start(self, env: Env) -> dict[str, Any]:
        delay = round(env.rng.uniform(self.max_delay_s / 10, self.max_delay_s), 4)
        jitter = round(delay / 2, 4)
        env.net.set_latency(delay, jitter)
        return {"delay_ms": delay * 1000, "jitter_ms": jitter * 1000}

    async def stop(self, env: Env) -> dict[str, Any]:
        env.net.set_latency(0.0, 0.0)
        return {}


class DropConnections(Fault):
    """Reset every peer connection now and then again every ``every_s`` (flapping)."""

    kind = group = "drop"

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    async def start(self, env: Env) -> dict[str, Any]:
        self.dropped = env.net.drop_connections()
        self._task = asyncio.get_running_loop().create_task(self._flap(env))
        return {"every_s": self.every_s}

    async def _flap(self, env: Env) -> None:
        while True:
            await asyncio.sleep(self.every_s * env.rng.uniform(0.5, 1.5))
            self.dropped += env.net.drop_connections()

    async def stop(self, env: Env) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        return {"connections_dropped": self.dropped}


class Kill(Fault):
    group = "kill"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._victims: list[str] = []

    async def start(self, env: Env) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.kind == "kill-all":
            targets = list(env.db.nodes)
        elif self.kind == "kill-leader":
            victim, was_leader = await _leader_or_random(env)
            details["leader"] = victim if was_leader else None
            targets = [victim]
        else:
            targets = [env.rng.choice(env.db.nodes)]
        self._victims = env.db.kill(targets)
        details["killed"] = self._victims
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        restarted = {n: env.db.restart(n) for n in self._victims}
        self._victims = []
        return {"restarted": {n: p for n, p in restarted.items() if p is not None}}


class Pause(Fault):
    group = "pause"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._victim: str | None = None

    async def start(self, env: Env) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.kind == "pause-leader":
            victim, was_leader = await _leader_or_random(env)
            details["leader"] = victim if was_leader else None
        else:
            victim = env.rng.choice(env.db.nodes)
        self._victim = victim if env.db.pause(victim) else None
        details["paused"] = self._victim
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        resumed = self._victim is not None and env.db.resume(self._victim)
        victim, self._victim = self._victim, None
        return {"resumed": victim if resumed else None}


class Transfer(Fault):
    """Move leadership to a random other node. A transfer is an ordinary event in a
    cluster's life, not a failure, but it is exactly when a store that caches
    leadership, or answers reads from a deposed leader, goes wrong. A refused or
    unfinished transfer is recorded, not raised: the run goes on."""

    kind = group = "transfer"

    async def start(self, env: Env) -> dict[str, Any]:
        leader = await env.db.leader()
        if leader is None:
            return {"leader": None, "outcome": "no leader to transfer from"}
        to = env.rng.choice([n for n in env.db.nodes if n != leader])
        details: dict[str, Any] = {"leader": leader, "to": to}
        try:
            details["new_leader"] = await env.db.transfer_leader(to)
            details["outcome"] = "moved"
        except Exception as exc:  # the client's definite or indefinite errors
            details["outcome"] = f"{type(exc).__name__}: {exc}"
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        return {}


class Membership(Fault):
    """Remove a random non-leader voter, kill it and wipe its Raft state; the stop
    brings it back the way an operator adds a new machine (start empty with --join,
    add as learner, wait until it has caught up, promote). Learner first, so that a
    voter that still has the whole log to fetch never counts towards a quorum.

    The stop restores whatever state it finds (each step is a no-op when already
    done), so an interrupted change is completed by the final heal. Every step is
    timestamped in the window's details."""

    kind = group = "membership"

    def __init__(self, catch_up_timeout: float = 20.0, conflict_retry_s: float = 10.0) -> None:
        self.catch_up_timeout = catch_up_timeout
        self.conflict_retry_s = conflict_retry_s
        self._victim: str | None = None

    async def start(self, env: Env) -> dict[str, Any]:
        leader = await env.db.leader()
        if leader is None:
            return {"leader": None, "outcome": "no leader to change membership through"}
        victim = env.rng.choice([n for n in env.db.nodes if n != leader])
        steps = _Steps()
        self._victim = victim  # before the remove: its outcome may be unknown
        try:
            members = await self._retry(lambda: env.db.member_remove(victim))
        except ClientError as exc:  # refused or unknown: the stop restores either way
            steps.add("remove failed", error=f"{type(exc).__name__}: {exc}")
            return {"leader": leader, "victim": victim, "steps": steps.done}
        steps.add("removed", voters=list(members.voters))
        env.db.kill([victim])
        steps.add("killed")
        env.db.wipe(victim)
        steps.add("wiped")
        return {"leader": leader, "victim": victim, "steps": steps.done}

    async def stop(self, env: Env) -> dict[str, Any]:
        victim = self._victim
        if victim is None:
            return {}
        steps = _Steps()
        if not env.db.running(victim):
            steps.add("restarted", pid=env.db.restart(victim), join=True)
        members = await self._retry(env.db.member_list)
        if victim not in members.voters:
            if victim not in members.learners:
                await self._retry(lambda: env.db.member_add(victim, learner=True))
                steps.add("learner added")
            index = await env.db.wait_caught_up(victim, self.catch_up_timeout)
            steps.add("caught up", index=index)
            members = await self._retry(lambda: env.db.member_add(victim, learner=False))
            steps.add("promoted", voters=list(members.voters))
        self._victim = None
        return {"victim": victim, "steps": steps.done}

    async def _retry(self, call: Callable[[], Any]) -> Any:
        """Retry a refused change (another change or a transfer still pending, or a new
        leader that has not committed in its term yet: all definite refusals)."""
        deadline = time.monotonic() + self.conflict_retry_s
        while True:
            try:
                return await call()
            except (Conflict, Unavailable):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


class _Steps:
    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.done: list[dict[str, Any]] = []

    def add(self, step: str, **details: Any) -> None:
        ms = round((time.monotonic() - self._t0) * 1000, 1)
        self.done.append({"step": step, "ms": ms, **details})


FAULTS: Final[dict[str, Callable[[], Fault]]] = {
    "partition-halves": lambda: Partition("partition-halves"),
    "partition-one": lambda: Partition("partition-one"),
    "partition-leader": lambda: Partition("partition-leader"),
    "partition-ring": lambda: Partition("partition-ring"),
    "partition-bridge": lambda: Partition("partition-bridge"),
    "latency": Latency,
    "drop": DropConnections,
    "kill-one": lambda: Kill("kill-one"),
    "kill-leader": lambda: Kill("kill-leader"),
    "kill-all": lambda: Kill("kill-all"),
    "pause-one": lambda: Pause("pause-one"),
    "pause-leader": lambda: Pause("pause-leader"),
    "transfer": Transfer,
    "membership": Membership,
}
GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "partition": tuple(k for k in FAULTS if k.startswith("partition-")),
    "kill": ("kill-one", "kill-leader", "kill-all"),
    "pause": ("pause-one", "pause-leader"),
    "member": ("membership",),
}
UNAVAILABLE: Final[dict[str, str]] = {
    "clock": "clock faults need root or libfaketime; the store does not use wall clocks "
    "for safety decisions",
}


def parse_nemesis(spec: str) -> list[str]:
    """``"partition,kill-all"`` → fault kinds, groups expanded; ``"none"`` → []."""
    kinds: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        if name in UNAVAILABLE:
            raise NemesisError(f"nemesis {name!r} is not available: {UNAVAILABLE[name]}")
        if name in GROUPS:
            kinds += [k for k in GROUPS[name] if k not in kinds]
        elif name in FAULTS:
            if name not in kinds:
                kinds.append(name)
        else:
            known = ", ".join([*GROUPS, *FAULTS, "none"])
            raise NemesisError(f"unknown nemesis {name!r}; choose from {known}")
    return kinds


# ---- the schedule -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One line of nemesis.jsonl. ``time`` is ns on the history's clock."""

    time: int
    event: str  # "start", "stop", "heal", "error" (a fault failed) or "crash" (a node died)
    fault: int | None  # id pairing a start with its stop
    kind: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "event": self.event,
            "fault": self.fault,
            "kind": self.kind,
            "details": self.details,
        }


class Schedule:
    """Healthy for ``interval`` s, a fault for ``interval`` s, repeat, until stopped."""

    def __init__(
        self,
        kinds: Sequence[str],
        env: Env,
        *,
        interval: float,
        clock_ns: Callable[[], int],
        faults: dict[str, Fault] | None = None,
    ) -> None:
        self.kinds = list(kinds)
        self.env = env
        self.interval = interval
        self.clock_ns = clock_ns
        self.timeline: list[TimelineEvent] = []
        self._faults = faults or {k: FAULTS[k]() for k in self.kinds}
        self._active: tuple[int, Fault] | None = None
        self._next_id = 0
        self._bag: list[str] = []

    def _next_kind(self) -> str:
        """Kinds in a freshly shuffled order each round: random, yet a run with as many
        windows as kinds sees every kind (independent draws would often repeat one)."""
        if not self._bag:
            self._bag = list(self.kinds)
            self.env.rng.shuffle(self._bag)
        return self._bag.pop()

    @property
    def active(self) -> str | None:
        return None if self._active is None else self._active[1].kind

    def _record(self, event: str, fault: int | None, kind: str, details: dict[str, Any]) -> None:
        self.timeline.append(TimelineEvent(self.clock_ns(), event, fault, kind, details))

    def note(self, event: str, kind: str, details: dict[str, Any]) -> None:
        """Put something seen outside the schedule on the timeline (a node crash)."""
        self._record(event, None, kind, details)

    async def run(self, stop: asyncio.Event) -> None:
        """Inject faults until ``stop`` is set; leaves the last fault active (call heal)."""
        if not self.kinds:
            return
        while not await _wait(stop, self.interval):
            await self.start(self._next_kind())
            if await _wait(stop, self.interval):
                return
            await self.stop_active()

    async def start(self, kind: str) -> None:
        fault = self._faults[kind]
        fid = self._next_id
        self._next_id += 1
        self._active = (fid, fault)
        started = time.monotonic()
        try:
            details = await fault.start(self.env)
        except Exception as exc:
            self._record("error", fid, kind, {"phase": "start", "error": repr(exc)})
            raise
        details["took_ms"] = round((time.monotonic() - started) * 1000, 1)
        self._record("start", fid, kind, details)

    async def stop_active(self) -> None:
        if self._active is None:
            return
        fid, fault = self._active
        self._active = None
        try:
            details = await fault.stop(self.env)
        except Exception as exc:
            self._record("error", fid, fault.kind, {"phase": "stop", "error": repr(exc)})
            raise
        self._record("stop", fid, fault.kind, details)

    async def heal(self) -> dict[str, Any]:
        """End the active fault, then heal everything whatever state it is in."""
        errors = []
        try:
            await self.stop_active()
        except Exception as exc:
            errors.append(repr(exc))
        self.env.net.heal()
        resumed = [n for n in list(self.env.db.paused) if self.env.db.resume(n)]
        restarted = []
        for node in self.env.db.dead():
            try:
                if self.env.db.restart(node) is not None:
                    restarted.append(node)
            except Exception as exc:
                errors.append(f"restart {node}: {exc!r}")
        details: dict[str, Any] = {"resumed": resumed, "restarted": restarted}
        if errors:
            details["errors"] = errors
        self._record("heal", None, "all", details)
        return details


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``event`` is set first; returns whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
