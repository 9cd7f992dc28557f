"""One simulated server: a RawNode, the real DiskStorage over its own simulated disk
(:class:`~raft.storage.simfs.SimFileSystem`), and its Register state machine.

The Ready loop here is the reference use of the core's output contract: persist the
snapshot, entries and hard state (synced when ``must_sync``), then send, then apply,
then serve reads, then ``advance``. Every entry is checked for log matching on its
way to storage, every applied entry for state-machine safety, and every snapshot the
node restores from against the applied history, so a core that hands out something
wrong is caught at the batch that did it.

A crash discards ``raw``, ``sm`` and the storage object (the process's memory) and
keeps the disk, which the cluster may put through a power loss; a restart opens a new
DiskStorage on it, exactly as a process would. A storage error (an injected failing
fsync) stops the node the way the runtime does. ``incarnation`` counts lives, so events
addressed to an earlier life are dropped.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Restored
from raft.describe import describe_snapshot_meta
from raft.messages import Message
from raft.sim import invariants as inv
from raft.sim.workload import PENDING, NodeDown, Op, Register
from raft.storage.base import StorageError
from raft.storage.disk import DiskStorage
from raft.storage.simfs import SimFileSystem, SimulatedCrash
from raft.types import Entry, EntryKind, Index, NodeId, ReadState, Snapshot

if TYPE_CHECKING:
    from raft.sim.cluster import Cluster


class SimNode:
    """One server of the simulated cluster; ``raw`` and ``sm`` are None while down."""

    def __init__(self, cluster: Cluster, nid: NodeId) -> None:
        self.c = cluster
        self.id = nid
        self.fs = SimFileSystem()  # this machine's disk (crash points armed after boot)
        self.path = Path(f"/{nid}/raft")
        self.storage: DiskStorage | None = None  # open while the process runs
        # (path, content before the damage) while the disk carries a media fault.
        self.damaged: tuple[Path, bytes] | None = None
        self.raw: RawNode | None = None
        self.sm: Register | None = None
        self.incarnation = 0
        self.last_snap: Index = 0  # index of the snapshot in storage
        self.writes: dict[Index, list[Op]] = {}  # client writes by proposed index
        self.reads: dict[bytes, Op] = {}  # client reads by ctx, until their ReadState
        self.waiting_reads: list[tuple[Index, Op]] = []  # ReadState seen, not yet applied
        self.unreachable: set[NodeId] = set()  # peers a send failed to reach (sorted on use)
        self.paused_until = 0  # virtual ms; events wait, clients are turned away

    # ---- life cycle --------------------------------------------------------------

    def open_storage(self) -> DiskStorage:
        """What a starting process does first: open the data directory."""
        self.storage = DiskStorage(self.path, self.c.params.segment_bytes, fs=self.fs)
        return self.storage

    def start(self, restored: Restored, rng: random.Random, config: Config) -> None:
        """Come up from ``restored`` alone, as a fresh process would."""
        snap = restored.snapshot
        cfg = replace(config, id=self.id, applied=snap.meta.index)
        self.raw = RawNode(cfg, restored, rng, trace=self.c.core_trace)
        self.incarnation += 1
        self._adopt(snap)
        self.drain_and_check()

    def kill(self) -> None:
        """Lose everything but storage (which the caller may also degrade)."""
        self.raw = None
        self.sm = None
        self.storage = None  # dropped without close, as kill -9 does
        self.paused_until = 0
        self.incarnation += 1
        self.waiting_reads = []
        self.reads = {}
        self.unreachable.clear()
        self.c.ghost.forget_lifetime(self.id)

    # ---- client requests (direct calls: clients sit next to their node) ----------

    def propose(self, op: Op) -> Index:
        if self.raw is None or self.paused_until > self.c.now:
            raise NodeDown(f"{self.id} is down or stalled")
        index = self.raw.propose(op.key)
        op.index, op.node = index, self.id
        self.writes.setdefault(index, []).append(op)
        self.c.trace.add(self.c.now, self.id, f"client {op.client} proposed {op.key!r} at {index}")
        self.drain_and_check()
        return index

    def read(self, op: Op) -> None:
        if self.raw is None or self.paused_until > self.c.now:
            raise NodeDown(f"{self.id} is down or stalled")
        self.raw.read_index(op.key)
        op.node = self.id
        self.reads[op.key] = op
        self.c.trace.add(self.c.now, self.id, f"client {op.client} read {op.key!r}")
        self.drain_and_check()

    # ---- the Ready loop ----------------------------------------------------------

    def drain_and_check(self) -> None:
        """Process every Ready, then check this node's invariants."""
        raw = self.raw
        if raw is None:
            return
        try:
            while True:
                while raw.has_ready():
                    self._handle_ready(raw)
                if not self.unreachable:
                    break
                for peer in sorted(self.unreachable):  # as a transport would report
                    raw.report_unreachable(peer)
                self.unreachable.clear()
            self._maybe_snapshot(raw)
        except StorageError as exc:
            self.c.storage_failed(self.id, exc)  # the process exits, as the runtime's does
            return
        except SimulatedCrash:
            self.c.crash_point(self.id)
            return
        assert self.storage is not None
        inv.check_node(self.c.ghost, raw.status(), raw.term_at, self.storage.last_index)

    def _handle_ready(self, raw: RawNode) -> None:
        c = self.c
        rd = raw.ready()
        c.trace.add(c.now, self.id, "ready", rd)
        if rd.entries:
            prev = raw.term_at(rd.entries[0].index - 1)
            inv.check_appended(c.ghost, self.id, rd.entries, prev)
        assert self.storage is not None
        sync = rd.must_sync and not c.params.fsync_never
        self.storage.save(rd.hard_state, rd.entries, rd.snapshot, sync)
        if rd.snapshot is not None:
            self._adopt(rd.snapshot)
            c.stats["snapshots_installed"] += 1
            c.trace.add(c.now, self.id, "installed", describe_snapshot_meta(rd.snapshot.meta))
        for m in rd.messages:
            self._send(m)
        for e in rd.committed_entries:
            self._apply(e)
        for rs in rd.read_states:
            self._read_state(rs)
        raw.advance(rd)
        if self.waiting_reads:
            self._serve_reads()

    def _send(self, m: Message) -> None:
        c = self.c
        dst = c.nodes.get(m.dst)
        if dst is None:
            raise inv.violation("routing", f"message to unknown node: {m!r}")
        if c.params.report_unreachable and (
            dst.raw is None or (m.src, m.dst) in c.network.cut_links
        ):
            self.unreachable.add(m.dst)
        c.transmit(m, dst.incarnation)

    def _apply(self, e: Entry) -> None:
        inv.check_applied(self.c.ghost, self.id, e)
        assert self.sm is not None
        self.sm.apply(e)
        if e.kind is EntryKind.CONF_CHANGE:
            self.c.conf_applied(e)
        ops = self.writes.pop(e.index, None)
        if ops:
            for op in ops:
                self.c.resolve_write(op, e.data)

    def _adopt(self, snap: Snapshot) -> None:
        """The state machine becomes the snapshot's, which must match history."""
        sm = Register.restore(snap.data)
        index = snap.meta.index
        if sm.applied != index:
            raise inv.violation(
                "snapshot", f"{self.id}: snapshot at {index} holds state as of {sm.applied}"
            )
        inv.check_restored(self.c.ghost, self.id, index, sm.commands)
        self.sm = sm
        self.last_snap = index
        if self.writes:  # writes whose index the snapshot covers: its content decides
            content = dict(sm.commands)
            for i in sorted(i for i in self.writes if i <= index):
                for op in self.writes.pop(i):
                    self.c.resolve_write(op, content.get(i, b""))

    def _maybe_snapshot(self, raw: RawNode) -> None:
        """Every ``snapshot_every`` applied entries, snapshot and compact."""
        sm = self.sm
        assert sm is not None
        if sm.applied - self.last_snap < self.c.params.snapshot_every:
            return
        st = raw.status()
        if st.applied != sm.applied:
            raise inv.violation(
                "applied", f"{self.id}: core applied {st.applied}, state machine {sm.applied}"
            )
        snap = raw.create_snapshot(sm.applied, sm.snapshot_bytes())
        meta = snap.meta
        if meta.index != sm.applied or meta.term != raw.term_at(meta.index) or meta.conf != st.conf:
            raise inv.violation(
                "snapshot", f"{self.id} took {describe_snapshot_meta(meta)} at {sm.applied}"
            )
        assert self.storage is not None
        self.storage.save_snapshot(snap)
        self.last_snap = meta.index
        self.c.stats["snapshots_taken"] += 1
        self.c.trace.add(self.c.now, self.id, "snapshot", describe_snapshot_meta(meta))

    # ---- linearizable reads --------------------------------------------------------

    def _read_state(self, rs: ReadState) -> None:
        op = self.reads.pop(rs.ctx, None)
        if op is not None:
            self.waiting_reads.append((rs.index, op))

    def _serve_reads(self) -> None:
        """Reads whose index the state machine has reached return its state."""
        sm = self.sm
        assert sm is not None
        applied = sm.applied
        ready = [(i, op) for i, op in self.waiting_reads if i <= applied]
        if not ready:
            return
        self.waiting_reads = [(i, op) for i, op in self.waiting_reads if i > applied]
        result = frozenset(d for _, d in sm.commands)
        for i, op in ready:
            if op.outcome == PENDING:
                op.index = i
                self.c.complete_read(op, result)
