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
``pause``, ``clock`` expand to every kind of the group). The :class:`Schedule` alternates a
healthy interval and a fault interval of ``--nemesis-interval`` seconds, taking the
kinds in a seeded random order (reshuffled every round, so each kind gets its turn),
and only one fault is active at a time, so every window in
the timeline has a single cause. :meth:`Schedule.heal` ends the active fault and then
heals everything regardless (all links open, no latency, every process resumed and
every dead node restarted); the runner calls it in a ``finally``, so a run always ends
healed before its final reads.

- clocks (``clock-offset``, ``clock-step-forward``, ``clock-step-backward``,
  ``clock-strobe``, ``clock-drift``): the wall clock of one node (the leader) or of
  every node moved, through libfaketime (:mod:`jepsen_like.clock`); the stop puts it
  back on true time.

Partition shapes are pure functions of the node list and an RNG, tested apart.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from jepsen_like.clock import ClockRead, NodeClocks, Setting, read_clocks
from jepsen_like.db import DBError
from jepsen_like.observe import (
    DEAD_STATES,
    PROC,
    Evidence,
    Startup,
    dir_listing,
    eventually,
    open_paths,
    proc_state,
    startups,
    terms_led,
)
from jepsen_like.proxy import Grudge, Link
from kvstore.client import ClientError, Conflict, Unavailable

T = TypeVar("T")

