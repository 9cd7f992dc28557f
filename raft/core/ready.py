"""The values that cross the core's boundary: what it was restored from, what it hands
out in one batch, and what it reports about itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from raft.messages import Message
from raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SoftState,
    Term,
)


@dataclass(frozen=True, slots=True)
class Restored:
    """What the runtime recovered from durable storage: the hard state, the latest
    snapshot (its ``meta.conf`` is the membership as of ``meta.index``) and the log
    entries after it. The core keeps this log in memory and never reads storage."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: tuple[Entry, ...] = ()

    @classmethod
    def bootstrap(
        cls, voters: frozenset[NodeId] | set[NodeId], learners: frozenset[NodeId] = frozenset()
    ) -> Restored:
        """A founding member of a new cluster. Like etcd, the initial membership is
        written as committed conf-change entries at term 1 (identical on every
        founder), so a node added later learns it by plain log replication."""
        changes = [ConfChange(ConfChangeKind.ADD_VOTER, n) for n in sorted(voters)]
        changes += [ConfChange(ConfChangeKind.ADD_LEARNER, n) for n in sorted(learners)]
        entries = tuple(
            Entry(1, i, EntryKind.CONF_CHANGE, cc.encode()) for i, cc in enumerate(changes, 1)
        )
        return cls(hard_state=HardState(term=1, commit=len(entries)), entries=entries)


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of output. The contract, in this order:

    1. If ``snapshot`` is set, persist it (and discard the log it covers) and restore the
       state machine from it.
    2. Append ``entries`` to the durable log, first truncating anything at or after
       ``entries[0].index``; persist ``hard_state`` if set. When ``must_sync`` is true,
       fsync before going on: term, vote and log must be durable before any message
       that depends on them leaves (dissertation §3.8).
    3. Only then send ``messages``.
    4. Apply ``committed_entries`` in order; serve ``read_states`` once the applied
       index reaches their index.
    5. Call ``RawNode.advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False

    def is_empty(self) -> bool:
        return not (
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.committed_entries
            or self.read_states
        )


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: Index
    next: Index
    state: str
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    """A read-only view for operators, tests and invariant checks."""

    id: NodeId
    role: Role
    term: Term
    vote: NodeId | None
    leader: NodeId | None
    commit: Index
    applied: Index
    first_index: Index
    last_index: Index
    conf: ConfState
    progress: dict[NodeId, PeerStatus]
    lead_transferee: NodeId | None = None
