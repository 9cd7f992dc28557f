"""A deterministic simulation of the real KV store: nodes, network, clients, faults.

Theory of operation. :class:`KVSim` builds three or five :class:`SimKVNode`s (the real
RaftEngine, KVStateMachine and ClientServer with its lessor) on one
:class:`VirtualTimeLoop`, joined by a simulated network (``raft.sim.network``: the
real codec, seeded delays, partitions). Frames sent to a node that is down wait for
it, as a peer transport's queue does, and arrive in its next life. Clients call the
server's request handler (``ClientServer.handle``) directly, through the network's
latency; a crash of the node cuts their request (an unknown outcome).

- *Writers* open a session, then put unique values to a few keys (a retry keeps its
  seq, across nodes) and read them back linearizably from any node, followers too.
- *Leasers* grant leases, keep some alive for a while, then abandon them.
- *The nemesis* crashes nodes (kill -9, or a power loss) and restarts them, splits the
  network, stalls a disk past the clients' timeout, steps wall clocks by up to an hour
  either way, sets clock drift (at most 1%), and moves leadership.
- With a small ``quota_bytes``, the NOSPACE alarm goes up as the data fills the quota,
  and *an admin* disarms it now and then (writes past the quota raise it again).

After the load phase everything heals and the run goes on until every abandoned lease
is revoked (or overdue). :mod:`kvstore.sim.checker` checks every event. One seed fixes
everything: the same seed replays the same run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kvstore import protocol as p
from kvstore.sim.checker import Checker, Violation
from kvstore.sim.loop import VirtualTimeLoop
from kvstore.sim.node import SimKVNode
from raft.messages import Message
from raft.sim.network import NetConfig, Network
from raft.types import NodeId

__all__ = ["FAULTS", "KVSim", "RunResult", "SimParams", "run_seed"]

FAULTS = ("crash", "partition", "stall", "clock", "transfer")
_LOST = object()  # the request may have reached the node: outcome unknown
_REFUSED = object()  # the node is down: the request certainly did nothing
_BACKLOG = 4096  # frames waiting for a down node (a peer transport's queue bound)


@dataclass(frozen=True)
class SimParams:
    nodes: int = 3
    load_s: float = 30.0  # faults and clients
    max_quiet_s: float = 60.0  # after the load: until every abandoned lease is revoked
    tick_s: float = 0.1
    election_ticks: int = 10
    request_timeout_s: float = 2.0
    snapshot_threshold: int = 300
    catchup_entries: int = 50
    max_sessions: int = 5  # below the client count: sessions are evicted
    history_limit: int = 2000
    writers: int = 4
    leasers: int = 2
    keys: int = 3
    lease_ttls_ms: tuple[int, ...] = (1500, 2000, 3000)
    read_ratio: float = 0.5  # of a writer's operations
    fault_every_s: tuple[float, float] = (0.5, 2.5)  # between two nemesis actions
    down_s: tuple[float, float] = (0.3, 4.0)  # how long a crashed node stays down
    redial_s: tuple[float, float] = (0.05, 1.0)  # a peer's reconnect after a restart
    max_delay_ms: int = 20  # one-way network delay (1% of messages up to 300 ms)
    slack_s: float = 1.5
    mono_origin: float = 0.0
    faults: tuple[str, ...] = FAULTS
    quota_bytes: int | None = None  # None: the default (never reached); no admin

    @property
    def election_timeout_s(self) -> float:
        return self.tick_s * self.election_ticks


@dataclass
class RunResult:
    seed: int
    violation: Violation | None
    sim_seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None


Script = Callable[["KVSim"], Awaitable[None]]


class KVSim:
    def __init__(self, seed: int, params: SimParams | None = None) -> None:
        self.seed = seed
        self.params = p_ = params or SimParams()
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop()
        self.checker = Checker(self.loop.time, p_.election_timeout_s, p_.slack_s)
        self.net = Network(
            random.Random(self.rng.getrandbits(64)),
            NetConfig(max_delay=p_.max_delay_ms, long_delay_p=0.01, long_delay_max=300),
        )
        self.ids = [f"n{i + 1}" for i in range(p_.nodes)]
        self.nodes = {
            nid: SimKVNode(self, nid, random.Random(self.rng.getrandbits(64))) for nid in self.ids
        }
        self.backlog: dict[NodeId, list[tuple[NodeId, bytes]]] = {n: [] for n in self.ids}
        self.trace: list[str] = []
        self.leader_guess: NodeId | None = None
        self.load_end = p_.load_s
        self.session_expired = 0  # SESSION_EXPIRED answers clients saw
        self.nospace = 0  # NOSPACE answers clients saw
        self.disarms = 0  # alarm_disarm answered OK
        self._rid = 0
        self._leader: tuple[int, NodeId] | None = None
        self._last_sample = 0.0

    # ---- seams a planted bug may replace ----------------------------------------------

    def lessor_clock(self, node: SimKVNode) -> Callable[[], float]:
        """The clock a node's lessor runs on: its monotonic clock."""
        return node.clock.mono

    # ---- the network --------------------------------------------------------------------

    def network_send(self, m: Message) -> None:
        payload, delays = self.net.transmit(m)
        for ms in delays:
            self.loop.call_later(ms / 1000, self._arrive, m.src, m.dst, payload)

    def _arrive(self, src: NodeId, dst: NodeId, payload: bytes) -> None:
        node = self.nodes.get(dst)
        if node is None:
            return
        if not node.alive:
            queue = self.backlog[dst]
            if len(queue) < _BACKLOG:
                queue.append((src, payload))  # waits for the node's next life
            return
        msg = self.net.receive(src, dst, payload)
        if msg is not None and node.engine is not None:
            node.engine.deliver(msg)

    def start_node(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.alive:
            return
        node.start()
        self.note(f"start {nid} (life {node.life})")
        # Each peer's transport redials after its backoff, then sends what it queued,
        # in order: messages of the node's previous life arrive in its new one.
        queued, self.backlog[nid] = self.backlog[nid], []
        redial = {src: self.rng.uniform(*self.params.redial_s) for src in self.ids}
        for i, (src, payload) in enumerate(queued):
            self.loop.call_later(redial[src] + i * 1e-5, self._arrive, src, nid, payload)

    # ---- clients ------------------------------------------------------------------------

    def next_id(self) -> int:
        self._rid += 1
        return self._rid

    async def call(self, nid: NodeId, req: p.Request, rng: random.Random) -> Any:
        """One request to ``nid``'s server: its response, ``_REFUSED`` or ``_LOST``."""
        await asyncio.sleep(rng.uniform(0.0005, 0.003))
        node = self.nodes[nid]
        if not node.alive or node.server is None:
            return _REFUSED
        life = node.life
        task = self.loop.create_task(node.server.handle(req))
        node.inflight[task] = None
        task.add_done_callback(lambda t: node.inflight.pop(t, None))
        await asyncio.wait([task], timeout=self.params.request_timeout_s * 3)
        if not task.done():
            task.cancel()
            return _LOST
        if task.cancelled():
            return _LOST
        resp = task.result()
        await asyncio.sleep(rng.uniform(0.0005, 0.003))
        if not node.alive or node.life != life:
            return _LOST
        return resp

    def pick(self, rng: random.Random) -> NodeId:
        if self.leader_guess is not None and rng.random() < 0.8:
            return self.leader_guess
        return rng.choice(self.ids)

    async def session_write(
        self, rng: random.Random, session: list[Any], build: Callable[[int, p.Session], Any]
    ) -> Any:
        """Send one write of ``session`` ([client_id, last seq]) until a definite
        answer or 8 s; the response, or None (unknown outcome, or the session ended:
        ``session[0]`` is then None)."""
        session[1] += 1
        seq = session[1]
        header = p.Session(client=session[0], seq=seq, ack=seq - 1)
        deadline = self.loop.time() + 8.0
        while self.loop.time() < deadline and session[0] is not None:
            nid = self.pick(rng)
            resp = await self.call(nid, build(self.next_id(), header), rng)
            if resp is _REFUSED or resp is _LOST:
                await asyncio.sleep(rng.uniform(0.02, 0.1))
                continue
            if not isinstance(resp, p.ErrorResponse):
                self.leader_guess = nid
                return resp
            match resp.code:
                case p.Code.NOT_LEADER:
                    self.leader_guess = resp.leader
                    continue
                case p.Code.SESSION_EXPIRED:
                    self.session_expired += 1
                    session[0] = None
                    return None
                case p.Code.NOT_FOUND | p.Code.COMPARE_FAILED | p.Code.LEASE_NOT_FOUND:
                    return resp
                case p.Code.NOSPACE:
                    self.nospace += 1
                    return resp
                case p.Code.STALE_SEQ | p.Code.SEQ_REUSED | p.Code.BAD_REQUEST:
                    self.checker.fail("client-refused", f"{resp.code} for seq {seq}")
            await asyncio.sleep(rng.uniform(0.02, 0.1))
        return None

    async def open_session(self, rng: random.Random) -> list[Any]:
        while self.loop.time() < self.load_end:
            session: list[Any] = [rng.randbytes(16), 0]
            resp = await self.session_write(
                rng, session, lambda rid, s: p.SessionOpen(id=rid, session=s)
            )
            if resp is not None:
                return session
        return [None, 0]

    async def writer(self, name: str, rng: random.Random) -> None:
        keys = [b"k%d" % i for i in range(self.params.keys)]
        session: list[Any] = [None, 0]
        while self.loop.time() < self.load_end:
            if session[0] is None:
                session = await self.open_session(rng)
                continue
            key = rng.choice(keys)
            if rng.random() < self.params.read_ratio:
                await self.read(rng, key)
            else:
                value = b"%s/%s/%d" % (name.encode(), session[0].hex()[:8].encode(), session[1] + 1)
                resp = await self.session_write(
                    rng,
                    session,
                    lambda rid, s, k=key, v=value: p.Put(id=rid, key=k, value=v, session=s),
                )
                if isinstance(resp, p.WriteResponse):
                    self.checker.write_acked(key, resp.revision)
            await asyncio.sleep(rng.uniform(0, 0.05))

    async def read(self, rng: random.Random, key: bytes) -> None:
        nid = rng.choice(self.ids)
        floor = self.checker.read_floor(key)
        req = p.Get(id=self.next_id(), key=key, consistency=p.Consistency.LINEARIZABLE)
        resp = await self.call(nid, req, rng)
        if isinstance(resp, p.GetResponse):
            self.checker.read_done(nid, key, floor, (resp.kv.mod_revision, resp.kv.value))
        elif isinstance(resp, p.ErrorResponse) and resp.code is p.Code.NOT_FOUND:
            self.checker.read_done(nid, key, floor, None)

    async def leaser(self, name: str, rng: random.Random) -> None:
        session: list[Any] = [None, 0]
        while self.loop.time() < self.load_end:
            if session[0] is None:
                session = await self.open_session(rng)
                continue
            ttl_ms = rng.choice(self.params.lease_ttls_ms)
            invoked, at = self.loop.time(), self.counters()
            resp = await self.session_write(
                rng, session, lambda rid, s, t=ttl_ms: p.LeaseGrant(id=rid, ttl_ms=t, session=s)
            )
            if not isinstance(resp, p.LeaseResponse):
                continue
            lease, ttl = resp.lease, resp.ttl_ms / 1000
            self.checker.lease_granted(lease, resp.ttl_ms, invoked, at)
            put = p.PutOp(key=b"lease/%d" % lease, value=name.encode(), lease=lease)
            await self.session_write(
                rng, session, lambda rid, s, op=put: p.Txn(id=rid, success=(op,), session=s)
            )
            until = self.loop.time() + rng.uniform(0, 3 * ttl)
            while self.loop.time() < min(until, self.load_end):
                await asyncio.sleep(ttl / 3 * rng.uniform(0.5, 1.0))
                if not await self.keepalive(rng, lease):
                    break
            self.checker.abandoned(lease)
            await asyncio.sleep(rng.uniform(0, 0.5))

    async def keepalive(self, rng: random.Random, lease: int) -> bool:
        """One keep-alive, following redirects; False once the lease is gone."""
        for _ in range(3):
            invoked, at = self.loop.time(), self.counters()
            nid = self.pick(rng)
            resp = await self.call(nid, p.LeaseKeepAlive(id=self.next_id(), lease=lease), rng)
            if isinstance(resp, p.LeaseResponse):
                self.leader_guess = nid
                self.checker.keepalive_acked(lease, invoked, at)
                return True
            if isinstance(resp, p.ErrorResponse):
                if resp.code is p.Code.NOT_FOUND:
                    return False
                if resp.code is p.Code.NOT_LEADER:
                    self.leader_guess = resp.leader
        return True

    async def admin(self, rng: random.Random) -> None:
        """Disarm the alarms now and then, wherever the leader is."""
        while self.loop.time() < self.load_end:
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            nid = self.pick(rng)
            resp = await self.call(nid, p.AlarmDisarm(id=self.next_id()), rng)
            if isinstance(resp, p.AlarmsResponse):
                self.disarms += 1
                self.note(f"alarms disarmed at {nid}")
            elif isinstance(resp, p.ErrorResponse) and resp.code is p.Code.NOT_LEADER:
                self.leader_guess = resp.leader

    # ---- observation ----------------------------------------------------------------------

    def counters(self) -> tuple[int, float]:
        return self.checker.leader_changes, self.checker.unavailable

    def sample(self) -> None:
        """Follow the true leader (the live leader of the highest term) for the lease
        bound, then check it. Time counts as without a leader when there is none, or
        when it cannot commit: fewer than a quorum of nodes (itself included) are up,
        reachable both ways and not waiting on a stalled disk."""
        now = self.loop.time()
        dt, self._last_sample = now - self._last_sample, now
        leaders = [(n.term, n.id) for n in self.nodes.values() if n.role == "leader"]
        leader = max(leaders) if leaders else None
        if leader is None or not self._can_commit(leader[1], now):
            self.checker.unavailable += dt
        if leader is not None and leader != self._leader:
            self._leader = leader
            self.checker.leader_changes += 1
        self.checker.check_late()

    def _can_commit(self, leader: NodeId, now: float) -> bool:
        cut = self.net.cut_links
        working = [
            nid
            for nid, n in self.nodes.items()
            if n.alive
            and n.stall_until <= now
            and (nid == leader or ((leader, nid) not in cut and (nid, leader) not in cut))
        ]
        return leader in working and len(working) > len(self.ids) // 2

    def note(self, line: str) -> None:
        self.trace.append(f"{self.loop.time():9.3f} {line}")

    # ---- faults ---------------------------------------------------------------------------

    def alive_ids(self) -> list[NodeId]:
        return [n for n in self.ids if self.nodes[n].alive]

    def crash(self, nid: NodeId, power_loss: bool) -> None:
        self.nodes[nid].crash(power_loss)
        self.note(f"crash {nid}{' (power loss)' if power_loss else ''}")

    async def nemesis(self, rng: random.Random) -> None:
        minority = (len(self.ids) - 1) // 2
        kinds = self.params.faults
        while kinds and self.loop.time() < self.load_end - 3:
            await asyncio.sleep(rng.uniform(*self.params.fault_every_s))
            kind = rng.choice(kinds)
            nid = rng.choice(self.ids)
            node = self.nodes[nid]
            if kind == "crash" and node.alive and len(self.alive_ids()) > len(self.ids) - minority:
                self.crash(nid, power_loss=rng.random() < 0.5)
                self.loop.call_later(rng.uniform(*self.params.down_s), self.start_node, nid)
            elif kind == "partition":
                group = rng.sample(self.ids, rng.randint(1, minority))
                pid = self.net.split([group, [n for n in self.ids if n not in group]])
                self.note(f"partition {sorted(group)} away")
                self.loop.call_later(rng.uniform(0.5, 4.0), self.net.heal, pid)
            elif kind == "stall":
                node.stall_until = self.loop.time() + rng.uniform(1.0, 5.0)
                self.note(f"stall {nid}'s disk until {node.stall_until:.3f}")
            elif kind == "clock":
                if rng.random() < 0.5:
                    step = rng.choice([-1, 1]) * rng.uniform(1, 3600)
                    node.clock.wall_offset += step
                    self.note(f"step {nid}'s wall clock by {step:+.1f}s")
                else:
                    node.clock.set_drift(rng.uniform(-0.01, 0.01))
                    self.note(f"{nid}'s clock drifts {node.clock.drift:+.4f}")
            elif kind == "transfer" and node.alive:
                leader = next((n for n in self.nodes.values() if n.role == "leader"), None)
                if leader is not None and leader.engine is not None and leader.id != nid:
                    leader.engine.transfer_leader(nid)
                    self.note(f"transfer leadership {leader.id} -> {nid}")

    def heal(self) -> None:
        self.net.heal()
        for nid, node in self.nodes.items():
            node.stall_until = 0.0
            self.start_node(nid)
        self.note("heal everything")

    # ---- running ----------------------------------------------------------------------------

    async def _main(self, script: Script | None) -> None:
        for nid in self.ids:
            self.start_node(nid)
        rng = self.rng
        tasks = [
            self.loop.create_task(self.writer(f"w{i}", random.Random(rng.getrandbits(64))))
            for i in range(self.params.writers)
        ]
        tasks += [
            self.loop.create_task(self.leaser(f"l{i}", random.Random(rng.getrandbits(64))))
            for i in range(self.params.leasers)
        ]
        fault_rng = random.Random(rng.getrandbits(64))
        tasks.append(self.loop.create_task(script(self) if script else self.nemesis(fault_rng)))
        if self.params.quota_bytes is not None:
            admin_rng = random.Random(rng.getrandbits(64))
            tasks.append(self.loop.create_task(self.admin(admin_rng)))
        healed = False
        give_up = self.load_end + self.params.max_quiet_s
        while self.checker.violation is None:
            await asyncio.sleep(0.05)
            now = self.loop.time()
            if now >= self.load_end and not healed:
                self.heal()
                healed = True
            try:
                self.sample()
            except Violation:
                break
            leases = self.checker.leases.values()
            if healed and all(r.revoked_at is not None for r in leases):
                break
            if now > give_up:
                self.checker.fail("no-end", "abandoned leases still alive at the end")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def run(self, script: Script | None = None) -> RunResult:
        quiet = [logging.getLogger(n) for n in ("raft", "kvstore")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.CRITICAL)
        loop = self.loop
        try:
            loop.run_until_complete(self._main(script))
        except Violation:
            pass
        finally:
            for lg, level in zip(quiet, levels, strict=True):
                lg.setLevel(level)
            self._teardown()
        stats = dict(self.checker.stats)
        stats["session_expired"] = self.session_expired
        stats["nospace"], stats["disarms"] = self.nospace, self.disarms
        return RunResult(self.seed, self.checker.violation, loop.time(), stats, self.trace)

    def _teardown(self) -> None:
        loop = self.loop
        for node in self.nodes.values():
            if node.alive:
                node.crash(power_loss=False)
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def run_seed(seed: int, params: SimParams | None = None, script: Script | None = None) -> RunResult:
    return KVSim(seed, params).run(script)