__all__ = [
    "FAULTS",
    "GROUPS",
    "UNAVAILABLE",
    "Fault",
    "NemesisError",
    "Schedule",
    "TimelineEvent",
    "bridge",
    "combined",
    "complete_grudge",
    "halves",
    "isolate",
    "majorities_ring",
    "needs_clock",
    "parse_nemesis",
    "reachable_from",
    "verification",
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
    # What verifiers read back (jepsen_like.observe):
    def link_blocked(self, link: Link) -> bool: ...
    def link_latency(self, link: Link) -> tuple[float, float]: ...
    def counters(self) -> dict[str, int]: ...
    async def probe(
        self, src: str, dst: str, address: tuple[str, int], timeout: float
    ) -> dict[str, Any]: ...


class DB(Protocol):
    nodes: list[str]
    paused: set[str]
    held: set[str]  # kept down by a fault until its stop: restart() leaves them alone

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
    # What verifiers read back (jepsen_like.observe):
    def pid(self, node: str) -> int | None: ...
    def dial_address(self, src: str, dst: str) -> tuple[str, int]: ...
    def own_data_dir(self, node: str) -> Path: ...
    async def status(self, node: str) -> Any: ...


@dataclass
class Env:
    """What a fault needs: the network, the processes and the schedule's RNG; and
    what its verifier needs: where /proc is, how long a probe waits for an answer,
    and how long an effect may take to show (a signal's delivery, a node's start)."""

    net: Net
    db: DB
    rng: random.Random
    proc: Path = PROC
    probe_timeout: float = 0.75
    settle_s: float = 5.0
    clock: NodeClocks | None = None  # the nodes run under libfaketime (clock faults)
    drift_window_s: float = 2.0  # how long a drift is watched to measure its rate
    clock_recheck_s: float = 0.3  # between the two reads that show a clock back on time
    answer_s: float = 10.0  # how long a verifier waits for a node another fault took down
    traffic_s: float = 15.0  # how long a link fault waits for traffic to act on


# ---- faults --------------------------------------------------------------------------


class Fault(abc.ABC):
    """One kind of fault. ``start`` returns details for the timeline; ``stop`` undoes.

    After each, the schedule asks the fault to prove it: :meth:`verify_start` and
    :meth:`verify_stop` look at the world from another side than the one that made the
    fault (:mod:`jepsen_like.observe`) and return the :class:`Evidence`. A kind without a
    verifier is ``unverified``, so a new kind (a clock fault, say) must bring its own or
    every run using it ends ``unknown``."""

    kind: str = ""
    group: str = ""

    @abc.abstractmethod
    async def start(self, env: Env) -> dict[str, Any]:
        """Inject the fault; the details go on the nemesis timeline."""

    @abc.abstractmethod
    async def stop(self, env: Env) -> dict[str, Any]:
        """Undo the fault completely (the schedule always ends healed)."""

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """Prove the fault took effect (called right after :meth:`start`)."""
        ev = Evidence()
        ev.add(f"no verifier for {self.kind}", False)
        return ev

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        """Prove the fault was undone, where that means something; None: nothing to see."""
        return None


async def _leader_or_random(env: Env) -> tuple[str, bool]:
    leader = await env.db.leader()
    if leader is not None:
        return leader, True
    return env.rng.choice(env.db.nodes), False


def _show_grudge(grudge: Grudge) -> list[str]:
    return sorted(f"{s}->{d}" for s, d in grudge)


PROBE_ATTEMPTS: Final = 3


def _state_word(state: str | None) -> str:
    return "no /proc entry (gone, reaped)" if state is None else f"state {state}"


async def _probe_links(
    env: Env, links: Iterable[Link], ev: Evidence, *, expect_reached: bool
) -> None:
    """Probe each link where its source's config says it dials (in parallel) and add a
    check per link. A SIGSTOPped receiver's kernel still accepts connections and then
    says nothing, which would look like a cut: links into a paused node are not probed
    (the check says so) and the link's drop-mode check stands alone.

    Up to ``PROBE_ATTEMPTS`` tries per link, until one shows what is expected: a
    ``drop`` fault in force at the same time resets every connection through the
    proxies, the probe's too, and that EOF is the drop's doing, not an open link (an
    open link to a live node answers in milliseconds, so one full timeout of silence
    is a cut; a cut link never answers, so one answer is an open link)."""
    links = sorted(links)
    paused = set(env.db.paused)
    probed = [link for link in links if link[1] not in paused]

    async def probe(s: str, d: str) -> tuple[bool, list[str]]:
        seen = []
        for _ in range(PROBE_ATTEMPTS):
            answer = await env.net.probe(s, d, env.db.dial_address(s, d), env.probe_timeout)
            seen.append(str(answer["observed"]))
            if answer["reached"] == expect_reached:
                return True, seen
        return False, seen

    answers = await asyncio.gather(*(probe(s, d) for s, d in probed))
    verb = "reaches" if expect_reached else "fails"
    for (s, d), (ok, seen) in zip(probed, answers, strict=True):
        ev.add(f"probe {s}->{d} {verb}", ok, "; ".join(seen))
    for s, d in links:
        if d in paused:
            ev.add(f"probe {s}->{d} skipped", True, f"{d} is paused: silence would prove nothing")


class Partition(Fault):
    group = "partition"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._grudge: Grudge = frozenset()

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
        self._grudge = grudge
        details["blocked"] = _show_grudge(grudge)
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        env.net.partition(())
        return {"opened": _show_grudge(self._grudge)}

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """Every cut link is in drop mode where the cut is made, and a probe sent the
        way its source node dials gets no answer."""
        ev = Evidence()
        for s, d in sorted(self._grudge):
            ev.add(f"{s}->{d} in drop mode", env.net.link_blocked((s, d)))
        await _probe_links(env, self._grudge, ev, expect_reached=False)
        return ev

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        grudge, self._grudge = self._grudge, frozenset()
        ev = Evidence()
        for s, d in sorted(grudge):
            ev.add(f"{s}->{d} open", not env.net.link_blocked((s, d)))
        await _probe_links(env, grudge, ev, expect_reached=True)
        return ev


class Latency(Fault):
    kind = group = "latency"

    def __init__(self, max_delay_s: float = 0.2) -> None:
        self.max_delay_s = max_delay_s
        self._before: dict[str, int] = {}
        self._set = (0.0, 0.0)

    async def start(self, env: Env) -> dict[str, Any]:
        delay = round(env.rng.uniform(self.max_delay_s / 10, self.max_delay_s), 4)
        jitter = round(delay / 2, 4)
        self._before = env.net.counters()
        env.net.set_latency(delay, jitter)
        self._set = (delay, jitter)
        return {"delay_ms": delay * 1000, "jitter_ms": jitter * 1000}

    async def stop(self, env: Env) -> dict[str, Any]:
        env.net.set_latency(0.0, 0.0)
        return {}

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """Every link is set to the delay drawn, and chunks are really held back: the
        proxies' count of chunks delivered late moves. Another group's fault (a
        partition, nodes down) may leave no traffic to hold back for a while: the
        count is watched for ``env.traffic_s``; if not one byte crossed any link in
        that time, the delay had nothing to act on (not applied, the evidence says so)."""
        ev = Evidence()
        links = _links(env)
        wrong = [f"{s}->{d}" for s, d in links if env.net.link_latency((s, d)) != self._set]
        ev.add("every link delayed", not wrong, {"not set": wrong} if wrong else None)
        base = self._before.get("delayed", 0)
        window = env.traffic_s if "bytes" in self._before else env.settle_s
        held, now = await eventually(env.net.counters, lambda c: c.get("delayed", 0) > base, window)
        n = now.get("delayed", 0) - base
        relayed = now.get("bytes", 0) - self._before.get("bytes", 0)
        if not held and relayed == 0 and "bytes" in now:
            ev.not_applied = f"no traffic crossed any link in {window:g} s"
            return ev
        mean = (now.get("delay_ms", 0) - self._before.get("delay_ms", 0)) / max(1, n)
        ev.add("chunks held back", held, {"delayed_chunks": n, "mean_held_ms": round(mean, 1)})
        return ev

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        ev = Evidence()
        still = [f"{s}->{d}" for s, d in _links(env) if env.net.link_latency((s, d)) != (0, 0)]
        ev.add("no link delayed", not still, {"still delayed": still} if still else None)
        return ev


def _links(env: Env) -> list[Link]:
    return [(s, d) for s in env.db.nodes for d in env.db.nodes if s != d]


class DropConnections(Fault):
    """Reset every peer connection now and then again every ``every_s`` (flapping)."""

    kind = group = "drop"

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._before: dict[str, int] = {}

    async def start(self, env: Env) -> dict[str, Any]:
        self._before = env.net.counters()
        self.dropped = env.net.drop_connections()
        self._task = asyncio.get_running_loop().create_task(self._flap(env))
        return {"every_s": self.every_s, "first_drop": self.dropped}

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

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """Connections were reset (the reset counter moves) and, where the network counts
        accepted connections (the proxies), the nodes noticed and dialled again. The
        fault resets whatever is open every ``every_s``; another group's fault may leave
        no connection open for a while, so the counters are watched for
        ``env.traffic_s``. If no drop found a connection to reset in that time and none
        was accepted either, there was nothing to act on (not applied, saying so)."""
        ev = Evidence()
        base = self._before

        def moved(c: dict[str, int], key: str) -> int:
            return c.get(key, 0) - base.get(key, 0)

        held, now = await eventually(
            env.net.counters, lambda c: moved(c, "dropped") > 0, env.traffic_s
        )
        if not held and "accepted" in now and moved(now, "accepted") == 0:
            ev.not_applied = f"no peer connection open to reset in {env.traffic_s:g} s"
            return ev
        ev.add("connections reset", held, {"reset": moved(now, "dropped")})
        if "accepted" in now:
            held, now = await eventually(
                env.net.counters, lambda c: moved(c, "accepted") > 0, env.settle_s
            )
            ev.add("peers dialled again", held, {"new_connections": moved(now, "accepted")})
        return ev


class Kill(Fault):
    group = "kill"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._victims: list[str] = []
        self._pids: dict[str, int] = {}

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
        pids = {n: env.db.pid(n) for n in targets}
        self._victims = env.db.kill(targets)
        self._pids = {n: p for n, p in pids.items() if n in self._victims and p is not None}
        details["killed"] = self._victims
        details["pids"] = self._pids
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        restarted = {n: env.db.restart(n) for n in self._victims}
        self._victims = []
        return {"restarted": {n: p for n, p in restarted.items() if p is not None}}

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """Each killed pid is gone from /proc (or a zombie not yet reaped)."""
        if not self._pids:
            return Evidence.nothing(f"none of {details.get('killed')} was running")
        ev = Evidence()
        for node, pid in sorted(self._pids.items()):
            gone, state = await eventually(
                lambda p=pid: proc_state(p, env.proc), lambda s: s in DEAD_STATES, env.settle_s
            )
            ev.add(f"{node} pid {pid} gone", gone, _state_word(state))
        return ev

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        """Each restarted node has a live process again."""
        return _alive_evidence(env, details.get("restarted", {}))


def _alive_evidence(env: Env, pids: dict[str, int | None]) -> Evidence | None:
    if not pids:
        return None
    ev = Evidence()
    for node, pid in sorted(pids.items()):
        state = None if pid is None else proc_state(pid, env.proc)
        # Stopped is alive too when another fault paused it since (--nemesis all).
        ok = state not in DEAD_STATES and (state != "T" or node in env.db.paused)
        ev.add(f"{node} pid {pid} alive", ok, _state_word(state))
    return ev


class Pause(Fault):
    group = "pause"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._victim: str | None = None
        self._pid: int | None = None

    async def start(self, env: Env) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.kind == "pause-leader":
            victim, was_leader = await _leader_or_random(env)
            details["leader"] = victim if was_leader else None
        else:
            victim = env.rng.choice(env.db.nodes)
        pid = env.db.pid(victim)
        self._victim = victim if env.db.pause(victim) else None
        self._pid = pid if self._victim is not None else None
        details["paused"] = self._victim
        details["pid"] = self._pid
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        resumed = self._victim is not None and env.db.resume(self._victim)
        victim, self._victim = self._victim, None
        return {"resumed": victim if resumed else None, "pid": self._pid if resumed else None}

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """The kernel reports the paused process stopped: state ``T``."""
        pid = self._pid
        if pid is None:
            return Evidence.nothing(f"{details.get('leader') or 'the node'} was not running")
        ev = Evidence()
        victim = details["paused"]
        stopped, state = await eventually(
            lambda: proc_state(pid, env.proc),
            lambda s: s == "T" or env.db.pid(victim) != pid,
            env.settle_s,
        )
        if state != "T" and env.db.pid(victim) != pid:  # another fault killed it first
            ev.notes.append(f"{victim} pid {pid} killed by another fault before it was seen")
            ev.superseded = "the paused process was killed (another fault) before it was seen"
            return ev
        ev.add(f"{victim} pid {pid} stopped", stopped, _state_word(state))
        return ev

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        """The resumed process runs again: alive and no longer in state ``T``."""
        pid = details.get("pid")
        if details.get("resumed") is None or pid is None:
            return Evidence.nothing("not paused any more (killed or restarted meanwhile)")
        ev = Evidence()
        running, state = await eventually(
            lambda: proc_state(pid, env.proc),
            lambda s: s not in DEAD_STATES and s != "T",
            env.settle_s,
        )
        ev.add(f"{details['resumed']} pid {pid} running", running, _state_word(state))
        return ev


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
        with contextlib.suppress(Exception):  # for the verifier: a term to be past
            details["term_before"] = (await env.db.status(leader)).term
        details["log_offset"] = _size(env.db.own_data_dir(to) / "node.log")
        try:
            details["new_leader"] = await env.db.transfer_leader(to)
            details["outcome"] = "moved"
        except Exception as exc:  # the client's definite or indefinite errors
            details["outcome"] = f"{type(exc).__name__}: {exc}"
        return details

    async def stop(self, env: Env) -> dict[str, Any]:
        return {}

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """The target itself says it leads (or names itself the leader), waiting out
        another group's fault that has it down or paused for the moment. Else (it led
        and lost it again since, or stays down) its own log saying it led a term later
        than the old leader's before the transfer, or another running node naming it
        the leader in such a term (a node cut off since an earlier term of the
        target's would otherwise pass)."""
        if details.get("outcome") != "moved":
            return Evidence.nothing(str(details.get("outcome")))
        to = details["to"]
        ev = Evidence()
        deadline = time.monotonic() + env.answer_s
        st, why = await _answer(env, to, lambda: env.db.status(to), deadline)
        if st is not None:
            seen = {"role": st.role, "term": st.term, "leader": st.leader}
            if st.role == "leader" or st.leader == to:
                ev.add(f"{to} reports leading", True, seen)
                return ev
            why = f"{to} answers {seen}"  # led and lost it since? its log says
        before = details.get("term_before")
        log = env.db.own_data_dir(to) / "node.log"
        led = terms_led(_read_from(log, details.get("log_offset", 0)))
        if before is not None and any(t > before for t in led):
            seen = {"terms_led": led, "term_before": before, "now": why}
            ev.add(f"{to} logged leading in a later term", True, seen)
            return ev
        others = [n for n in env.db.nodes if n != to and _cannot_answer(env, n) is None]
        if why in ("down", "paused") and not others:
            ev.notes.append(f"{to} {why} (another fault), and no other node could answer")
            ev.superseded = "nobody could be asked whether it took effect"
            return ev
        for other in others:
            if before is None:
                break
            with contextlib.suppress(Exception):
                st = await env.db.status(other)
                if st.leader == to and st.term > before:
                    seen = {"node": other, "term": st.term, "term_before": before, "to": why}
                    ev.add(f"{other} names {to} the leader", True, seen)
                    return ev
        ev.add(f"{to} reports leading", False, why)
        return ev


class Clock(Fault):
    """Move nodes' wall clocks (libfaketime, :mod:`jepsen_like.clock`); never their
    monotonic clocks. Jepsen's clock nemesis, per node process:

    - ``clock-offset``: every node's wall clock set to its own random offset, up to
      ±64 s (Jepsen's scramble);
    - ``clock-step-forward``, ``clock-step-backward``: the leader's wall clock (a random
      node's when there is none) stepped by 1-128 s (a power of two drawn uniformly in
      the exponent, as Jepsen's bump);
    - ``clock-strobe``: the leader's wall clock flips between true time and an offset of
      ±1-64 s every 20-100 ms;
    - ``clock-drift``: the leader's wall clock runs 0.8-1% fast or slow (from its value
      now: no step).

    The stop sets every clock it moved back to true time. Each is verified by reading
    the node's clocks back from its status answer (:func:`jepsen_like.clock.read_clocks`):
    the wall clock off by what was set (for drift, its offset growing at the rate set,
    over ``env.drift_window_s``; for a strobe, both values seen), the monotonic clock
    untouched."""

    group = "clock"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._moved: dict[str, float] = {}  # node -> offset set (0 for drift)
        self._task: asyncio.Task[None] | None = None
        self._strobe: tuple[str, float, float] | None = None  # node, offset, period

    @staticmethod
    def _clocks(env: Env) -> NodeClocks:
        if env.clock is None:
            raise NemesisError("clock faults need the nodes started under libfaketime")
        return env.clock

    async def start(self, env: Env) -> dict[str, Any]:
        clocks, rng = self._clocks(env), env.rng
        details: dict[str, Any] = {}
        if self.kind == "clock-offset":
            offsets = {
                n: round(rng.choice((-1, 1)) * 2 ** rng.uniform(-3, 6), 3) for n in env.db.nodes
            }
            for node, off in offsets.items():
                clocks.set(node, env.db.pid(node), off)
            self._moved = offsets
            details["offsets_s"] = offsets
            return details
        node, was_leader = await _leader_or_random(env)
        details["node"] = node
        details["leader"] = node if was_leader else None
        if self.kind in ("clock-step-forward", "clock-step-backward"):
            sign = 1 if self.kind == "clock-step-forward" else -1
            off = round(sign * 2 ** rng.uniform(0, 7), 3)
            clocks.set(node, env.db.pid(node), off)
            self._moved = {node: off}
            details["step_s"] = off
        elif self.kind == "clock-strobe":
            off = round(rng.choice((-1, 1)) * 2 ** rng.uniform(0, 6), 3)
            period = round(rng.uniform(0.02, 0.1), 3)
            self._strobe = (node, off, period)
            self._moved = {node: off}
            self._task = asyncio.get_running_loop().create_task(self._flip(env, node, off, period))
            details.update(strobe_s=off, period_ms=period * 1000)
        elif self.kind == "clock-drift":
            rate = round(1 + rng.choice((-1, 1)) * rng.uniform(0.008, 0.01), 5)
            clocks.set(node, env.db.pid(node), 0.0, rate)
            self._moved = {node: 0.0}
            details["rate"] = rate
        else:
            raise NemesisError(f"unknown clock kind {self.kind}")
        details["clocks"] = {n: clocks.line(n) for n in self._moved}
        return details

    async def _flip(self, env: Env, node: str, off: float, period: float) -> None:
        clocks, on = self._clocks(env), False
        while True:
            on = not on
            clocks.set(node, None, off if on else 0.0)
            await asyncio.sleep(period)

    async def stop(self, env: Env) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        clocks = self._clocks(env)
        for node in self._moved:
            clocks.reset(node)
        return {"reset": sorted(self._moved)}

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """Each moved node's wall clock reads back off by what was set, its monotonic
        clock not at all. The nodes are read in parallel, within one ``answer_s`` for
        the whole fault (plus the drift window). A node another fault keeps down or
        paused all that time is noted, not counted: if no node could be read, the
        fault is not applied as far as anyone can tell."""
        clocks = self._clocks(env)
        deadline = time.monotonic() + env.answer_s

        async def one(node: str) -> Evidence:
            ev = Evidence()
            if self.kind == "clock-strobe":
                await _verify_strobe(env, node, self._moved[node], ev, deadline)
            elif self.kind == "clock-drift":
                await _verify_drift(env, node, clocks.settings[node], ev, deadline)
            else:
                await _verify_offset(env, node, self._moved[node], ev, deadline)
            return ev

        return _merged(await asyncio.gather(*(one(n) for n in sorted(self._moved))))

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        """Each node's wall clock is back on true time (read twice, 0.3 s apart: no
        drift left either) and its monotonic clock was never moved."""
        moved, self._moved = self._moved, {}
        return await _verify_true_time(env, sorted(moved))


CLOCK_TOLERANCE_S: Final = 0.05
"""How far a read-back offset may be from the one set, besides half the round trip."""


def _cannot_answer(env: Env, node: str) -> str | None:
    """Why ``node`` cannot answer now because of another fault, or None. A node the
    harness killed (or holds down) has no pid; a node that died on its own keeps its
    pid until it is reaped, so it is asked, fails to answer, and fails the check (the
    nodes checker reports the crash too)."""
    if node in env.db.paused:
        return "paused"
    return "down" if env.db.pid(node) is None else None


async def _answer(
    env: Env, node: str, ask: Callable[[], Awaitable[T]], deadline: float
) -> tuple[T | None, str | None]:
    """``ask`` ``node``, waiting out another group's fault (``--nemesis all``): a node
    killed or paused since this fault started cannot answer now but will when that
    fault ends, and a node that is slow under load may miss one request. Tries until
    ``deadline`` (monotonic); returns the answer, or None and why there is none: the
    other fault's doing (``down``, ``paused``) if one had the node at any time in the
    wait, else the last failure."""
    interfered: str | None = None  # another fault had it down or paused meanwhile
    while True:
        why = _cannot_answer(env, node)
        if why is None:
            try:
                return await ask(), None
            except Exception as exc:
                why = f"status failed: {exc!r}"
        else:
            interfered = why
        if time.monotonic() >= deadline:
            # Back only just before the deadline (a restarted node replays its log
            # first): it had no fair chance to answer, which is the other fault's doing.
            return None, interfered or why
        await asyncio.sleep(0.2)


def _merged(parts: Sequence[Evidence]) -> Evidence:
    """One node's evidence each, in node order; no check at all: not applied."""
    ev = Evidence()
    for part in parts:
        ev.checks += part.checks
        ev.notes += part.notes
    if not ev.checks:
        ev.superseded = "no moved node could be read: " + "; ".join(ev.notes)
    return ev


def _near(read: ClockRead, wall: float) -> tuple[bool, bool]:
    tol = CLOCK_TOLERANCE_S + read.error
    return abs(read.wall_offset - wall) <= tol, abs(read.mono_offset) <= tol


async def _read(env: Env, node: str, ev: Evidence, deadline: float) -> ClockRead | None:
    """One read-back (:func:`_answer`). A node another fault still keeps down or
    paused at the deadline is noted; one that runs and does not answer fails."""
    read, why = await _answer(env, node, lambda: read_clocks(env.db, node), deadline)
    if read is None:
        if why in ("paused", "down"):
            ev.notes.append(f"{node} not read: {why} (another fault) until the deadline")
        else:
            ev.add(f"{node} clocks read back", False, why)
    return read


async def _verify_offset(env: Env, node: str, offset: float, ev: Evidence, deadline: float) -> None:
    read = await _read(env, node, ev, deadline)
    if read is None:
        return
    wall_ok, mono_ok = _near(read, offset)
    seen = {"set_s": offset, **read.to_json()}
    ev.add(f"{node} wall clock {offset:+g} s", wall_ok, seen)
    ev.add(f"{node} monotonic clock untouched", mono_ok, seen)


async def _verify_strobe(env: Env, node: str, offset: float, ev: Evidence, deadline: float) -> None:
    reads = []
    for _ in range(15):
        read = await _read(env, node, ev, deadline)
        if read is None:
            return
        reads.append(read)
        if any(_near(r, offset)[0] for r in reads) and any(_near(r, 0)[0] for r in reads):
            break
        # Irregular (and not from the seeded RNG: timing must not shift the schedule).
        await asyncio.sleep(random.uniform(0.01, 0.15))
    seen = [round(r.wall_offset * 1000, 1) for r in reads]
    at_offset = any(_near(r, offset)[0] for r in reads)
    ev.add(f"{node} wall clock seen at {offset:+g} s", at_offset, seen)
    ev.add(f"{node} wall clock seen at true time", any(_near(r, 0)[0] for r in reads), seen)
    ev.add(f"{node} monotonic clock untouched", all(_near(r, 0)[1] for r in reads), seen)


async def _verify_drift(
    env: Env, node: str, setting: Setting, ev: Evidence, deadline: float
) -> None:
    """Two reads ``drift_window_s`` apart, from one process: the wall clock where the
    drift puts it (no step) and running at the rate set. A node restarted between the
    reads (another fault) is read again, both times from its new process."""
    rate = setting.rate
    while True:
        first = await _read(env, node, ev, deadline)
        if first is None:
            return
        await asyncio.sleep(env.drift_window_s)
        second = await _read(env, node, ev, deadline + env.drift_window_s)
        if second is None:
            return
        if first.pid == second.pid:
            break
        ev.notes.append(f"{node} restarted between the reads (pid {first.pid} -> {second.pid})")
        if time.monotonic() >= deadline:
            return  # no two reads of one process in time: nothing measured
    span = second.at - first.at
    measured = (second.wall_offset - first.wall_offset) / span
    tol = (first.error + second.error) / span + 0.001
    seen = {
        "set_rate": rate,
        "measured_rate": round(1 + measured, 5),
        "over_s": round(span, 3),
        "first": first.to_json(),
        "second": second.to_json(),
    }
    expected = setting.expected_offset(first.at)
    ev.add(f"{node} wall clock where the drift puts it", _near(first, expected)[0], seen)
    ev.add(f"{node} wall clock runs at x{rate:g}", abs(measured - (rate - 1)) <= tol, seen)
    mono_rate = (second.mono_offset - first.mono_offset) / span
    ev.add(
        f"{node} monotonic clock untouched",
        _near(first, 0)[1] and _near(second, 0)[1] and abs(mono_rate) <= tol,
        seen,
    )


async def _verify_true_time(env: Env, nodes: Sequence[str]) -> Evidence | None:
    """Each node read twice, back on true time; in parallel, within one deadline."""
    if not nodes:
        return None
    deadline = time.monotonic() + env.answer_s

    async def one(node: str) -> Evidence:
        ev = Evidence()
        reads, why = None, None
        while True:
            reads, why = await _answer(env, node, lambda: _two_reads(env, node), deadline)
            if reads is not None and all(all(_near(r, 0)) for r in reads):
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        if reads is None and why in ("paused", "down"):
            ev.notes.append(f"{node} not read: {why} (another fault) until the deadline")
            return ev
        ok = reads is not None and all(all(_near(r, 0)) for r in reads)
        ev.add(f"{node} clocks on true time", ok, [r.to_json() for r in reads] if reads else why)
        return ev

    return _merged(await asyncio.gather(*(one(n) for n in nodes)))


async def _two_reads(env: Env, node: str) -> list[ClockRead]:
    first = await read_clocks(env.db, node)
    await asyncio.sleep(env.clock_recheck_s)
    return [first, await read_clocks(env.db, node)]


class Membership(Fault):
    """Remove a random non-leader voter, kill it and wipe its Raft state; the stop
    brings it back the way an operator adds a new machine (start empty with --join,
    add as learner, wait until it has caught up, promote). Learner first, so that a
    voter that still has the whole log to fetch never counts towards a quorum.

    The stop restores whatever state it finds (each step is a no-op when already
    done), so an interrupted change is completed by the final heal. Every step is
    timestamped in the window's details.

    The wipe is verified where the *node* keeps its state, not where the harness
    believes it does: before the kill, the files the node has open (/proc/PID/fd)
    show its Raft directory and its log. That directory must be empty after the wipe
    (and still before the restart), and the restarted node must log that it recovered
    nothing: term 0, snapshot 0, 0 log entries."""

    kind = group = "membership"

    def __init__(self, catch_up_timeout: float = 20.0, conflict_retry_s: float = 10.0) -> None:
        self.catch_up_timeout = catch_up_timeout
        self.conflict_retry_s = conflict_retry_s
        self._victim: str | None = None
        self._seen: dict[str, Any] = {}  # where the victim really keeps its state

    async def start(self, env: Env) -> dict[str, Any]:
        if self._victim is not None:  # a previous stop failed: finish that restore first
            try:
                await self.stop(env)
            except (ClientError, DBError) as exc:  # no quorum, no catch-up: the heal will
                outcome = f"the previous change is not restored yet: {type(exc).__name__}"
                return {"leader": None, "outcome": outcome}
        leader = await env.db.leader()
        if leader is None:
            return {"leader": None, "outcome": "no leader to change membership through"}
        victim = env.rng.choice([n for n in env.db.nodes if n != leader])
        steps = _Steps()
        self._victim = victim  # before the remove: its outcome may be unknown
        self._seen = {}
        try:
            members = await self._retry(lambda: env.db.member_remove(victim))
        except ClientError as exc:  # refused or unknown: the stop restores either way
            steps.add("remove failed", error=f"{type(exc).__name__}: {exc}")
            return {"leader": leader, "victim": victim, "steps": steps.done}
        steps.add("removed", voters=list(members.voters))
        self._seen = _where_it_writes(env, victim)
        env.db.held.add(victim)  # down until this fault's stop, whatever else heals
        env.db.kill([victim])
        steps.add("killed")
        env.db.wipe(victim)
        steps.add("wiped")
        log = self._seen.get("log")
        self._seen["log_offset"] = _size(Path(log)) if log else 0
        return {"leader": leader, "victim": victim, "steps": steps.done}

    async def stop(self, env: Env) -> dict[str, Any]:
        victim = self._victim
        if victim is None:
            return {}
        steps = _Steps()
        env.db.held.discard(victim)
        if not env.db.running(victim):
            raft_dir = self._seen.get("raft_dir")
            if raft_dir is not None:  # looked at by verify_stop
                self._seen["before_restart"] = dir_listing(Path(raft_dir))
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

    async def verify_start(self, env: Env, details: dict[str, Any]) -> Evidence:
        """The victim's process is gone and the Raft directory it had open is empty."""
        steps = [s["step"] for s in details.get("steps", [])]
        if "wiped" not in steps:
            return Evidence.nothing(str(details.get("outcome") or "the remove failed"))
        ev = Evidence()
        seen = self._seen
        pid = seen.get("pid")
        if pid is not None:
            state = proc_state(pid, env.proc)
            ev.add(f"{details['victim']} pid {pid} gone", state in DEAD_STATES, _state_word(state))
        raft_dir = seen.get("raft_dir")
        if raft_dir is None:
            ev.add("the node's Raft directory seen", False, seen.get("open"))
        else:
            listing = dir_listing(Path(raft_dir))
            ev.add(
                "Raft directory empty",
                not listing,
                {"dir": raft_dir, "source": seen["source"], "entries": (listing or [])[:8]},
            )
        return ev

    async def verify_stop(self, env: Env, details: dict[str, Any]) -> Evidence | None:
        """The directory was still empty at the restart, and the restarted node logs
        that it recovered nothing from disk (index 0, term 0)."""
        victim = details.get("victim")
        if victim is None or "log_offset" not in self._seen:
            return None
        ev = Evidence()
        seen, self._seen = self._seen, {}
        if "before_restart" in seen:
            listing = seen["before_restart"]
            ev.add(
                "Raft directory empty before restart",
                not listing,
                {"dir": seen["raft_dir"], "entries": (listing or [])[:8]},
            )
        log = seen.get("log")
        if log is None:
            ev.add("the node's log seen", False, seen.get("open"))
            return ev
        pid = env.db.pid(victim)

        def first_start() -> Startup | None:
            text = _read_from(Path(log), seen["log_offset"])
            found = [s for s in startups(text) if s.pid is not None]
            return found[0] if found else None

        logged, start = await eventually(first_start, lambda s: s is not None, env.settle_s)
        if not logged or start is None:
            ev.add("restart logged", False, {"log": log, "from_byte": seen["log_offset"]})
            return ev
        ev.add(
            "recovered index 0 from disk",
            start.recovered_index == 0 and start.term == 0,
            {"log": log, **start.to_json(), "current_pid": pid},
        )
        alive = _alive_evidence(env, {victim: pid})
        ev.checks += alive.checks if alive is not None else []
        voters = next((s.get("voters") for s in details["steps"] if s["step"] == "promoted"), None)
        if voters is not None:
            ev.add(f"{victim} a voter again", victim in voters, {"voters": voters})
        return ev

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


def _where_it_writes(env: Env, node: str) -> dict[str, Any]:
    """Where ``node``'s running process keeps its Raft state and its log: from the files
    it has open (/proc/PID/fd), else from its own config file (saying so)."""
    pid = env.db.pid(node)
    paths = open_paths(pid, env.proc) if pid is not None else []
    raft = sorted({p[: p.index("/raft/") + 5] for p in paths if "/raft/" in p})
    logs = [p for p in paths if p.endswith("/node.log")]
    seen: dict[str, Any] = {"pid": pid, "open": paths[:12]}
    if raft and logs:
        seen.update(raft_dir=raft[0], log=logs[0], source=f"/proc/{pid}/fd")
    else:
        own = env.db.own_data_dir(node)
        seen.update(raft_dir=str(own / "raft"), log=str(own / "node.log"), source="its config")
    return seen


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


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
    "clock-offset": lambda: Clock("clock-offset"),
    "clock-step-forward": lambda: Clock("clock-step-forward"),
    "clock-step-backward": lambda: Clock("clock-step-backward"),
    "clock-strobe": lambda: Clock("clock-strobe"),
    "clock-drift": lambda: Clock("clock-drift"),
}
GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "partition": tuple(k for k in FAULTS if k.startswith("partition-")),
    "kill": ("kill-one", "kill-leader", "kill-all"),
    "pause": ("pause-one", "pause-leader"),
    "member": ("membership",),
    "clock": tuple(k for k in FAULTS if k.startswith("clock-")),
    "all": tuple(FAULTS),  # and, through combined(), Jepsen's combined schedule
}
UNAVAILABLE: Final[dict[str, str]] = {}
"""Nemeses named but not offered here, with the reason (none at present)."""


