"""The seam between consensus and the application: ``Engine`` and ``StateMachine``.

kvstore sees only these protocols, so a second engine (pysyncobj) can stand behind
the same interface. An engine replicates opaque commands, applies each committed one
exactly once per replica to the ``StateMachine`` in log order, and answers
linearizable-read barriers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from raft.types import ConfChange, Index, NodeId, Term


class StateMachine(Protocol):
    """Deterministic replicated state. ``apply`` must depend only on the state and the
    command bytes: every replica applies the same commands in the same order."""

    def apply(self, index: Index, command: bytes) -> object:
        """Apply one committed command; the return value goes to the proposer."""
        ...

    def snapshot(self) -> bytes:
        """The full state as bytes (msgpack; never pickle)."""
        ...

    def snapshot_capture(self) -> Callable[[], bytes]:
        """Freeze the state as of now (the last applied command), cheaply: the engine
        calls this between two applies, on its event loop. The returned encoder is
        called once, in a worker thread, while ``apply`` goes on, and must return what
        :meth:`snapshot` returned at the capture: nothing ``apply`` or ``restore`` does
        afterwards may show in it."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the full state with a snapshot produced by :meth:`snapshot`."""
        ...

    def validate(self, data: bytes, index: Index) -> None:
        """Raise ValueError unless :meth:`restore` would accept ``data`` as the state at
        log ``index``; change nothing. The engine asks before it adopts (or writes) a
        snapshot a leader sent."""
        ...


@dataclass(frozen=True, slots=True)
class EngineStatus:
    id: NodeId
    role: str
    term: Term
    leader: NodeId | None
    commit: Index
    applied: Index
    last_index: Index
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...]
    # Leader only: how far each peer matches (for lag display).
    match: dict[NodeId, Index]


class Engine(Protocol):
    """A running replica, used from asyncio code."""

    async def propose(self, command: bytes, timeout: float) -> object:
        """Replicate ``command``; return what ``StateMachine.apply`` returned for it on
        this node. Raises NotLeader (definitely not applied), ProposalDropped
        (definitely not applied) or TimeoutError (outcome unknown)."""
        ...

    async def read_barrier(self, timeout: float) -> Index:
        """Wait until a linearizable read may be served from the local state machine
        (ReadIndex confirmed by a quorum, and applied up to it); return that index.
        Raises NotLeader or TimeoutError."""
        ...

    async def propose_conf_change(self, cc: ConfChange, timeout: float) -> None:
        """Replicate a single-server membership change; return once this node has
        applied it. Raises NotLeader, ProposalDropped (definitely not applied: e.g.
        another change is still pending) or TimeoutError (outcome unknown)."""
        ...

    def transfer_leader(self, to: NodeId) -> None:
        """Ask this node, if it leads, to hand leadership to voter ``to``. Fire and
        forget: watch :meth:`status` for the outcome (the core abandons a transfer that
        has not finished within an election timeout). Never raises for a node that has
        lost leadership meanwhile, or for a ``to`` that is not another voter."""
        ...

    def status(self) -> EngineStatus: ...
