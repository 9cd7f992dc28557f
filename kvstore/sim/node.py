"""One simulated server: the real node composition over a simulated machine.

What runs is what ``kv node`` runs (kvstore/node.py): a :class:`RaftEngine` over
:class:`DiskStorage`, a :class:`KVStateMachine`, and the :class:`ClientServer` with its
lessor, minus the sockets. Around it, the machine: a disk (:class:`SimFileSystem`)
whose fsyncs take a varying time, a clock (:class:`NodeClock`), and a network port
(:class:`SimTransport`). A crash is kill -9 (``RaftEngine.abort``: the storage object is
abandoned, the page cache survives) or a power loss (unsynced data goes as the disk
model allows); a restart opens the same disk afresh, as a new process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvstore.protocol import Limits
from kvstore.server import ClientServer
from kvstore.sim.checker import Violation
from kvstore.sim.loop import WORK_OWNER
from kvstore.state_machine import KVStateMachine, Result
from raft.config import Config
from raft.messages import Message
from raft.runtime.node import RaftEngine
from raft.storage.disk import DiskStorage
from raft.storage.simfs import SimFileSystem
from raft.types import Index, NodeId

if TYPE_CHECKING:
    from kvstore.sim.cluster import KVSim

__all__ = ["NodeClock", "SimKVNode"]


class NodeClock:
    """A machine's clocks on the simulation's true time ``now()``: a monotonic clock
    with an arbitrary origin and a rate error (drift, at most 1%), and a wall clock
    that follows it at an offset which steps (NTP, an operator) forwards or backwards.
    The monotonic clock never steps."""

    def __init__(self, now: Callable[[], float], origin: float, wall_offset: float) -> None:
        self._now = now
        self._t0 = now()
        self._m0 = origin
        self.drift = 0.0
        self.wall_offset = wall_offset

    def mono(self) -> float:
        return self._m0 + (self._now() - self._t0) * (1 + self.drift)

    def wall(self) -> float:
        return self.mono() + self.wall_offset

    def shift(self, seconds: float) -> None:
        """Both clocks read ``seconds`` later (a machine set an hour ahead, say)."""
        self._m0 += seconds

    def set_drift(self, drift: float) -> None:
        if abs(drift) > 0.01:
            raise ValueError("drift beyond 1% is outside the model")
        self._m0, self._t0 = self.mono(), self._now()
        self.drift = drift


class CheckedKV(KVStateMachine):
    """The real state machine, reporting every apply to the checker."""

    def __init__(self, on_apply: Callable[[Index, bytes, Result], None], **kw: Any) -> None:
        super().__init__(**kw)
        self._on_apply = on_apply

    def apply(self, index: Index, command: bytes) -> Result:
        result = super().apply(index, command)
        self._on_apply(index, command, result)
        return result


class SimTransport:
    """The engine's transport: hands every message to the simulated network."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        self._send = send

    def send(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self._send(m)


class _Process:
    """One life of a node, as the owner of the work it hands to the executor."""

    def __init__(self, node: SimKVNode, life: int) -> None:
        self._node = node
        self._life = life

    def alive(self) -> bool:
        return self._node.alive and self._node.life == self._life

    def work_delay(self) -> float:
        return self._node.disk_latency()


class SimKVNode:
    """One server and its machine; ``engine``/``server``/``sm`` belong to the current
    life and are None before the first start."""

    def __init__(self, sim: KVSim, nid: NodeId, rng: random.Random) -> None:
        self.sim = sim
        self.id = nid
        self.rng = rng
        self.fs = SimFileSystem()
        self.path = Path(f"/{nid}/raft")
        p = sim.params
        self.clock = NodeClock(
            sim.loop.time, rng.uniform(0, 1e6) + p.mono_origin, rng.uniform(-60, 60)
        )
        self.alive = False
        self.life = 0
        self.stall_until = 0.0  # true time until which its disk is slow
        self.engine: RaftEngine | None = None
        self.server: ClientServer | None = None
        self.sm: CheckedKV | None = None
        # Client requests being served here (a dict: cancelled in a fixed order).
        self.inflight: dict[asyncio.Task[Any], None] = {}

    # ---- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Boot a process on this machine's disk (a new life)."""
        self.life += 1
        ctx = contextvars.copy_context()
        ctx.run(WORK_OWNER.set, _Process(self, self.life))
        ctx.run(self._boot)

    def _boot(self) -> None:
        sim, p = self.sim, self.sim.params
        storage = DiskStorage(self.path, fs=self.fs)
        life = self.life
        self.sm = CheckedKV(
            lambda i, c, r: sim.checker.on_apply(self.id, life, i, c, r),
            max_sessions=p.max_sessions,
            history_limit=p.history_limit,
        )
        # The core counts ticks; a fast clock ticks more often (drift moves timers).
        tick = p.tick_s / (1 + self.clock.drift)
        self.engine = RaftEngine(
            config=Config(
                id=self.id,
                election_ticks=p.election_ticks,
                snapshot_catchup_entries=p.catchup_entries,
            ),
            storage=storage,
            state_machine=self.sm,
            bootstrap_voters=frozenset(sim.ids),
            tick_seconds=tick,
            snapshot_threshold=p.snapshot_threshold,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        self.engine.attach(SimTransport(sim.network_send))
        self.engine.start()
        self.server = ClientServer(
            self.engine,
            self.sm,
            self.id,
            {},
            Limits(),
            sim.lessor_clock(self),
            election_timeout=p.election_timeout_s,
            request_timeout=p.request_timeout_s,
            **({} if p.quota_bytes is None else {"quota_bytes": p.quota_bytes}),
        )
        self.server.start_timers()
        self.alive = True
        asyncio.get_running_loop().create_task(self._watch_loop(self.engine, life))

    async def _watch_loop(self, engine: RaftEngine, life: int) -> None:
        """One input never ends the Raft loop (issue 9, item 3): only a crash may."""
        exc = await engine.wait_failed()
        if self.alive and self.life == life:
            with contextlib.suppress(Violation):  # recorded: the run stops on it
                self.sim.checker.fail("raft-loop-died", f"{self.id}: the Raft loop ended: {exc!r}")

    def crash(self, power_loss: bool) -> None:
        """kill -9, and maybe a power loss: only what the disk kept survives."""
        assert self.engine is not None and self.server is not None
        self.alive = False
        self.engine.abort()
        self.server.stop_timers()
        for task in list(self.inflight):
            task.cancel()
        self.inflight.clear()
        if power_loss:
            self.fs.power_loss(self.rng)

    # ---- the disk -------------------------------------------------------------------

    def disk_latency(self) -> float:
        """Seconds one storage call takes: a few milliseconds, or, while the disk is
        stalled, until the stall ends (stalls outlast a client's request timeout, so
        callers give up while the node waits on fsync)."""
        stalled = max(0.0, self.stall_until - self.sim.loop.time())
        return stalled + self.rng.uniform(0.0002, 0.004)

    @property
    def role(self) -> str | None:
        if not self.alive or self.engine is None:
            return None
        return self.engine.status().role

    @property
    def term(self) -> int:
        return 0 if self.engine is None or not self.alive else self.engine.status().term