def needs_clock(kinds: Iterable[str]) -> bool:
    """Whether these kinds move clocks: the nodes must then start under libfaketime."""
    return any(k.startswith("clock-") for k in kinds)


def combined(spec: str) -> bool:
    """Whether ``--nemesis`` asks for the combined schedule (``all``): overlapping
    faults of different groups rather than one fault at a time."""
    return any(raw.strip().lower() == "all" for raw in spec.split(","))


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
    """Healthy for ``interval`` s, a fault for ``interval`` s, repeat, until stopped.

    ``combined`` (``--nemesis all``): Jepsen's combined nemesis instead. Each group of
    kinds (partition, kill, pause, latency, drop, transfer, membership) runs its own
    loop: healthy for a random ``0.5-1.5 x interval``, then a kind of the group drawn at
    random, in force for another such while, then stopped. So faults of different
    groups overlap, at most one of each group is in force at a time, and every draw
    comes from the seed (each group from its own RNG, so one group's timing does not
    shift another's draws). A fault that fails is recorded as an ``error`` and its
    group goes on; the heal ends everything."""

    def __init__(
        self,
        kinds: Sequence[str],
        env: Env,
        *,
        interval: float,
        clock_ns: Callable[[], int],
        faults: dict[str, Fault] | None = None,
        combined: bool = False,
    ) -> None:
        self.kinds = list(kinds)
        self.env = env
        self.interval = interval
        self.clock_ns = clock_ns
        self.combined = combined
        self.timeline: list[TimelineEvent] = []
        self._faults = faults or {k: FAULTS[k]() for k in self.kinds}
        self._active: dict[int, Fault] = {}
        self._next_id = 0
        self._bag: list[str] = []
        groups: dict[str, list[str]] = {}
        for kind in self.kinds:
            groups.setdefault(self._faults[kind].group or kind, []).append(kind)
        self.groups = groups
        self._group_rngs = {g: random.Random(env.rng.random()) for g in sorted(groups)}

    def _next_kind(self) -> str:
        """Kinds in a freshly shuffled order each round: random, yet a run with as many
        windows as kinds sees every kind (independent draws would often repeat one)."""
        if not self._bag:
            self._bag = list(self.kinds)
            self.env.rng.shuffle(self._bag)
        return self._bag.pop()

    @property
    def active(self) -> str | None:
        kinds = sorted(f.kind for f in self._active.values())
        return ", ".join(kinds) if kinds else None

    def _record(
        self, event: str, fault: int | None, kind: str, details: dict[str, Any]
    ) -> TimelineEvent:
        ev = TimelineEvent(self.clock_ns(), event, fault, kind, details)
        self.timeline.append(ev)
        return ev

    def note(self, event: str, kind: str, details: dict[str, Any]) -> None:
        """Put something seen outside the schedule on the timeline (a node crash)."""
        self._record(event, None, kind, details)

    async def run(self, stop: asyncio.Event) -> None:
        """Inject faults until ``stop`` is set; leaves the last fault active (call heal)."""
        if not self.kinds:
            return
        if self.combined:
            await asyncio.gather(*(self._run_group(g, stop) for g in sorted(self.groups)))
            return
        while not await _wait(stop, self.interval):
            await self.start(self._next_kind())
            if await _wait(stop, self.interval):
                return
            await self.stop_active()

    async def _run_group(self, group: str, stop: asyncio.Event) -> None:
        rng = self._group_rngs[group]
        kinds = self.groups[group]
        while not await _wait(stop, self.interval * rng.uniform(0.5, 1.5)):
            kind = rng.choice(kinds)
            try:
                fid = await self.start(kind)
            except Exception:
                continue  # recorded as an error; the fault's state is the heal's to mend
            if await _wait(stop, self.interval * rng.uniform(0.5, 1.5)):
                return
            with contextlib.suppress(Exception):  # recorded as an error, as above
                await self.stop(fid)

    async def start(self, kind: str) -> int:
        """Start a fault of ``kind``, record it, then verify it; returns its id."""
        fault = self._faults[kind]
        fid = self._next_id
        self._next_id += 1
        self._active[fid] = fault
        started = time.monotonic()
        try:
            details = await fault.start(self.env)
        except Exception as exc:
            self._record("error", fid, kind, {"phase": "start", "error": repr(exc)})
            raise
        details["took_ms"] = round((time.monotonic() - started) * 1000, 1)
        self._record("start", fid, kind, details)
        try:
            evidence = await _verified(fault.verify_start, self.env, details)
        except asyncio.CancelledError:
            cut = Evidence(error="verification cut short: the schedule was cancelled")
            details["evidence"] = cut.to_json()
            raise
        details["evidence"] = evidence.to_json()
        return fid

    async def stop(self, fid: int) -> None:
        """Undo fault ``fid`` (if still active), record it, then verify the undo."""
        fault = self._active.pop(fid, None)
        if fault is None:
            return
        try:
            details = await fault.stop(self.env)
        except Exception as exc:
            self._record("error", fid, fault.kind, {"phase": "stop", "error": repr(exc)})
            # Still in force, as far as anyone knows: the heal stops it again (a stop
            # completes whatever state it finds).
            self._active[fid] = fault
            raise
        self._record("stop", fid, fault.kind, details)
        evidence = await _verified(fault.verify_stop, self.env, details)
        if evidence is not None:
            details["evidence"] = evidence.to_json()

    async def stop_active(self) -> None:
        """Undo every active fault (one, unless ``combined``): processes and network
        first, membership last (it needs a live quorum to restore the voters)."""
        for fid in sorted(self._active, key=lambda f: (self._active[f].group == "membership", f)):
            await self.stop(fid)

    async def heal(self) -> dict[str, Any]:
        """End the active faults, then heal everything whatever state it is in, and look
        whether it is: every link open and answering a probe, every process running."""
        errors = []
        later = [f for f, fault in self._active.items() if fault.group == "membership"]
        for fid in sorted(set(self._active) - set(later)):
            try:
                await self.stop(fid)
            except Exception as exc:
                errors.append(repr(exc))
        self.env.net.heal()
        if self.env.clock is not None:
            for node in self.env.db.nodes:
                self.env.clock.reset(node)
        resumed = [n for n in list(self.env.db.paused) if self.env.db.resume(n)]
        restarted = []
        for node in self.env.db.dead():
            try:
                if self.env.db.restart(node) is not None:
                    restarted.append(node)
            except Exception as exc:
                errors.append(f"restart {node}: {exc!r}")
        for fid in later:  # with a quorum back, the removed voter can be restored
            try:
                await self.stop(fid)
            except Exception as exc:
                errors.append(repr(exc))
        details: dict[str, Any] = {"resumed": resumed, "restarted": restarted}
        if errors:
            details["errors"] = errors
        self._record("heal", None, "all", details)
        details["evidence"] = (await _verified(_verify_healed, self.env, details)).to_json()
        return details


