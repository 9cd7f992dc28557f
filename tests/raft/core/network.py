"""A tiny synchronous in-memory network of RawNodes (etcd's raft_test.go ``network``).

Why a helper of our own rather than raft/sim: paper tests must pin one exact
interleaving and inspect every Ready, so delivery here is FIFO, instantaneous and
fully under the test's control. The Ready contract is honoured on every batch:
persist (tracked in :class:`Disk`), then hand out messages, then apply, then advance.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Ready, Restored
from raft.messages import Message
from raft.types import Entry, EntryKind, HardState, NodeId, ReadState, Role, Snapshot

MsgPredicate = Callable[[Message], bool]


def ids(n: int) -> list[NodeId]:
    """``["n1", ..., "nN"]``: the node ids used throughout the core tests."""
    return [f"n{i}" for i in range(1, n + 1)]


@dataclass
class Disk:
    """What one node has made durable, exactly as a runtime following Ready would."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    applied: int = 0

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = [e for e in self.entries if e.index > rd.snapshot.meta.index]
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def restored(self) -> Restored:
        return Restored(self.hard_state, self.snapshot, tuple(self.entries))


class Network:
    """Nodes keyed by id; messages travel FIFO, synchronously, until quiet."""

    def __init__(
        self,
        voters: Iterable[NodeId],
        learners: Iterable[NodeId] = (),
        *,
        seed: int = 1,
        **config: object,
    ) -> None:
        self.voters = frozenset(voters)
        self.learners = frozenset(learners)
        self.config = config
        self.seed = seed
        self.nodes: dict[NodeId, RawNode] = {}
        self.disks: dict[NodeId, Disk] = {}
        self.trace: list[str] = []
        self.delivered: list[Message] = []  # every message that reached its recipient
        self.dropped: list[Message] = []
        self.readies: list[tuple[NodeId, Ready]] = []
        self.applied: dict[NodeId, list[Entry]] = {}
        self.read_states: dict[NodeId, list[ReadState]] = {}
        self.queue: deque[Message] = deque()
        self._cut: set[frozenset[NodeId]] = set()
        self._isolated: set[NodeId] = set()
        self._drops: list[MsgPredicate] = []
        boot = Restored.bootstrap(self.voters, self.learners)
        for n in sorted(self.voters | self.learners):
            self.disks[n] = Disk(boot.hard_state, boot.snapshot, list(boot.entries))
            self.start(n)
        self.send()  # apply the bootstrap membership entries

    # ---- membership of the test network -------------------------------------------

    def start(self, node: NodeId, **overrides: object) -> RawNode:
        """(Re)start ``node`` from its disk, as a runtime would after a crash."""
        disk = self.disks.setdefault(node, Disk())
        cfg = Config(id=node, applied=disk.applied, **{**self.config, **overrides})  # type: ignore[arg-type]
        rng = random.Random(f"{self.seed}-{node}-{len(self.trace)}")
        self.nodes[node] = RawNode(cfg, disk.restored(), rng, self.trace.append)
        self.applied.setdefault(node, [])
        self.read_states.setdefault(node, [])
        return self.nodes[node]

    def rewrite(
        self, node: NodeId, extra_terms: Iterable[int], term: int, vote: NodeId | None = None
    ) -> RawNode:
        """Restart ``node`` with the bootstrap log plus uncommitted entries of the given
        terms and hard state (``term``, ``vote``): how paper tests build Figure 7/8 logs."""
        disk = self.disks[node]
        boot = [e for e in disk.entries if e.term == 1 and e.kind is EntryKind.CONF_CHANGE]
        extra = [Entry(t, len(boot) + i) for i, t in enumerate(extra_terms, 1)]
        disk.entries = boot + extra
        disk.hard_state = HardState(term=term, vote=vote, commit=len(boot))
        self.start(node)
        self.send()
        return self.nodes[node]

    def create_snapshot(self, node: NodeId, index: int, data: bytes) -> Snapshot:
        """Snapshot the application at ``index``: the runtime persists it, then the core
        compacts its log (RawNode.create_snapshot's contract)."""
        self.nodes[node].create_snapshot(index, data)
        snap = self.nodes[node]._raft.log.snapshot
        disk = self.disks[node]
        disk.snapshot = snap
        disk.entries = [e for e in disk.entries if e.index > index]
        return snap

    def crash(self, node: NodeId) -> None:
        """Lose everything volatile: only ``disks[node]`` survives."""
        del self.nodes[node]
        self.queue = deque(m for m in self.queue if m.dst != node)

    # ---- faults -------------------------------------------------------------------

    def cut(self, a: NodeId, b: NodeId) -> None:
        self._cut.add(frozenset((a, b)))

    def isolate(self, node: NodeId) -> None:
        self._isolated.add(node)

    def drop(self, pred: MsgPredicate) -> None:
        self._drops.append(pred)

    def recover(self) -> None:
        self._cut.clear()
        self._isolated.clear()
        self._drops.clear()

    def _blocked(self, m: Message) -> bool:
        return (
            m.dst not in self.nodes
            or frozenset((m.src, m.dst)) in self._cut
            or m.src in self._isolated
            or m.dst in self._isolated
            or any(p(m) for p in self._drops)
        )

    # ---- driving ------------------------------------------------------------------

    def process_ready(self, node: NodeId) -> Ready:
        """Persist, send, apply, advance: one turn of the Ready loop."""
        rn = self.nodes[node]
        rd = rn.ready()
        self.readies.append((node, rd))
        disk = self.disks[node]
        disk.save(rd)
        self.queue.extend(rd.messages)
        for e in rd.committed_entries:
            if e.index > disk.applied:
                self.applied[node].append(e)
                disk.applied = e.index
        if rd.snapshot is not None:
            disk.applied = max(disk.applied, rd.snapshot.meta.index)
        self.read_states[node].extend(rd.read_states)
        rn.advance(rd)
        return rd

    def send(self, msgs: Iterable[Message] = (), max_steps: int = 10_000) -> None:
        """Deliver ``msgs`` and everything they cause, draining Readies, until quiet."""
        self.queue.extend(msgs)
        for _ in range(max_steps):
            busy = [n for n in sorted(self.nodes) if self.nodes[n].has_ready()]
            for n in busy:
                self.process_ready(n)
            if not self.queue:
                if not busy:
                    return
                continue
            m = self.queue.popleft()
            if self._blocked(m):
                self.dropped.append(m)
                continue
            self.delivered.append(m)
            self.nodes[m.dst].step(m)
        raise AssertionError(f"network did not quiesce within {max_steps} steps")

    stabilize = send

    def tick(self, nodes: Iterable[NodeId] | None = None, n: int = 1) -> None:
        """Tick ``nodes`` (default: all) ``n`` times, stabilizing after each tick."""
        for _ in range(n):
            for node in sorted(self.nodes if nodes is None else nodes):
                self.nodes[node].tick()
            self.send()

    def tick_until(
        self,
        predicate: Callable[[], bool],
        max_ticks: int,
        nodes: Iterable[NodeId] | None = None,
    ) -> int:
        """Tick until ``predicate`` holds; returns the ticks taken, fails past the bound."""
        chosen = None if nodes is None else list(nodes)
        for i in range(max_ticks + 1):
            if predicate():
                return i
            if i < max_ticks:
                self.tick(chosen)
        raise AssertionError(f"predicate still false after {max_ticks} ticks")

    def elect(self, node: NodeId) -> None:
        """Make ``node`` leader by campaigning and letting the network settle."""
        self.nodes[node].campaign()
        self.send()
        assert self.role(node) is Role.LEADER, self.trace[-5:]

    # ---- observation --------------------------------------------------------------

    def role(self, node: NodeId) -> Role:
        return self.nodes[node].status().role

    def term(self, node: NodeId) -> int:
        return self.nodes[node].status().term

    def commit(self, node: NodeId) -> int:
        return self.nodes[node].status().commit

    def leaders(self) -> list[NodeId]:
        return sorted(n for n, rn in self.nodes.items() if rn.status().role is Role.LEADER)

    def sent_of(self, kind: type, **fields: object) -> list[Message]:
        """Delivered messages of ``kind`` whose attributes equal ``fields``."""
        return [
            m
            for m in self.delivered
            if isinstance(m, kind) and all(getattr(m, k) == v for k, v in fields.items())
        ]

    def log(self, node: NodeId) -> list[tuple[int, int]]:
        """(term, index) pairs of the node's in-memory log."""
        st = self.nodes[node].status()
        entries = self.nodes[node].entries(st.first_index, st.last_index + 1)
        return [(e.term, e.index) for e in entries]


def with_term(m: Message, term: int) -> Message:
    return replace(m, term=term)
