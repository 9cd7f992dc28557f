"""What can go wrong in a simulated run, and how often: the scenario and the nemesis.

A :class:`Scenario` holds the knobs of a run; every knob left as None is drawn from
the seed, so a sweep of seeds covers calm and violent runs alike, while a test that
hunts a specific bug pins them to aggressive values. A :class:`Fault` is one
injected failure; the :class:`Nemesis` either draws them at random intervals or
replays an explicit ``(time, fault)`` schedule (which is what lets hypothesis shrink a
failing run to a handful of faults).

Membership faults keep the cluster able to make progress: a voter is demoted or
removed only while more than a majority of the nodes remain voters, the leader is
never the target, and a removed node comes back only with wiped storage, as a
learner, after every member has applied (and snapshotted past) its removal — so
no configuration that still counts the old node's vote can meet the wiped one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from raft.errors import ProposalDropped
from raft.types import ConfChange, ConfChangeKind, NodeId

if TYPE_CHECKING:
    from raft.sim.cluster import Cluster

CRASH = "crash"
CRASH_LEADER = "crash-leader"
RESTART = "restart"
SPLIT = "split"
ISOLATE = "isolate"
ISOLATE_LEADER = "isolate-leader"
PAUSE = "pause"
PAUSE_LEADER = "pause-leader"
CUT = "cut"
HEAL = "heal"
TRANSFER = "transfer"
DEMOTE = "demote"
PROMOTE = "promote"
REMOVE = "remove"
READD = "readd"
CORRUPT = "corrupt"  # crash a node and damage a sector of its durable data
FSYNC_FAIL = "fsync-fail"  # a node's next fsync fails

FAULT_KINDS = (
    CRASH,
    CRASH_LEADER,
    RESTART,
    SPLIT,
    ISOLATE,
    ISOLATE_LEADER,
    PAUSE,
    PAUSE_LEADER,
    CUT,
    HEAL,
    TRANSFER,
    DEMOTE,
    PROMOTE,
    REMOVE,
    READD,
    CORRUPT,
    FSYNC_FAIL,
)
MEMBERSHIP_KINDS = (DEMOTE, PROMOTE, REMOVE, READD)
T = TypeVar("T")

DEFAULT_WEIGHTS: dict[str, float] = {
    CRASH: 3,
    CRASH_LEADER: 2,
    SPLIT: 2,
    ISOLATE: 1.5,
    ISOLATE_LEADER: 2,
    PAUSE: 1,
    PAUSE_LEADER: 1.5,
    CUT: 1.5,
    HEAL: 1,
    TRANSFER: 1.5,
    DEMOTE: 2,
    PROMOTE: 3,
    REMOVE: 2,
    READD: 3,
    CORRUPT: 0.5,
    FSYNC_FAIL: 0.5,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure. ``a``/``b`` pick nodes (modulo the cluster size; for
    SPLIT, ``a`` is a bitmask of one side); ``duration`` is how long a crash or a
    partition lasts, in virtual ms (0: until healed)."""

    kind: str
    a: int = 0
    b: int = 0
    duration: int = 0


@dataclass(slots=True)
class Scenario:
    """Knobs of a run; None means "draw from the seed"."""

    nemesis_ms: tuple[int, int] | None = None  # gap between random faults
    weights: dict[str, float] | None = None
    schedule: tuple[tuple[int, Fault], ...] | None = None  # replaces the random nemesis
    lose_unsynced: bool | None = None  # crashes may be power losses
    fsync_never: bool | None = None  # the runtime's fsync = "never": process crashes only
    segment_bytes: int | None = None  # WAL segment size (small: rotation and compaction)
    crash_points: float | None = None  # chance of a crash after each fsync/rename/unlink
    catchup_entries: int | None = None  # entries kept below a snapshot for lagging peers
    drop_p: float | None = None
    dup_p: float | None = None
    max_down: int | None = None  # nodes crashed at once
    snapshot_every: int | None = None
    clients: int | None = None
    report_unreachable: bool | None = None  # the transport notices cut links / dead peers
    max_msg_entries: int | None = None  # core flow control: small values split appends
    max_inflight_msgs: int | None = None
    down_ms: tuple[int, int] = (10, 1500)
    partition_ms: tuple[int, int] = (50, 2500)
    quiet_ms: int = 10_000
    membership: bool = True
    # A removed node restarts at once, empty, waiting to be added back (as `kv node
    # --join` after a wipe does in the fault harness), instead of staying down until
    # it is re-added: its empty self then meets members whose configuration still
    # counts its old vote.
    rejoin_at_once: bool = False