async def _verified(
    verify: Callable[[Env, dict[str, Any]], Awaitable[Evidence | None]],
    env: Env,
    details: dict[str, Any],
) -> Evidence:
    """Run a verifier, timed; a verifier that raises is evidence of nothing."""
    started = time.monotonic()
    try:
        evidence = await verify(env, details)
    except Exception as exc:
        evidence = Evidence(error=f"verifier failed: {exc!r}")
    if evidence is not None:
        evidence.took_ms = round((time.monotonic() - started) * 1000, 1)
    return evidence  # type: ignore[return-value]


async def _verify_healed(env: Env, details: dict[str, Any]) -> Evidence:
    """After the final heal: no link in drop mode, every link's probe answered, every
    node's process alive and not stopped."""
    ev = Evidence()
    links = _links(env)
    blocked = [f"{s}->{d}" for s, d in links if env.net.link_blocked((s, d))]
    ev.add("no link in drop mode", not blocked, {"blocked": blocked} if blocked else None)
    await _probe_links(env, links, ev, expect_reached=True)
    pids = {n: env.db.pid(n) for n in env.db.nodes}
    for node, pid in sorted(pids.items()):
        running, state = await eventually(
            lambda p=pid: None if p is None else proc_state(p, env.proc),
            lambda s: s not in DEAD_STATES and s != "T",
            env.settle_s,
        )
        ev.add(f"{node} pid {pid} running", running, _state_word(state))
    if env.clock is not None:
        clocks = await _verify_true_time(env, env.db.nodes)
        ev.checks += clocks.checks if clocks is not None else []
    return ev


