"""Raft messages: one frozen, slotted, keyword-only dataclass per kind.

Every message carries ``src``, ``dst`` and ``term``. A message with term 0 is "local"
or term-less (only ``ReadIndex`` forwarded by a follower uses the sender's term like
any other). The codec (raft/codec.py) maps each class to a small integer tag; new
kinds get new tags, so old peers reject them cleanly instead of misreading them.
"""

from __future__ import annotations

from dataclasses import dataclass

from raft.types import Entry, Index, NodeId, SnapshotMeta, Term


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntries:
    """Leader → follower: entries after (prev_term, prev_index), plus the leader's commit."""

    src: NodeId
    dst: NodeId
    term: Term
    prev_index: Index
    prev_term: Term
    entries: tuple[Entry, ...]
    commit: Index


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResp:
    """Follower → leader. On success ``index`` is the last index now known to match.
    On rejection ``index`` echoes the rejected ``prev_index`` and the hint names the
    follower's best guess of where the logs may agree (fast back-off, §5.3 / etcd)."""

    src: NodeId
    dst: NodeId
    term: Term
    index: Index
    reject: bool = False
    hint_index: Index = 0
    hint_term: Term = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVote:
    """Candidate → voter. ``pre_vote`` asks "would you vote?" without bumping terms
    (§9.6); ``transfer`` marks a leadership transfer, which overrides the leader lease."""

    src: NodeId
    dst: NodeId
    term: Term
    last_index: Index
    last_term: Term
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResp:
    src: NodeId
    dst: NodeId
    term: Term
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Leader → follower. ``commit`` is capped at what the follower is known to hold;
    ``ctx`` (non-empty) ties the heartbeat to a pending ReadIndex round."""

    src: NodeId
    dst: NodeId
    term: Term
    commit: Index
    ctx: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResp:
    src: NodeId
    dst: NodeId
    term: Term
    ctx: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshot:
    """Leader → follower: one chunk of a snapshot, ``data`` at byte ``offset``;
    ``done`` marks the last chunk (dissertation §5.1)."""

    src: NodeId
    dst: NodeId
    term: Term
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool
    checksum: int = 0  # CRC-32 of the whole snapshot's data, checked when assembled


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotResp:
    """Follower → leader: the next byte offset wanted for snapshot ``index``, or a
    rejection (the chunk did not continue what the follower holds)."""

    src: NodeId
    dst: NodeId
    term: Term
    index: Index
    offset: int
    reject: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    """Leader → transfer target: campaign now, ignoring election timers."""

    src: NodeId
    dst: NodeId
    term: Term


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndex:
    """Follower → leader: ask for a read index on behalf of a local reader."""

    src: NodeId
    dst: NodeId
    term: Term
    ctx: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResp:
    """Leader → follower: ``index`` is safe to read at once applied; ``index`` 0 with
    ``reject`` means the leader could not serve it (retry elsewhere)."""

    src: NodeId
    dst: NodeId
    term: Term
    ctx: bytes
    index: Index
    reject: bool = False


Message = (
    AppendEntries
    | AppendResp
    | RequestVote
    | VoteResp
    | Heartbeat
    | HeartbeatResp
    | InstallSnapshot
    | SnapshotResp
    | TimeoutNow
    | ReadIndex
    | ReadIndexResp
)

MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendResp,
    RequestVote,
    VoteResp,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    SnapshotResp,
    TimeoutNow,
    ReadIndex,
    ReadIndexResp,
)
