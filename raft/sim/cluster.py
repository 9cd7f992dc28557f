"""A whole Raft cluster in one thread, driven by one seed.

Theory of operation
-------------------
Everything random in a run — message delays, drops, duplicates, crashes, partitions,
membership changes, client choices, each node's election timeouts — derives from a
single ``random.Random(seed)``, and time is a virtual integer clock in milliseconds.
A run is a loop over a priority queue of ``(time, seq, kind, a, b)`` events: pop one,
advance the clock to it, let it touch one node, drain that node's Ready batches, then
check the invariants against what changed. ``seq`` breaks ties in insertion order, so
the same seed yields the same run, byte for byte: there are no threads, no wall clock,
no I/O, and nothing iterates over a set of strings (whose order changes with
``PYTHONHASHSEED``, which would make a seed printed by CI useless on a laptop).

A node (:mod:`raft.sim.node`) is a ``RawNode`` plus the real ``DiskStorage`` over its
own simulated disk (:class:`~raft.storage.simfs.SimFileSystem`) plus a
:class:`~raft.sim.workload.Register` state machine. Draining follows the Ready contract
exactly — persist, then send, then apply, then advance. A crash throws away the
RawNode, the state machine and the storage object (a process crash: the disk keeps
everything written); in ``lose_unsynced`` runs half the crashes are power losses, after
which the disk keeps only what the storage code fsynced (and directory entries it
fsynced), with torn pages. A restart opens a new DiskStorage on that disk and rebuilds
the node from ``load()`` alone, like a process. Two more disk faults: ``corrupt``
crashes a node and damages a sector of its durable data, which the restart must detect
(``CorruptStorage``; the sim then repairs the sector, as a RAID mirror would, and
restarts it), and ``fsync-fail`` makes a node's next fsync fail, which must stop it.

Messages travel as bytes through :class:`~raft.sim.network.Network` (the real codec
on every hop), and die with a crashed destination: each delivery names the
incarnation it was sent to. Faults come from the nemesis (:mod:`raft.sim.faults`),
at random intervals whose rate is drawn per seed, or from an explicit schedule (the
hypothesis test uses one, so a failure shrinks to a few faults).

Invariants (:mod:`raft.sim.invariants`) are checked after every event, on the node
the event touched (no other node changed), against a ghost history of all nodes and
lifetimes: every entry handed out for persistence, every commit point, every applied
entry, every snapshot restored, every client outcome. The membership the simulator
acts on is the first application of each change anywhere; a removed node is stopped
and wiped at once, and a wiped node comes back only as a new learner.

The run has two phases. In the fault phase, clients run a register workload while the
nemesis does its worst, for ``steps`` events. Then everything is healed — nodes
restarted, partitions removed, the network made reliable — and in the quiet phase
the cluster must elect a leader, resolve every client operation, commit a probe
write and serve a probe read, and bring every live member's state machine up to the
leader's commit index, within ``quiet_ms`` of virtual time. Safety violations raise
``InvariantViolation``; being stuck raises ``LivenessViolation``.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Restored
from raft.describe import describe_conf_state, describe_hard_state
from raft.messages import Message
from raft.sim import invariants as inv
from raft.sim.faults import Fault, Nemesis, Scenario, resolve
from raft.sim.network import NetConfig, Network
from raft.sim.node import SimNode
from raft.sim.trace import Trace
from raft.sim.workload import FAIL, OK, PENDING, Client, ClientConfig, History, Op
from raft.storage.base import CorruptStorage, StorageError
from raft.storage.disk import DiskStorage
from raft.storage.simfs import SimFileSystem, SimulatedCrash
from raft.storage.wal import proven_durable
from raft.types import ConfChange, ConfState, Entry, Index, NodeId, Role

TICK, DELIVER, CLIENT, NEMESIS, FAULT, RESTART, HEAL, WIPE, FRESH, QUIET = range(10)
# Torn tails are routine here and go to the trace; keep them off stderr.
logging.getLogger("raft.storage.wal").addHandler(logging.NullHandler())
logging.getLogger("raft.storage.wal").propagate = False
TICK_MS = 10  # one core tick per 10 virtual ms, so an election timeout is 100-200 ms
QUIET_CHECK_MS = 50
BASE_CONFIG = Config(
    id="n0",
    election_ticks=10,
    heartbeat_ticks=1,
    snapshot_chunk_bytes=256,  # small, so every snapshot transfer is chunked
)


class Cluster:
    """The simulated cluster, its clients and its nemesis. See the module docstring."""

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        scenario: Scenario | None = None,
        trace: Trace | None = None,
        founders: int | None = None,
    ) -> None:
        """``founders``: only the first that many nodes found the cluster; the others
        wait, empty, until a membership change adds them (scripted scenarios)."""
        self.seed = seed
        self.ids: list[NodeId] = [f"n{i}" for i in range(1, nodes + 1)]
        self.node_ids = self.ids  # the ClientHost view
        master = random.Random(seed)
        node_rngs = [random.Random(master.getrandbits(64)) for _ in self.ids]
        self._rng = random.Random(master.getrandbits(64))  # restarts, tick phases
        params_rng = random.Random(master.getrandbits(64))
        net_rng = random.Random(master.getrandbits(64))
        nemesis_rng = random.Random(master.getrandbits(64))
        self._client_seeds = random.Random(master.getrandbits(64))
        self.scenario = scenario or Scenario()
        self.params = p = resolve(self.scenario, params_rng, nodes)
        self.network = Network(net_rng, NetConfig(drop_p=p.drop_p, dup_p=p.dup_p))
        self.config = replace(
            BASE_CONFIG,
            max_msg_entries=p.max_msg_entries,
            max_inflight_msgs=p.max_inflight_msgs,
            snapshot_catchup_entries=p.catchup_entries,
        )
        self.nemesis = Nemesis(self, nemesis_rng, self.scenario, p)
        self.trace = trace if trace is not None else Trace()
        self.ghost = inv.Ghost()
        self.history = History()
        self.now = 0
        self.events = 0
        self.stats: Counter[str] = Counter()  # what happened, for summaries and tuning
        self._queue: list[tuple[int, int, int, Any, Any]] = []
        self._seq = 0
        self.founders = self.ids[: founders or nodes]
        self.conf = ConfState(frozenset(self.founders))
        self._conf_upto: Index = 0
        self.removed: dict[NodeId, Index] = {}  # removed node -> index of its removal
        self.quiet = False
        self._settled = False
        self._quiet_deadline = 0
        self._probes: dict[int, bool] = {}  # probe client id -> succeeded
        self._handlers: list[Callable[[Any, Any], None]] = [
            self._on_tick,
            self._on_deliver,
            self._on_client,
            self._on_nemesis,
            self._on_fault,
            self._on_restart,
            self._on_heal,
            self._on_wipe,
            self._on_fresh,
            self._on_quiet,
        ]
        self.clients: list[Client] = []
        self._boot(node_rngs)

    def _boot(self, node_rngs: list[random.Random]) -> None:
        """Found the cluster, start its clients and arm the nemesis (time 0)."""
        for _ in range(self.params.clients):
            self._add_client(ClientConfig())
        boot = Restored.bootstrap(frozenset(self.founders))
        self.nodes = {nid: SimNode(self, nid) for nid in self.ids}
        for nid, rng in zip(self.ids, node_rngs, strict=True):
            if nid not in self.founders:
                self.removed[nid] = 0  # not a member yet: started when added
                continue
            n = self.nodes[nid]
            n.open_storage().save(boot.hard_state, boot.entries, None, sync=True)
            self._start(n, boot, rng)
        for nid in self.ids:
            self._arm(self.nodes[nid].fs)
        for c in self.clients:
            self.wake(c, self._rng.randint(0, 300))
        if self.scenario.schedule is not None:
            for at, fault in self.scenario.schedule:
                self._push(at, FAULT, fault, None)
        else:
            self._push(self.nemesis.next_gap(), NEMESIS, None, None)

    # ---- running -----------------------------------------------------------------

    def run(self, steps: int) -> None:
        """Fault phase for ``steps`` events, then heal and require liveness."""
        self.run_faults(steps)
        self.run_quiet()

    def run_faults(self, steps: int) -> None:
        """Process ``steps`` more events of the fault phase."""
        self._loop(steps, None)

    def run_quiet(self) -> None:
        """Heal everything; the cluster must then settle within ``quiet_ms``."""
        self._heal_all()
        self._loop(None, self._quiet_deadline)
        if not self._settled:
            problems = "; ".join(self._unsettled())
            raise inv.liveness(f"not settled {self.scenario.quiet_ms} ms after healing: {problems}")
        self._final_checks()

    def _loop(self, max_events: int | None, deadline: int | None) -> None:
        q = self._queue
        pop = heapq.heappop
        handlers = self._handlers
        budget = self.events + max_events if max_events is not None else None
        while q and not self._settled:
            if budget is not None and self.events >= budget:
                return
            if deadline is not None and q[0][0] > deadline:
                return
            t, _, kind, a, b = pop(q)
            self.now = t
            self.events += 1
            handlers[kind](a, b)

    def _push(self, at: int, kind: int, a: Any, b: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, a, b))

    def note(self, who: str, text: str) -> None:
        self.trace.add(self.now, who, text)

    def core_trace(self, line: str) -> None:
        """The trace sink handed to every RawNode (its lines name the node)."""
        self.trace.add(self.now, "", line)

    def transmit(self, m: Message, incarnation: int) -> None:
        """Put ``m`` on the wire to the ``incarnation`` of its destination."""
        payload, delays = self.network.transmit(m)
        for d in delays:
            self._push(self.now + d, DELIVER, (m.dst, incarnation), (m.src, payload, m))

    # ---- event handlers ----------------------------------------------------------

    def _on_tick(self, nid: NodeId, inc: int) -> None:
        n = self.nodes[nid]
        if n.incarnation != inc or n.raw is None:
            return  # a tick of a previous life
        if n.paused_until > self.now:  # a stalled process misses its timer
            self._push(n.paused_until, TICK, nid, inc)
            return
        n.raw.tick()
        self._push(self.now + TICK_MS, TICK, nid, inc)
        n.drain_and_check()

    def _on_deliver(self, to: tuple[NodeId, int], what: tuple[NodeId, bytes, Message]) -> None:
        nid, inc = to
        src, payload, sent = what
        n = self.nodes[nid]
        if n.incarnation != inc or n.raw is None:
            return  # died with the node it was sent to
        if n.paused_until > self.now:  # waits in the socket buffer
            self._push(n.paused_until, DELIVER, to, what)
            return
        msg = self.network.receive(src, nid, payload)
        if msg is None:
            self.trace.add(self.now, nid, "cut", sent)
            return
        if msg != sent:
            raise inv.violation("codec", f"decode(encode(m)) != m for {sent!r}: {msg!r}")
        self.trace.add(self.now, nid, "recv", msg)
        n.raw.step(msg)
        n.drain_and_check()

    def _on_client(self, cid: int, _: None) -> None:
        self.clients[cid].wake(self)

    def _on_nemesis(self, _a: None, _b: None) -> None:
        if self.quiet:
            return
        fault = self.nemesis.random_fault()
        if fault is not None:
            self._on_fault(fault, None)
        self._push(self.now + self.nemesis.next_gap(), NEMESIS, None, None)

    def _on_fault(self, fault: Fault, _: None) -> None:
        if self.quiet:
            return
        self.stats["faults"] += 1
        self.note("nemesis", f"fault {fault.kind} a={fault.a} b={fault.b} for {fault.duration}ms")
        self.nemesis.apply(fault)

    def _on_restart(self, nid: NodeId, inc: int) -> None:
        if self.nodes[nid].incarnation == inc:
            self.restart(nid)

    def _on_heal(self, pid: int, _: None) -> None:
        self.network.heal(pid)
        self.note("nemesis", f"healed partition {pid}")

    def _on_wipe(self, nid: NodeId, _: None) -> None:
        """A removal was applied: the node is stopped and its storage destroyed."""
        n = self.nodes[nid]
        if nid not in self.removed:
            return
        self.note("nemesis", f"{nid} removed (at {self.removed[nid]}): stopped and wiped")
        n.kill()
        n.fs = self._arm(SimFileSystem())
        n.damaged = None
        n.last_snap = 0
        self.ghost.forget_node(nid)
        if self.scenario.rejoin_at_once:
            self._push(self.now + self._rng.randint(*self.scenario.down_ms), FRESH, nid, None)

    def _on_fresh(self, nid: NodeId, _: None) -> None:
        """A wiped node was added back: it starts empty and learns everything from
        the leader (log or snapshot)."""
        n = self.nodes[nid]
        waiting = self.scenario.rejoin_at_once and nid in self.removed
        if n.raw is None and (nid not in self.removed or waiting):
            what = "restarting empty, to be re-added" if waiting else "re-added"
            self.note("nemesis", f"{nid} {what}: starting with empty storage")
            self.stats["readds"] += 1
            try:
                n.open_storage()
            except SimulatedCrash:
                self.note("nemesis", f"{nid} crashed creating its data directory")
                self._push(self.now + self._rng.randint(*self.scenario.down_ms), FRESH, nid, None)
                return
            self._start(n, Restored(), random.Random(self._rng.getrandbits(64)))

    def _on_quiet(self, _a: None, _b: None) -> None:
        if not self._unsettled():
            self._settled = True
        else:
            self._push(self.now + QUIET_CHECK_MS, QUIET, None, None)

    # ---- called by nodes -------------------------------------------------------------

    def conf_applied(self, e: Entry) -> None:
        """The first application of a membership change anywhere makes it the
        cluster's configuration (applied means committed, so all will agree; and
        first applications happen in index order, since each node applies in order)."""
        if e.index <= self._conf_upto:
            return
        self._conf_upto = e.index
        cc = ConfChange.decode(e.data)
        self.conf = self.conf.apply(cc)
        self.stats[f"conf_{cc.kind.name.lower()}"] += 1
        self.note(
            "cluster",
            f"conf at {e.index}: {cc.kind.name} {cc.node} -> {describe_conf_state(self.conf)}",
        )
        if cc.node not in self.conf.members:
            self.removed[cc.node] = e.index
            self._push(self.now, WIPE, cc.node, None)
        elif cc.node in self.removed:
            del self.removed[cc.node]
            self._push(self.now, FRESH, cc.node, None)

    def resolve_write(self, op: Op, data: bytes) -> None:
        """The node ``op`` was proposed to applied ``data`` at ``op.index``."""
        if op.outcome != PENDING:
            return
        if data != op.key:
            self.clients[op.client].finish(self, op, FAIL)
            return
        inv.check_write_ack(op.key, op.index, op.acked_before)
        h = self.history
        h.acked.append(op)
        h.max_acked_index = max(h.max_acked_index, op.index)
        self.clients[op.client].finish(self, op, OK)

    def complete_read(self, op: Op, result: frozenset[bytes]) -> None:
        h = self.history
        acked = (w.key for w in h.acked[: op.acked_before])
        inv.check_read(op.key, result, acked, h.proposed)
        self.clients[op.client].finish(self, op, OK)

    # ---- clients -------------------------------------------------------------------

    def _add_client(self, config: ClientConfig) -> Client:
        rng = random.Random(self._client_seeds.getrandbits(64))
        c = Client(len(self.clients), rng, self.history, config, self._on_complete)
        self.clients.append(c)
        return c

    def wake(self, client: Client, at: int) -> None:
        self._push(at, CLIENT, client.cid, None)

    def client_propose(self, nid: NodeId, op: Op) -> Index:
        return self.nodes[nid].propose(op)

    def client_read(self, nid: NodeId, op: Op) -> None:
        self.nodes[nid].read(op)

    def _on_complete(self, op: Op) -> None:
        text = f"client {op.client} {op.kind} {op.key!r} at {op.index}"
        self.trace.add(self.now, op.node or "-", text, op.outcome)
        if op.client in self._probes and op.outcome == OK:
            self._probes[op.client] = True
            self.clients[op.client].stopped = True

    # ---- faults (called by the nemesis) ------------------------------------------------

    def raw(self, nid: NodeId) -> RawNode | None:
        """The node's RawNode if it is up and not stalled (so it can take requests)."""
        n = self.nodes[nid]
        return n.raw if n.paused_until <= self.now else None

    def leader(self) -> NodeId | None:
        """The live leader with the highest term, if any."""
        best: tuple[int, NodeId] | None = None
        for nid in self.ids:
            raw = self.nodes[nid].raw
            if raw is not None:
                st = raw.status()
                if st.role is Role.LEADER and (best is None or st.term > best[0]):
                    best = (st.term, nid)
        return best[1] if best else None

    def down_count(self) -> int:
        return sum(1 for nid in self.ids if self.nodes[nid].raw is None and nid not in self.removed)

    def crash(self, nid: NodeId, down_ms: int, power_loss: bool | None = None) -> None:
        """Kill ``nid``'s process; in ``lose_unsynced`` runs, half the time the whole
        machine loses power (``power_loss`` forces the choice)."""
        n = self.nodes[nid]
        if n.raw is None:
            return
        if power_loss is None:
            power_loss = self.params.lose_unsynced and self._rng.random() < 0.5
        self.note("nemesis", f"crash {nid}{' (power loss)' if power_loss else ''}")
        n.kill()
        n.fs.fail_fsync = False  # the fault was armed for the process that died
        self.stats["crashes"] += 1
        if power_loss:
            self.stats["power_losses"] += 1
            n.fs.power_loss(self._rng)
        if down_ms:
            self._push(self.now + down_ms, RESTART, nid, n.incarnation)

    def _arm(self, fs: SimFileSystem) -> SimFileSystem:
        """Give a disk its crash points (none in the quiet phase)."""
        fs.rng = random.Random(self._rng.getrandbits(64))
        fs.crash_p = 0.0 if self.quiet else self.params.crash_points
        return fs

    def crash_point(self, nid: NodeId) -> None:
        """The machine died inside a storage operation (a crash point)."""
        self.stats["crash_points"] += 1
        self.note("nemesis", f"{nid} hit a crash point")
        self.crash(nid, self._rng.randint(*self.scenario.down_ms))

    def storage_failed(self, nid: NodeId, exc: StorageError) -> None:
        """The node's storage raised (a failed fsync): the process stops, and what the
        disk holds is unknown, so the machine is treated as having lost power."""
        self.note("nemesis", f"{nid} stopped on a storage error: {exc}")
        self.stats["storage_stops"] += 1
        self.crash(nid, self._rng.randint(*self.scenario.down_ms), power_loss=True)

    def fail_next_fsync(self, nid: NodeId) -> None:
        n = self.nodes[nid]
        if n.raw is not None:
            self.note("nemesis", f"{nid}: the next fsync will fail")
            n.fs.fail_fsync = True

    def damage(self, nid: NodeId, down_ms: int) -> None:
        """Media corruption: crash ``nid`` (a process crash; or it is already down) and
        damage one sector of data its disk holds durably, in the last WAL segment only
        below its highest SYNCED mark (elsewhere, damage looks like a torn write: the
        known limit in docs/ARCHITECTURE.md)."""
        n = self.nodes[nid]
        self.crash(nid, down_ms, power_loss=False)
        if n.raw is not None or n.damaged is not None:
            return
        files = [p for p in n.fs.files() if not p.endswith(".tmp")]
        if not files:
            return
        path = Path(self._rng.choice(files))
        wals = [p for p in files if Path(p).name.startswith("wal-")]
        hi = None
        if wals and str(path) == wals[-1]:  # only what the WAL's own marks prove durable
            hi = proven_durable(n.fs.read_bytes(path))
        before = n.fs.read_bytes(path)
        off = n.fs.corrupt(path, self._rng, 0, hi)
        if off >= 0:
            n.damaged = (path, before)
            self.stats["corruptions"] += 1
            self.note("nemesis", f"{nid}: damaged {path} at offset {off}")

    def restart(self, nid: NodeId) -> None:
        n = self.nodes[nid]
        if n.raw is not None or nid in self.removed:
            return
        try:
            storage = self._open_disk(n)
        except SimulatedCrash:
            self.stats["crash_points"] += 1
            self.note("nemesis", f"{nid} crashed during recovery")
            n.storage = None
            if self._rng.random() < 0.5 and self.params.lose_unsynced:
                n.fs.power_loss(self._rng)
            delay = self._rng.randint(*self.scenario.down_ms)
            self._push(self.now + delay, RESTART, nid, n.incarnation)
            return
        if storage.wal.truncated_tail is not None:
            path, off, size = storage.wal.truncated_tail
            self.stats["torn_tails"] += 1
            self.note(nid, f"cut a torn tail of {size} bytes at {path.name}:{off}")
        restored = storage.load()
        inv.check_restored_log(nid, restored)
        inv.check_restart_commit(self.ghost, nid, restored.hard_state.commit)
        inv.check_restart_membership(
            self.ghost, nid, max(restored.hard_state.commit, restored.snapshot.meta.index)
        )
        self.stats["restarts"] += 1
        self.note("nemesis", f"restart {nid} from {describe_hard_state(restored.hard_state)}")
        self._start(n, restored, random.Random(self._rng.getrandbits(64)))

    def _open_disk(self, n: SimNode) -> DiskStorage:
        """Open ``n``'s data directory: a damaged disk must be refused (and is then
        repaired and opened again); any other refusal is a recovery bug."""
        try:
            storage = n.open_storage()
        except CorruptStorage as exc:
            if n.damaged is None:
                raise inv.violation(
                    "storage-recovery", f"{n.id} cannot restart after a crash: {exc}"
                ) from exc
            path, before = n.damaged
            self.note("nemesis", f"{n.id} refused its damaged disk ({exc}); repairing {path}")
            self.stats["corruptions_detected"] += 1
            n.fs.restore(path, before)
            n.damaged = None
            return n.open_storage()
        if n.damaged is not None:
            raise inv.violation(
                "undetected-corruption",
                f"{n.id} opened its disk although {n.damaged[0]} was damaged",
            )
        return storage

    def _start(self, n: SimNode, restored: Restored, rng: random.Random) -> None:
        n.start(restored, rng, self.config)
        self._push(self.now + self._rng.randint(1, TICK_MS), TICK, n.id, n.incarnation)

    def pause(self, nid: NodeId, ms: int) -> None:
        """Stall a node (a GC pause, a stopped VM): it keeps its state but handles
        nothing until ``ms`` have passed; then it sees everything that arrived."""
        n = self.nodes[nid]
        if n.raw is None or not ms:
            return
        n.paused_until = max(n.paused_until, self.now + ms)
        self.stats["pauses"] += 1
        self.note("nemesis", f"pause {nid} until {n.paused_until}ms")

    def partition(self, groups: list[list[NodeId]], ms: int) -> None:
        pid = self.network.split(groups)
        self.stats["partitions"] += 1
        self.note("nemesis", f"partition {pid}: {' | '.join(' '.join(g) for g in groups)}")
        if ms:
            self._push(self.now + ms, HEAL, pid, None)

    def cut(self, src: NodeId, dst: NodeId, ms: int) -> None:
        pid = self.network.add_partition([(src, dst)])
        self.stats["one_way_cuts"] += 1
        self.note("nemesis", f"partition {pid}: one-way cut {src} -> {dst}")
        if ms:
            self._push(self.now + ms, HEAL, pid, None)

    def heal(self) -> None:
        self.network.heal()
        self.note("nemesis", "healed all partitions")

    def can_readd(self, nid: NodeId) -> bool:
        """Only once no member can still count the removed node's old votes."""
        at = self.removed[nid]
        for m in sorted(self.conf.members):
            n = self.nodes[m]
            if n.raw is None or n.sm is None or n.sm.applied < at or n.last_snap < at:
                return False
        return True

    # ---- the quiet phase: heal everything, then demand progress ------------------------

    def _heal_all(self) -> None:
        self.quiet = True
        self.note("nemesis", "quiet phase: healing everything")
        self.network.heal()
        self.network.calm()
        for nid in self.ids:
            self.nodes[nid].fs.crash_p = 0.0
        for c in self.clients:
            c.stopped = True
        for nid in self.ids:  # (pauses simply run out: they are short)
            self.restart(nid)
        # Probes: one write and one read that must succeed (retrying as clients do).
        for ratio in (1.0, 0.0):
            probe = self._add_client(ClientConfig(write_ratio=ratio))
            self._probes[probe.cid] = False
            self.wake(probe, self.now + 1)
        self._quiet_deadline = self.now + self.scenario.quiet_ms
        self._push(self.now + QUIET_CHECK_MS, QUIET, None, None)

    def _unsettled(self) -> list[str]:
        """What still stands between the healed cluster and a settled one."""
        lead = self.leader()
        if lead is None:
            return ["no leader"]
        raw = self.nodes[lead].raw
        assert raw is not None
        st = raw.status()
        problems = []
        if not all(self._probes.values()):
            problems.append("probe write/read not yet successful")
        pending = self.history.pending()
        if pending:
            problems.append(f"{len(pending)} client ops pending, e.g. {pending[0]}")
        if st.commit != st.last_index:
            problems.append(f"leader {lead} commit {st.commit} < last index {st.last_index}")
        for m in sorted(st.conf.members):
            n = self.nodes[m]
            if n.raw is None or n.sm is None:
                problems.append(f"member {m} is down")
            elif n.sm.applied != st.commit:
                problems.append(f"{m} applied {n.sm.applied}, leader {lead} commit {st.commit}")
        return problems

    def _final_checks(self) -> None:
        """Every acked write is in the final log; every live log's committed part
        is exactly the applied history."""
        lead = self.leader()
        assert lead is not None
        raw = self.nodes[lead].raw
        assert raw is not None
        commit = raw.status().commit
        inv.check_final(((op.key, op.index) for op in self.history.acked), self.ghost, commit)
        for nid in self.ids:
            node = self.nodes[nid].raw
            if node is not None:
                st = node.status()
                inv.check_committed_log(
                    self.ghost, nid, node.entries(st.first_index, st.commit + 1)
                )

    def summary(self) -> dict[str, int]:
        ops = self.history.ops
        return dict(self.stats) | {
            "events": self.events,
            "virtual_ms": self.now,
            "writes_ok": len(self.history.acked),
            "reads_ok": sum(1 for op in ops if op.kind == "read" and op.outcome == OK),
            "ops": len(ops),
            "max_commit": self.ghost.max_commit,
            "msgs": self.network.sent,
        }