def verification(timeline: Sequence[TimelineEvent]) -> dict[str, Any]:
    """The faults checker: every fault's evidence, judged. ``valid`` True when every
    start, stop and the heal was verified, or the fault says it injected nothing, or
    another fault named in its evidence kept it from being seen (``superseded``,
    counted apart in the summary); None (unknown) otherwise: a fault nobody saw take
    effect, with no other fault to account for it, proves nothing, so the run cannot
    be called valid, nor invalid on that account."""
    counts: dict[str, int] = {}
    bad: list[dict[str, Any]] = []
    stopped_later = {(ev.fault, i) for i, ev in enumerate(timeline) if ev.event == "stop"}
    for i, ev in enumerate(timeline):
        if ev.event == "error":
            if ev.details.get("phase") == "stop" and any(
                f == ev.fault and j > i for f, j in stopped_later
            ):
                status, failed = "retried", []  # a later stop of the same fault succeeded
            else:
                status, failed = "error", [ev.details.get("error")]
        elif ev.event in ("start", "stop", "heal") and "evidence" in ev.details:
            evidence = ev.details["evidence"]
            status = evidence["status"]
            failed = [c for c in evidence["checks"] if not c["ok"]] or [evidence.get("error")]
        elif ev.event == "start":
            status, failed = "unverified", ["no evidence recorded"]
        else:
            continue
        counts[status] = counts.get(status, 0) + 1
        if status in ("unverified", "error"):
            bad.append({"fault": ev.fault, "kind": ev.kind, "event": ev.event, "failed": failed})
    ok = not bad
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    summary = ("every fault verified" if ok else "NOT every fault verified") + (
        f" ({', '.join(parts)})" if parts else " (no faults)"
    )
    if bad:
        first, what = bad[0], bad[0]["failed"][0]
        if isinstance(what, dict):
            what = f"{what['check']}: {what['observed']}"
        summary += f"; first: {first['kind']} {first['event']}: {what}"
    return {"valid": True if ok else None, "summary": summary, "counts": counts, "unverified": bad}


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``event`` is set first; returns whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
