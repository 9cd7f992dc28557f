"""ReadIndex bookkeeping on the leader (dissertation §6.4).

Reads are batched into *rounds*: every read that arrives before the next heartbeat
broadcast joins the same round, which records the commit index at its start. The
round's number travels as the heartbeat ``ctx``; once a majority of voters has
answered a round's heartbeat, the leader knows it was still leader when the round
began, so every read of that round — and of every earlier round — may be served at
the recorded index once applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from raft.types import Index, NodeId


@dataclass(slots=True)
class ReadRequest:
    """A read waiting for a round: ``requester`` is this node or a follower."""

    ctx: bytes
    requester: NodeId


@dataclass(slots=True)
class ReadRound:
    number: int
    index: Index
    requests: list[ReadRequest]
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    __slots__ = ("_next_round", "_rounds", "waiting")

    def __init__(self) -> None:
        self.waiting: list[ReadRequest] = []  # not yet in a round
        self._rounds: list[ReadRound] = []  # in order of number
        self._next_round = 1

    def add(self, ctx: bytes, requester: NodeId) -> None:
        self.waiting.append(ReadRequest(ctx, requester))

    def start_round(self, index: Index, self_id: NodeId) -> ReadRound | None:
        """Move every waiting read into a new round at commit ``index``."""
        if not self.waiting:
            return None
        rnd = ReadRound(self._next_round, index, self.waiting, {self_id})
        self._next_round += 1
        self.waiting = []
        self._rounds.append(rnd)
        return rnd

    def latest_round(self) -> int:
        return self._rounds[-1].number if self._rounds else 0

    def ack(self, number: int, voter: NodeId) -> None:
        """Record that ``voter`` answered heartbeat round ``number``, which vouches for
        every earlier round too (it was sent after them)."""
        for rnd in self._rounds:
            if rnd.number > number:
                break
            rnd.acks.add(voter)

    def release(self, is_quorum: Callable[[set[NodeId]], bool]) -> list[ReadRound]:
        """Pop every round up to the newest one whose acks form a quorum, oldest first."""
        last = -1
        for i, rnd in enumerate(self._rounds):
            if is_quorum(rnd.acks):
                last = i
        if last < 0:
            return []
        done, self._rounds = self._rounds[: last + 1], self._rounds[last + 1 :]
        return done

    def pending(self) -> int:
        return len(self.waiting) + sum(len(r.requests) for r in self._rounds)
