"""TEST DOUBLE: an ``Engine`` that is one replica with no Raft at all.

``LocalEngine`` applies each proposal straight to a real state machine, so the client
server and client library can be tested over real sockets without a cluster. It gives
no replication, durability or fault tolerance; never use it outside tests.

Knobs for fault injection: ``leader`` (another id makes every write and linearizable
read raise NotLeader, None means no leader known), ``drop_responses`` (apply the next
N proposals, then raise TimeoutError as if their response had been lost: the server
answers TIMEOUT and the client must retry the same seq), ``delay`` (seconds to wait
before applying each proposal; ``delays`` overrides it for the next proposals, one
entry each), ``term`` (bump it to play an election this node won) and ``proposals``,
the count of proposals applied.
"""

from __future__ import annotations

import asyncio

from raft.engine import EngineStatus, StateMachine
from raft.errors import NotLeader
from raft.types import Index, NodeId


class LocalEngine:
    def __init__(self, state_machine: StateMachine, node_id: NodeId = "n1") -> None:
        self.sm = state_machine
        self.id = node_id
        self.leader: NodeId | None = node_id
        self.drop_responses = 0
        self.delay = 0.0
        self.delays: list[float] = []
        self.proposals = 0
        self.term = 1  # bump it to play a new election this node won
        self._index: Index = 0

    def _check_leader(self) -> None:
        if self.leader != self.id:
            raise NotLeader(self.leader)

    async def propose(self, command: bytes, timeout: float) -> object:
        self._check_leader()
        delay = self.delays.pop(0) if self.delays else self.delay
        if delay:
            await asyncio.sleep(delay)
        self._index += 1
        self.proposals += 1
        result = self.sm.apply(self._index, command)
        if self.drop_responses > 0:
            self.drop_responses -= 1
            raise TimeoutError("test double: response dropped after applying")
        return result

    async def read_barrier(self, timeout: float) -> Index:
        self._check_leader()
        return self._index

    def status(self) -> EngineStatus:
        is_leader = self.leader == self.id
        return EngineStatus(
            id=self.id,
            role="leader" if is_leader else "follower",
            term=self.term,
            leader=self.leader,
            commit=self._index,
            applied=self._index,
            last_index=self._index,
            voters=(self.id,),
            learners=(),
            match={},
        )
