"""Value types shared by the Raft core, its codec, storage, runtime and simulator.

Everything here is a frozen, slotted dataclass or an enum: values that cross the
core's boundary (persisted, sent, applied) must never be mutated after they leave.
Node ids are short strings (``"n1"``) because operators name nodes in cluster.toml.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NodeId = str
Term = int
Index = int


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    """Tag of a log entry. New kinds get new numbers; numbers are never reused."""

    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class EntryId:
    """Identifies one entry in any log: Raft's log matching property says two logs that
    hold the same (term, index) hold identical prefixes."""

    term: Term
    index: Index


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``data`` is opaque to the core for NORMAL entries (empty for the
    leader's no-op) and an encoded :class:`ConfChange` for CONF_CHANGE entries."""

    term: Term
    index: Index
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    @property
    def id(self) -> EntryId:
        return EntryId(self.term, self.index)

    @property
    def size(self) -> int:
        """Approximate wire size, used for byte limits on batches and in-flight data."""
        return len(self.data) + 16


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves (§3.8):
    the current term and the vote cast in it. The commit index rides along; it is
    volatile in Raft, so storage may keep an older one on disk (a restarted node
    learns it again)."""

    term: Term = 0
    vote: NodeId | None = None
    commit: Index = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile, observable state: who leads and what role this node plays."""

    leader: NodeId | None
    role: Role


class ConfChangeKind(enum.IntEnum):
    ADD_VOTER = 0  # also promotes an existing learner
    ADD_LEARNER = 1  # also demotes an existing voter
    REMOVE_NODE = 2


_CC_HEADER = struct.Struct(">B")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change (dissertation §4.1)."""

    kind: ConfChangeKind
    node: NodeId

    def encode(self) -> bytes:
        return _CC_HEADER.pack(self.kind) + self.node.encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Inverse of :meth:`encode`; raises ValueError on anything else."""
        if len(data) < 2:
            raise ValueError("conf change too short")
        (kind,) = _CC_HEADER.unpack_from(data)
        return cls(ConfChangeKind(kind), data[1:].decode())


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership: voters decide elections and commits; learners only replicate."""

    voters: frozenset[NodeId] = field(default_factory=frozenset)
    learners: frozenset[NodeId] = field(default_factory=frozenset)

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def apply(self, cc: ConfChange) -> ConfState:
        """The membership after ``cc``. Pure; callers decide whether it is allowed."""
        voters, learners = set(self.voters), set(self.learners)
        voters.discard(cc.node)
        learners.discard(cc.node)
        if cc.kind is ConfChangeKind.ADD_VOTER:
            voters.add(cc.node)
        elif cc.kind is ConfChangeKind.ADD_LEARNER:
            learners.add(cc.node)
        return ConfState(frozenset(voters), frozenset(learners))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot stands in the log, and the membership as of that index."""

    index: Index = 0
    term: Term = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An application state-machine image at ``meta.index``; ``data`` is opaque."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``.
    ``ctx`` is the caller's request id, returned verbatim."""

    index: Index
    ctx: bytes
