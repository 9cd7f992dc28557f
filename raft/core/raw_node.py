"""RawNode: the pure Raft core's public driver API.

Theory of operation. A RawNode is a deterministic state machine. The runtime (or the
simulator, or a scenario test) feeds it inputs — ``tick()`` for the passage of time,
``step(msg)`` for a received message, ``propose``/``read_index``/... for local
requests — and pulls output as one :class:`Ready` batch with ``ready()``. It then
persists, sends and applies the batch, in the order the Ready docstring gives, and
calls ``advance(ready)``. Because output is pulled, a runtime can step its whole
inbox, then fsync once for everything (group commit).

Nothing here reads a clock, a socket, a file or a global random generator: time is
ticks, randomness is the injected ``random.Random``, and diagnostics leave through the
injected ``trace`` sink. The same seed and the same inputs give the same outputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from raft.config import Config
from raft.core.raft import Raft
from raft.core.ready import Ready, Restored, Status
from raft.messages import Message
from raft.types import ConfChange, Entry, Index, NodeId, Snapshot, Term

TraceSink = Callable[[str], None]


class RawNode:
    """Thread-unsafe driver of one Raft replica. See the module docstring."""

    def __init__(
        self,
        config: Config,
        restored: Restored,
        rng: random.Random,
        trace: TraceSink | None = None,
        snapshot_check: Callable[[Index, bytes], str | None] | None = None,
    ) -> None:
        """``snapshot_check(index, data)``: the application's verdict on a snapshot at
        ``index`` a leader sent, before anything adopts or writes it (None: accept;
        else the reason)."""
        config.validate()
        self._raft = Raft(config, restored, rng, trace, snapshot_check)
        self._outstanding: Ready | None = None

    # ---- inputs -------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time has passed."""
        self._raft.tick()

    def step(self, msg: Message) -> None:
        """Handle a message from a peer. Stale or odd input is traced and ignored."""
        self._raft.step(msg)

    def propose(self, data: bytes) -> Index:
        """Append ``data`` to the log if this node leads; return its index.

        Raises NotLeader (with a leader hint) or ProposalDropped. A returned index is
        a promise of nothing: the entry is committed only if a later committed entry
        at that index carries this term (watch ``committed_entries``)."""
        return self._raft.propose(data)

    def propose_conf_change(self, cc: ConfChange) -> Index:
        """Propose a single-server membership change (one may be pending at a time)."""
        return self._raft.propose_conf_change(cc)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read; a ReadState with ``ctx`` appears in a later
        Ready once leadership has been confirmed by a quorum. Raises NotLeader when no
        leader is known. ``ctx`` must be unique among outstanding reads."""
        self._raft.read_index(ctx)

    def campaign(self) -> None:
        """Start an election now (pre-vote first, if enabled)."""
        self._raft.campaign()

    def transfer_leader(self, to: NodeId) -> None:
        """Ask the leader to hand leadership to ``to`` once it has caught up."""
        self._raft.transfer_leader(to)

    def create_snapshot(self, index: Index, data: bytes) -> Snapshot:
        """The application's state as of applied ``index`` is ``data``: the core keeps
        it for lagging followers, compacts its in-memory log up to ``index`` (keeping
        ``Config.snapshot_catchup_entries`` entries below it, for followers a little
        behind) and returns the snapshot (with the membership as of ``index``) for the
        runtime to persist with ``Storage.save_snapshot``, which compacts the durable
        log in turn. ``index`` may be below the applied index by now (the runtime
        encodes snapshots while it goes on applying).
        Raises ProposalDropped if ``index`` is not beyond the current snapshot or a
        received snapshot is still being persisted."""
        return self._raft.create_snapshot(index, data)

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport failed to deliver to ``peer``: stop pipelining, probe."""
        self._raft.report_unreachable(peer)

    # ---- output -------------------------------------------------------------------

    def has_ready(self) -> bool:
        return self._raft.has_ready()

    def ready(self) -> Ready:
        """The pending batch. Must be followed by ``advance`` before the next call."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called twice without advance()")
        rd = self._raft.ready()
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that ``rd`` was persisted, sent and applied."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        self._raft.advance(rd)

    def status(self) -> Status:
        return self._raft.status()

    def entries(self, lo: Index, hi: Index) -> tuple[Entry, ...]:
        """Log entries with ``lo <= index < hi`` still held in memory (stable or not).
        Raises ValueError if ``lo`` is compacted away or ``hi`` is past the end."""
        return self._raft.log.slice(lo, hi)

    def term_at(self, index: Index) -> Term | None:
        """Term of the entry at ``index``, or None if compacted or past the end."""
        return self._raft.log.term_or_none(index)
