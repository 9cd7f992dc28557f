"""The leader's view of one follower: how far it matches and how to send it more.

States (etcd's design, see its design.md): PROBE sends one append per heartbeat
interval until the follower's position is known; REPLICATE pipelines appends,
bounded by :class:`Inflights`; SNAPSHOT stops appends while a snapshot is streamed.
Progress owns its transitions, so the rules live in one place.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from raft.types import Index


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Inflights:
    """Append messages sent but not yet acknowledged, bounded by count and bytes so a
    slow follower cannot make the leader buffer without limit."""

    max_count: int
    max_bytes: int
    _items: deque[tuple[Index, int]] = field(default_factory=deque)
    _bytes: int = 0

    def add(self, last_index: Index, size: int) -> None:
        self._items.append((last_index, size))
        self._bytes += size

    def free_le(self, index: Index) -> None:
        """Forget every message whose last entry is at or below ``index`` (acked)."""
        while self._items and self._items[0][0] <= index:
            _, size = self._items.popleft()
            self._bytes -= size

    def free_first(self) -> None:
        """Forget the oldest message; after a heartbeat round trip it was likely lost."""
        if self._items:
            _, size = self._items.popleft()
            self._bytes -= size

    def reset(self) -> None:
        self._items.clear()
        self._bytes = 0

    def full(self) -> bool:
        return len(self._items) >= self.max_count or self._bytes >= self.max_bytes

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class Progress:
    """Invariant: 0 <= match < next."""

    match: Index
    next: Index
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    # PROBE: an append is outstanding; wait for a reply or the next heartbeat.
    probe_sent: bool = False
    # SNAPSHOT: index of the snapshot being streamed and the next byte to send.
    pending_snapshot: Index = 0
    snapshot_offset: int = 0
    # Heard from since the last check-quorum round.
    recent_active: bool = False

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        """Restart from what is known to match (or just past a finished snapshot)."""
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: Index) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: Index) -> bool:
        """The follower acked up to ``index``; False when the ack is stale."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: Index | None, size: int) -> None:
        """Record an append just sent (``last_index`` None for an empty probe)."""
        if self.state is ProgressState.REPLICATE and last_index is not None:
            self.next = last_index + 1
            self.inflights.add(last_index, size)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: Index, match_hint: Index) -> bool:
        """The follower rejected an append at ``rejected``; back ``next`` off using the
        follower's hint. False when the rejection is stale (it answers an older probe)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if rejected <= self.match:
            # The follower no longer holds an entry it acknowledged: its disk lost
            # durable data (outside Raft's fault model). Stalling at match + 1 would
            # help nobody; believe its log and re-probe from there. Lowering match
            # only un-counts a replica: it never un-commits anything.
            self.match = min(match_hint, rejected - 1)
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader should hold appends to this follower for now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