@dataclass(slots=True)
class Params:
    """A scenario with every knob decided: what this run actually does."""

    nemesis_ms: tuple[int, int]
    weights: dict[str, float]
    lose_unsynced: bool
    fsync_never: bool
    segment_bytes: int
    crash_points: float
    catchup_entries: int
    drop_p: float
    dup_p: float
    max_down: int
    snapshot_every: int
    clients: int
    report_unreachable: bool
    max_msg_entries: int
    max_inflight_msgs: int


def _or(pinned: T | None, drawn: T) -> T:
    return drawn if pinned is None else pinned


def resolve(s: Scenario, rng: random.Random, n: int) -> Params:
    """Decide the scenario's open knobs from ``rng`` (always drawing every knob, so
    the draws a seed makes do not depend on which knobs a test pinned)."""
    gap = rng.choice([(20, 150), (50, 400), (150, 900), (400, 2500)])
    scale = {k: w * rng.uniform(0.2, 1.0) for k, w in DEFAULT_WEIGHTS.items()}
    lose = rng.random() < 0.5
    never = rng.random() < 0.1
    segment = rng.choice([512, 4096, 1 << 16])
    points = rng.choice([0.0, 0.0, 0.002, 0.01])
    drop = rng.choice([0.0, 0.0, 0.01, 0.05, 0.15])
    dup = rng.choice([0.0, 0.01, 0.05])
    down = rng.choice([1, max(1, n // 2), n - 1])
    snap = rng.randint(5, 50)
    margin = rng.choice([0, rng.randint(1, max(1, snap // 2))])
    clients = rng.randint(3, 5)
    unreachable = rng.random() < 0.5
    msg_entries = rng.choice([1, 4, 16, 64])
    inflight = rng.choice([1, 4, 8, 256])
    weights = dict(s.weights) if s.weights is not None else scale
    if not s.membership:
        for k in MEMBERSHIP_KINDS:
            weights[k] = 0.0
    return Params(
        nemesis_ms=_or(s.nemesis_ms, gap),
        weights=weights,
        # fsync = "never" survives process crashes only: no power loss in such runs.
        lose_unsynced=_or(s.lose_unsynced, lose) and not _or(s.fsync_never, never),
        fsync_never=_or(s.fsync_never, never),
        segment_bytes=_or(s.segment_bytes, segment),
        crash_points=_or(s.crash_points, points),
        catchup_entries=_or(s.catchup_entries, margin),
        drop_p=_or(s.drop_p, drop),
        dup_p=_or(s.dup_p, dup),
        max_down=_or(s.max_down, down),
        snapshot_every=_or(s.snapshot_every, snap),
        clients=_or(s.clients, clients),
        report_unreachable=_or(s.report_unreachable, unreachable),
        max_msg_entries=_or(s.max_msg_entries, msg_entries),
        max_inflight_msgs=_or(s.max_inflight_msgs, inflight),
    )


class Nemesis:
    """Draws faults (or replays a schedule) and carries them out on the cluster."""

    def __init__(self, cluster: Cluster, rng: random.Random, scenario: Scenario, p: Params):
        self.c = cluster
        self.rng = rng
        self.scenario = scenario
        self.p = p
        self._kinds = [k for k in FAULT_KINDS if p.weights.get(k, 0) > 0]
        self._weights = [p.weights[k] for k in self._kinds]

    def next_gap(self) -> int:
        lo, hi = self.p.nemesis_ms
        return self.rng.randint(lo, hi)

    def random_fault(self) -> Fault | None:
        if not self._kinds:
            return None
        rng = self.rng
        kind = rng.choices(self._kinds, self._weights)[0]
        n = len(self.c.ids)
        lo, hi = self.scenario.partition_ms
        if kind in (CRASH, CRASH_LEADER, CORRUPT):
            lo, hi = self.scenario.down_ms
        return Fault(kind, rng.randrange(1 << n), rng.randrange(n), rng.randint(lo, hi))

    # ---- carrying out a fault ----------------------------------------------------

    def apply(self, f: Fault) -> None:
        c = self.c
        ids = c.ids
        node = ids[f.a % len(ids)]
        leader = c.leader()
        if f.kind in (CRASH_LEADER, ISOLATE_LEADER, PAUSE_LEADER):
            if leader is None:
                return
            node = leader
        if f.kind in (CRASH, CRASH_LEADER):
            if c.down_count() < self.p.max_down:
                c.crash(node, f.duration)
        elif f.kind == RESTART:
            c.restart(node)
        elif f.kind == SPLIT:
            side = [x for i, x in enumerate(ids) if f.a >> i & 1]
            rest = [x for x in ids if x not in side]
            if side and rest:
                c.partition([side, rest], f.duration)
        elif f.kind in (PAUSE, PAUSE_LEADER):
            c.pause(node, f.duration)
        elif f.kind in (ISOLATE, ISOLATE_LEADER):
            c.partition([[node], [x for x in ids if x != node]], f.duration)
        elif f.kind == CUT:
            dst = ids[f.b % len(ids)]
            if dst != node:
                c.cut(node, dst, f.duration)
        elif f.kind == HEAL:
            c.heal()
        elif f.kind == CORRUPT:
            if c.nodes[node].raw is None or c.down_count() < self.p.max_down:
                c.damage(node, f.duration)
        elif f.kind == FSYNC_FAIL and not self.p.fsync_never:
            # A failed fsync may drop dirty pages (it is modelled as a power loss),
            # which fsync = "never" does not survive by design.
            c.fail_next_fsync(node)
        elif f.kind == TRANSFER:
            self._transfer(leader, ids[f.b % len(ids)])
        else:
            self._membership(f.kind, leader, f.b)

    def _transfer(self, leader: NodeId | None, to: NodeId) -> None:
        raw = self.c.raw(leader) if leader is not None else None
        if raw is not None and leader is not None and to in self.c.conf.voters and to != leader:
            self.c.note("nemesis", f"transfer leadership {leader} -> {to}")
            raw.transfer_leader(to)
            self.c.nodes[leader].drain_and_check()

    def _membership(self, kind: str, leader: NodeId | None, pick: int) -> None:
        """Propose ``kind`` or, if it does not apply now, another membership change
        that does (chosen by ``pick``), so a random nemesis keeps membership moving."""
        c = self.c
        raw = c.raw(leader) if leader is not None else None
        if raw is None or leader is None:
            return
        options = {k: self._candidates(k, leader) for k in MEMBERSHIP_KINDS}
        usable = [k for k in MEMBERSHIP_KINDS if options[k][0]]
        if not usable:
            c.note("nemesis", f"{kind}: no membership change applies")
            return
        k = kind if kind in usable else usable[pick % len(usable)]
        cands, cc_kind = options[k]
        target = cands[pick % len(cands)]
        try:
            index = raw.propose_conf_change(ConfChange(cc_kind, target))
        except ProposalDropped as exc:
            c.note("nemesis", f"{k} {target} refused: {exc}")
            return
        c.note("nemesis", f"{k}: proposed {cc_kind.name} {target} at {index} via {leader}")
        c.nodes[leader].drain_and_check()

    def _candidates(self, kind: str, leader: NodeId) -> tuple[list[NodeId], ConfChangeKind]:
        """Targets for which ``kind`` is allowed now (see the module docstring)."""
        c = self.c
        conf = c.conf
        spare = len(conf.voters) > len(c.ids) // 2 + 1
        if kind == DEMOTE:
            return (sorted(conf.voters - {leader}) if spare else []), ConfChangeKind.ADD_LEARNER
        if kind == PROMOTE:
            # Only live learners the leader has heard from: promoting a dead one would
            # stall commits until it restarts.
            raw = c.raw(leader)
            assert raw is not None
            progress = raw.status().progress
            live = [x for x in sorted(conf.learners) if c.raw(x) is not None and x in progress]
            return [x for x in live if progress[x].match > 0], ConfChangeKind.ADD_VOTER
        if kind == REMOVE:
            others = sorted(conf.members - {leader})
            return [x for x in others if spare or x not in conf.voters], ConfChangeKind.REMOVE_NODE
        return [x for x in sorted(c.removed) if c.can_readd(x)], ConfChangeKind.ADD_LEARNER
