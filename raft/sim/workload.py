"""The simulated application: a replicated log of client commands, and its clients.

The state machine (:class:`Register`) is the list of applied commands with their log
indices. That is the simplest state from which every safety question about the
client's view can be answered exactly: "was my write applied, once, where?" and
"does this read contain everything acknowledged before it began?". Snapshots are
msgpack (never pickle): a snapshot is data that crosses the network.

Clients follow Maelstrom's error model. A write that never got an index, or whose
index ended up holding different data, *definitely* did not happen (``fail``); a
write that timed out *may* have happened (``info``) and is never retried with the
same value, so a value can legitimately appear at most once in the log.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from raft.errors import InvariantViolation, ProposalDropped
from raft.types import Entry, EntryKind, Index, NodeId

OK, FAIL, INFO, PENDING = "ok", "fail", "info", "pending"


class NodeDown(ProposalDropped):
    """The client could not reach the node at all (it is crashed or removed)."""


class Register:
    """Deterministic state machine: ``commands`` are the (index, data) of every
    applied NORMAL entry with non-empty data, in log order."""

    __slots__ = ("applied", "commands")

    def __init__(self, applied: Index = 0, commands: list[tuple[Index, bytes]] | None = None):
        self.applied = applied
        self.commands: list[tuple[Index, bytes]] = commands if commands is not None else []

    def apply(self, entry: Entry) -> None:
        if entry.index != self.applied + 1:
            raise InvariantViolation(f"apply gap: entry {entry.index} applied after {self.applied}")
        self.applied = entry.index
        if entry.kind is EntryKind.NORMAL and entry.data:
            self.commands.append((entry.index, entry.data))

    def snapshot_bytes(self) -> bytes:
        return msgpack.packb([self.applied, self.commands], use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def restore(cls, data: bytes) -> Register:
        """Inverse of :meth:`snapshot_bytes`; empty data is the empty state."""
        if not data:
            return cls()
        applied, commands = msgpack.unpackb(data, raw=False, use_list=True)
        return cls(applied, [(int(i), bytes(c)) for i, c in commands])


@dataclass(slots=True)
class Op:
    """One client operation, as the client saw it: the history the checks judge."""

    client: int
    kind: str  # "write" | "read"
    key: bytes  # the command (write) or the read ctx (read)
    invoke: int
    deadline: int
    node: NodeId = ""
    outcome: str = PENDING
    complete: int = -1
    index: Index = 0
    acked_before: int = 0  # writes: max acked index at invoke; reads: len(acked) at invoke


@dataclass(slots=True)
class History:
    """Every op, the acknowledged writes in ack order, and every value ever proposed."""

    ops: list[Op] = field(default_factory=list)
    acked: list[Op] = field(default_factory=list)
    proposed: set[bytes] = field(default_factory=set)
    max_acked_index: Index = 0

    def pending(self) -> list[Op]:
        return [op for op in self.ops if op.outcome == PENDING]


class ClientHost(Protocol):
    """What a client needs from the cluster: direct (network-free) calls to a node."""

    node_ids: list[NodeId]
    now: int

    def client_propose(self, node: NodeId, op: Op) -> Index: ...

    def client_read(self, node: NodeId, op: Op) -> None: ...

    def wake(self, client: Client, at: int) -> None: ...


@dataclass(slots=True)
class ClientConfig:
    timeout_ms: int = 2000
    think_ms: tuple[int, int] = (0, 40)
    backoff_ms: tuple[int, int] = (5, 30)
    write_ratio: float = 0.6


class Client:
    """A closed-loop client: one op at a time, following leader hints."""

    def __init__(
        self,
        cid: int,
        rng: random.Random,
        history: History,
        config: ClientConfig,
        on_complete: Callable[[Op], None],
    ) -> None:
        self.cid = cid
        self.rng = rng
        self.history = history
        self.config = config
        self.on_complete = on_complete
        self.leader_guess: NodeId | None = None
        self.current: Op | None = None
        self.seq = 0
        self.stopped = False  # no new ops (the fault phase is over, or a probe succeeded)

    # ---- driven by the cluster -------------------------------------------------

    def wake(self, host: ClientHost) -> None:
        """Time passed: time out, retry, or start the next op. Idempotent."""
        op = self.current
        now = host.now
        if op is not None:
            if op.outcome != PENDING:
                self.current = None
            elif now >= op.deadline:
                self.finish(host, op, INFO if op.node else FAIL)
                return
            elif not op.node:
                self._attempt(host, op)
                return
            else:
                return
        if self.stopped:
            return
        self._start(host)

    def finish(self, host: ClientHost, op: Op, outcome: str) -> None:
        """Record the outcome (called by the cluster for ok/fail, by wake for info)."""
        if op.outcome != PENDING:
            return
        op.outcome = outcome
        op.complete = host.now
        self.on_complete(op)
        if self.current is op:
            self.current = None
            lo, hi = self.config.think_ms
            host.wake(self, host.now + self.rng.randint(lo, hi))

    # ---- internals ---------------------------------------------------------------

    def _start(self, host: ClientHost) -> None:
        self.seq += 1
        now = host.now
        h = self.history
        deadline = now + self.config.timeout_ms
        if self.rng.random() < self.config.write_ratio:
            key = f"c{self.cid}:{self.seq}:{self.rng.getrandbits(32):08x}".encode()
            op = Op(self.cid, "write", key, now, deadline, acked_before=h.max_acked_index)
        else:
            key = f"r{self.cid}:{self.seq}".encode()
            op = Op(self.cid, "read", key, now, deadline, acked_before=len(h.acked))
        h.ops.append(op)
        self.current = op
        host.wake(self, deadline)
        self._attempt(host, op)

    def _pick_node(self, host: ClientHost) -> NodeId:
        if self.leader_guess is not None and self.rng.random() < 0.85:
            return self.leader_guess
        return self.rng.choice(host.node_ids)

    def _attempt(self, host: ClientHost, op: Op) -> None:
        """Send ``op`` to a node; a definite refusal retries after a short backoff."""
        node = self._pick_node(host)
        try:
            if op.kind == "write":
                self.history.proposed.add(op.key)
                op.index = host.client_propose(node, op)
            else:
                host.client_read(node, op)
        except ProposalDropped as exc:
            hint = getattr(exc, "leader", None)
            self.leader_guess = hint if hint is not None and hint != node else None
            lo, hi = self.config.backoff_ms
            host.wake(self, host.now + self.rng.randint(lo, hi))
            return
        op.node = node
        self.leader_guess = node
