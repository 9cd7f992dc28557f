"""Raft consensus: a pure core (raft.core), its codec, storage, runtime and simulator.

The public surface of the core is re-exported here; the runtime, storage and
simulator are imported from their subpackages.
"""

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Ready, Restored, Status
from raft.errors import (
    CodecError,
    ConfigError,
    InvariantViolation,
    NotLeader,
    ProposalDropped,
    RaftError,
)
from raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryId,
    EntryKind,
    HardState,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "CodecError",
    "ConfChange",
    "ConfChangeKind",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryId",
    "EntryKind",
    "HardState",
    "InvariantViolation",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Restored",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
]
