"""Configuration of one Raft node. Timeouts are in ticks: the core has no clock."""

from __future__ import annotations

from dataclasses import dataclass

from raft.errors import ConfigError
from raft.types import Index, NodeId


@dataclass(frozen=True, slots=True)
class Config:
    """Knobs of the core, validated once by :meth:`validate`.

    ``election_ticks`` is the base election timeout; each term a follower waits a
    random timeout in ``[election_ticks, 2 * election_ticks)`` (§3.4). ``applied`` is
    the index the application's state already reflects when the node (re)starts.

    ``snapshot_catchup_entries`` is how many entries before a local snapshot's index
    ``create_snapshot`` keeps in memory (etcd's ``SnapshotCatchUpEntries``): a follower
    that lags by fewer is caught up by appends instead of the whole snapshot. 0 compacts
    right up to the snapshot (the simulator relies on that to stream snapshots often);
    the store sets its own default (kvstore ``[raft] snapshot_catchup_entries``).
    """

    id: NodeId
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_entries: int = 64
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 32 << 20
    max_uncommitted_bytes: int = 64 << 20
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_catchup_entries: int = 0
    applied: Index = 0

    def validate(self) -> None:
        if not self.id:
            raise ConfigError("id must be a non-empty string")
        if self.heartbeat_ticks < 1:
            raise ConfigError("heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks must be greater than heartbeat_ticks")
        for name in (
            "max_msg_entries",
            "max_msg_bytes",
            "max_inflight_msgs",
            "max_inflight_bytes",
            "max_uncommitted_bytes",
            "snapshot_chunk_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.snapshot_catchup_entries < 0:
            raise ConfigError("snapshot_catchup_entries must be >= 0")
        if self.applied < 0:
            raise ConfigError("applied must be >= 0")
