"""RaftEngine: the asyncio runtime that drives one RawNode with real time, disk and TCP.

Theory of operation
-------------------
One task (``_run``) owns the RawNode; nothing else touches it. Every input — a tick
from the ticker, a message from the transport, a proposal or read from a client
handler — is queued as a small closure and the task is woken. The task then:

1. runs every queued input against the core (``tick``/``step``/``propose``/...);
2. while the core has a Ready: persists its snapshot, entries and hard state in a
   worker thread (one fsync for the whole batch when ``must_sync``), *then* hands its
   messages to the transport, applies committed entries to the state machine,
   resolves waiting proposals and reads, and calls ``advance``;
3. takes a state-machine snapshot when enough entries were applied since the last.

While step 2 waits for the disk, the event loop keeps accepting requests and peer
messages; they queue up and go into the next Ready together. That is group commit:
the fsync rate, not the request rate, bounds the number of fsyncs.

Snapshots stay off the event loop. Encoding a large state takes seconds, longer than
an election timeout, so step 3 only *captures* the state (``snapshot_capture``: a
cheap freeze at exactly the applied index) and hands the encoder to a worker thread.
The loop goes on applying meanwhile. When the bytes are ready the task wakes, gives
them to the core (``create_snapshot``, which compacts the in-memory log, keeping
``snapshot_catchup_entries`` below the snapshot) and persists them before the next
Ready. One snapshot at a time; one overtaken by a leader's snapshot is dropped.

A proposal resolves when the entry at its index is applied: with the state
machine's result if the entry carries the proposal's term, with ProposalDropped if
another entry took that index (it certainly was not applied). A caller that gives up
waiting gets TimeoutError: the outcome is then unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
from collections.abc import Callable, Iterable
from typing import Protocol

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Ready, Restored
from raft.engine import EngineStatus, StateMachine
from raft.errors import ProposalDropped, RaftError
from raft.messages import Message
from raft.storage.base import Storage
from raft.types import ConfChange, EntryKind, Index, NodeId, Term

log = logging.getLogger(__name__)

Input = Callable[[], None]


class Transport(Protocol):
    def send(self, msgs: Iterable[Message]) -> None: ...


class RaftEngine:
    """A Raft replica implementing :class:`raft.engine.Engine`."""

    def __init__(
        self,
        *,
        config: Config,
        storage: Storage,
        state_machine: StateMachine,
        bootstrap_voters: frozenset[NodeId] | None,
        tick_seconds: float,
        snapshot_threshold: int,
        sync_writes: bool = True,
        rng: random.Random | None = None,
        unsafe_local_reads: bool = False,
    ) -> None:
        """``unsafe_local_reads`` deliberately breaks linearizability (reads skip
        ReadIndex and may be stale); it exists only so the fault-injection harness can
        prove it catches stale reads."""
        self.id = config.id
        self._config = config
        self._storage = storage
        self._sm = state_machine
        self._bootstrap_voters = bootstrap_voters
        self._tick_seconds = tick_seconds
        self._snapshot_threshold = snapshot_threshold
        self._sync_writes = sync_writes
        self._rng = rng or random.Random()
        self._unsafe_local_reads = unsafe_local_reads
        self._transport: Transport | None = None
        self._node: RawNode | None = None
        self._inputs: list[Input] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._proposals: dict[Index, tuple[Term, asyncio.Future[object]]] = {}
        self._read_waiters: dict[bytes, asyncio.Future[Index]] = {}
        self._reads_ready: list[tuple[Index, asyncio.Future[Index]]] = []
        # Read contexts are unique across incarnations: a random per-process prefix,
        # then a counter. Frames queued for this node while it was down may deliver an
        # answer to a read of its previous life; the core drops those too.
        self._read_prefix = self._rng.getrandbits(64).to_bytes(8, "big")
        self._read_ids = itertools.count(1)
        self._applied: Index = 0
        self._snapshot_index: Index = 0
        # The snapshot being encoded in a worker thread: its index and the bytes to be.
        self._snapshot_job: tuple[Index, asyncio.Future[bytes]] | None = None
        self._stopped = False
        # The storage call running in a worker thread, if any: close() must not close
        # the storage under it (a thread cannot be cancelled).
        self._disk_work: asyncio.Future[None] | None = None
        self.close_timeout = 5.0  # seconds close() lets the loop finish its batch

    # ---- lifecycle ---------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        self._transport = transport

    def start(self) -> None:
        """Recover from storage (bootstrapping a brand-new founder) and start running."""
        restored = self._storage.load()
        fresh = restored.hard_state.term == 0 and not restored.entries
        if fresh and restored.snapshot.meta.index == 0 and self._bootstrap_voters:
            restored = Restored.bootstrap(self._bootstrap_voters)
            self._storage.save(restored.hard_state, restored.entries, None, sync=True)
            log.info(
                "%s: bootstrapped cluster with voters %s", self.id, sorted(self._bootstrap_voters)
            )
        snap = restored.snapshot
        if snap.meta.index > 0:
            self._sm.restore(snap.data)
        self._applied = self._snapshot_index = snap.meta.index
        cfg = dataclasses.replace(self._config, applied=snap.meta.index)
        self._node = RawNode(
            cfg, restored, self._rng, trace=self._trace, snapshot_check=self._check_snapshot
        )
        log.info(
            "%s: started at term %d, snapshot %d, %d log entries",
            self.id,
            restored.hard_state.term,
            snap.meta.index,
            len(restored.entries),
        )
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"raft-{self.id}")
        self._ticker = loop.call_later(self._tick_seconds, self._on_tick)

    async def close(self) -> None:
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._snapshot_job is not None:
            self._snapshot_job[1].cancel()  # its thread finishes; the bytes are dropped
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.close_timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception as exc:  # the loop died earlier: clean up all the same
                log.warning("%s: raft loop had failed: %r", self.id, exc)
        if self._disk_work is not None and not self._disk_work.done():
            try:
                await self._disk_work  # the thread finishes whatever we do
            except Exception as exc:
                log.warning("%s: storage call failed during shutdown: %r", self.id, exc)
        self._fail_all(ProposalDropped("node shutting down"))
        self._storage.close()

    def abort(self) -> None:
        """Stop at once, as kill -9 would: no batch finished, no storage call waited
        for or closed, no waiter answered. For simulations of a crashed process only:
        the storage object must be abandoned with the engine."""
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._task is not None:
            self._task.cancel()

    async def wait_failed(self) -> BaseException:
        """Return when the run loop dies (e.g. a storage error); the node must stop."""
        assert self._task is not None
        try:
            await self._task
        except BaseException as exc:
            return exc
        return RuntimeError("raft loop stopped")

    # ---- inputs (called from other tasks and callbacks) --------------------------

    def _enqueue(self, fn: Input) -> None:
        self._inputs.append(fn)
        self._wake.set()

    def _on_tick(self) -> None:
        if self._stopped:
            return
        self._enqueue(self._require_node().tick)
        self._ticker = asyncio.get_running_loop().call_later(self._tick_seconds, self._on_tick)

    def deliver(self, msg: Message) -> None:
        """Transport callback: a decoded message from a peer."""
        self._enqueue(lambda: self._require_node().step(msg))

    def unreachable(self, peer: NodeId) -> None:
        """Transport callback: a message to ``peer`` could not be delivered."""
        self._enqueue(lambda: self._require_node().report_unreachable(peer))

    async def propose(self, command: bytes, timeout: float) -> object:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def do() -> None:
            try:
                index = self._require_node().propose(command)
            except RaftError as exc:
                if not fut.done():  # the caller may have given up meanwhile
                    fut.set_exception(exc)
                return
            self._register_proposal(index, fut)

        self._enqueue(do)
        return await asyncio.wait_for(fut, timeout)

    async def propose_conf_change(self, cc: ConfChange, timeout: float) -> None:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def do() -> None:
            try:
                index = self._require_node().propose_conf_change(cc)
            except RaftError as exc:
                if not fut.done():  # the caller may have given up meanwhile
                    fut.set_exception(exc)
                return
            self._register_proposal(index, fut)

        self._enqueue(do)
        await asyncio.wait_for(fut, timeout)

    def transfer_leader(self, to: NodeId) -> None:
        def do() -> None:
            # Leadership may be lost between the caller's check and this input: an
            # exception here would end the run loop, and with it the node.
            try:
                self._require_node().transfer_leader(to)
            except RaftError as exc:
                log.info("%s: transfer to %s not started: %s", self.id, to, exc)

        self._enqueue(do)

    async def read_barrier(self, timeout: float) -> Index:
        if self._unsafe_local_reads:
            return self._applied  # BROKEN ON PURPOSE: no leadership check at all
        ctx = self._read_prefix + next(self._read_ids).to_bytes(8, "big")
        fut: asyncio.Future[Index] = asyncio.get_running_loop().create_future()

        def do() -> None:
            try:
                self._require_node().read_index(ctx)
            except RaftError as exc:
                if not fut.done():  # the caller may have given up meanwhile
                    fut.set_exception(exc)
                return
            if not fut.done():
                self._read_waiters[ctx] = fut

        self._enqueue(do)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._read_waiters.pop(ctx, None)

    def _register_proposal(self, index: Index, fut: asyncio.Future[object]) -> None:
        term = self._require_node().term_at(index)
        assert term is not None, "a just-proposed entry is in the log"
        old = self._proposals.get(index)
        if old is not None and not old[1].done():
            # This leader reuses an index only after its log lost the old entry there.
            old[1].set_exception(ProposalDropped(f"entry {index} was overwritten"))
        self._proposals[index] = (term, fut)

    # ---- the loop ----------------------------------------------------------------

    def _require_node(self) -> RawNode:
        if self._node is None:
            raise RuntimeError("engine not started")
        return self._node

    async def _run(self) -> None:
        node = self._require_node()
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            self._run_inputs()
            await self._maybe_install_snapshot()
            while node.has_ready() and not self._stopped:
                rd = node.ready()
                await self._persist(rd)
                if self._transport is not None and rd.messages:
                    self._transport.send(rd.messages)
                self._apply(rd)
                node.advance(rd)
                self._run_inputs()
                await self._maybe_install_snapshot()
                self._maybe_start_snapshot()

    def _run_inputs(self) -> None:
        inputs, self._inputs = self._inputs, []
        for fn in inputs:
            fn()

    async def _persist(self, rd: Ready) -> None:
        if rd.snapshot is None and not rd.entries and rd.hard_state is None:
            return
        sync = rd.must_sync and self._sync_writes
        await self._on_disk(self._storage.save, rd.hard_state, rd.entries, rd.snapshot, sync)

    async def _on_disk(self, fn: Callable[..., None], *args: object) -> None:
        """Run a storage call in a worker thread, remembered so close() can wait for it
        (shielded: cancelling the loop must not pretend the thread stopped)."""
        work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._disk_work = work
        await asyncio.shield(work)

    def _apply(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self._sm.restore(rd.snapshot.data)
            self._applied = self._snapshot_index = rd.snapshot.meta.index
            for index in [i for i in self._proposals if i <= self._applied]:
                _, fut = self._proposals.pop(index)
                if not fut.done():
                    fut.set_exception(TimeoutError("outcome unknown: replaced by a snapshot"))
        for e in rd.committed_entries:
            if e.index <= self._applied:
                continue
            result: object = None
            if e.kind is EntryKind.NORMAL and e.data:
                result = self._sm.apply(e.index, e.data)
            self._applied = e.index
            waiter = self._proposals.pop(e.index, None)
            if waiter is not None and not waiter[1].done():
                term, fut = waiter
                if term == e.term:
                    fut.set_result(result)
                else:
                    fut.set_exception(ProposalDropped(f"entry {e.index} was overwritten"))
        for rs in rd.read_states:
            read = self._read_waiters.get(rs.ctx)
            if read is not None:
                self._reads_ready.append((rs.index, read))
        self._serve_reads()

    def _serve_reads(self) -> None:
        waiting = []
        for index, fut in self._reads_ready:
            if fut.done():
                continue
            if index <= self._applied:
                fut.set_result(index)
            else:
                waiting.append((index, fut))
        self._reads_ready = waiting

    def _maybe_start_snapshot(self) -> None:
        """Capture the state machine at ``_applied`` (on the loop, cheaply) and encode
        it in a worker thread, if enough entries were applied since the last snapshot
        and no snapshot is being encoded already."""
        if self._snapshot_job is not None:
            return
        if self._applied - self._snapshot_index < self._snapshot_threshold:
            return
        encode = self._sm.snapshot_capture()
        job: asyncio.Future[bytes] = asyncio.ensure_future(asyncio.to_thread(encode))
        job.add_done_callback(lambda _: self._wake.set())
        self._snapshot_job = (self._applied, job)

    async def _maybe_install_snapshot(self) -> None:
        """Once the encoder is done: hand the snapshot to the core (which compacts its
        log) and persist it, before the next Ready can refer to the compacted log."""
        if self._snapshot_job is None or not self._snapshot_job[1].done():
            return
        index, job = self._snapshot_job
        self._snapshot_job = None
        if job.cancelled():  # close() gave up on it
            return
        data = job.result()  # an encoder that failed is a bug: it ends the loop
        try:
            snap = self._require_node().create_snapshot(index, data)
        except ProposalDropped as exc:  # a leader's snapshot overtook it meanwhile
            log.info("%s: dropped snapshot at %d: %s", self.id, index, exc)
            return
        self._snapshot_index = max(self._snapshot_index, index)
        await self._on_disk(self._storage.save_snapshot, snap)
        log.info("%s: snapshot at %d (%d bytes)", self.id, index, len(data))

    def _fail_all(self, exc: Exception) -> None:
        for _, fut in self._proposals.values():
            if not fut.done():
                fut.set_exception(exc)
        self._proposals.clear()
        for read in self._read_waiters.values():
            if not read.done():
                read.set_exception(exc)

    def _check_snapshot(self, index: Index, data: bytes) -> str | None:
        """The state machine's verdict on a leader's snapshot, before the core adopts it
        and before anything is written: a bad one is refused, the node serves on."""
        try:
            self._sm.validate(data, index)
        except ValueError as exc:
            log.warning("%s: refusing a snapshot from the leader: %s", self.id, exc)
            return str(exc) or type(exc).__name__
        return None

    def _trace(self, line: str) -> None:
        log.debug("%s", line)

    # ---- observation -------------------------------------------------------------

    def status(self) -> EngineStatus:
        st = self._require_node().status()
        return EngineStatus(
            id=st.id,
            role=st.role.value,
            term=st.term,
            leader=st.leader,
            commit=st.commit,
            applied=st.applied,
            last_index=st.last_index,
            voters=tuple(sorted(st.conf.voters)),
            learners=tuple(sorted(st.conf.learners)),
            match={n: p.match for n, p in st.progress.items()},
        )
