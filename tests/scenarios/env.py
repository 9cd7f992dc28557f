"""InteractionEnv: RawNodes driven step by step by scenario commands (etcd's rafttest).

Why step by step: a scenario spells out which Ready is handled and which messages are
delivered when, so its golden output pins one exact interleaving. The output of a
command is everything that happened during it, in order: the nodes' own trace lines,
``describe_ready`` of each Ready handled, ``describe_message`` of each delivery.

Nodes are named ``n1, n2, ...``; commands accept ``1`` or ``n1``. Each node has its own
trace sink, its own seeded ``random.Random`` and its own queue of incoming messages.
The "application" of a node is the concatenation of the data of its applied entries,
so ``compact`` snapshots something real and a restored snapshot restores it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Restored
from raft.describe import describe_bytes, describe_entry, describe_message, describe_ready
from raft.errors import RaftError
from raft.messages import Message
from raft.types import ConfChange, ConfChangeKind, EntryKind, NodeId, Role
from tests.raft.core.network import Disk
from tests.scenarios.datadriven import TestCase

MAX_STABILIZE_ROUNDS = 200
CONF_KINDS = {
    "add-voter": ConfChangeKind.ADD_VOTER,
    "add-learner": ConfChangeKind.ADD_LEARNER,
    "remove": ConfChangeKind.REMOVE_NODE,
}
CONFIG_ARGS = {  # add-nodes key=value -> Config field
    "pre-vote": "pre_vote",
    "check-quorum": "check_quorum",
    "election": "election_ticks",
    "heartbeat": "heartbeat_ticks",
    "max-msg-entries": "max_msg_entries",
    "snapshot-chunk-bytes": "snapshot_chunk_bytes",
}


def node_id(word: str) -> NodeId:
    return word if word.startswith("n") else f"n{word}"


def _value(v: str) -> object:
    return {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)


class InteractionEnv:
    def __init__(self) -> None:
        self.nodes: dict[NodeId, RawNode] = {}
        self.disks: dict[NodeId, Disk] = {}
        self.configs: dict[NodeId, Config] = {}
        self.state: dict[NodeId, bytes] = {}  # each node's "application"
        self.queues: dict[NodeId, list[Message]] = {}
        self.groups: list[set[NodeId]] | None = None
        self.starts: dict[NodeId, int] = {}
        self.out: list[str] = []
        self.silent = False  # `log-level none`: run setup commands without output

    # ---- dispatch ---------------------------------------------------------------

    def handle(self, case: TestCase) -> str:
        self.out = []
        handler: Callable[[TestCase], None] | None = getattr(
            self, "cmd_" + case.cmd.replace("-", "_"), None
        )
        if handler is None:
            raise ValueError(f"{case.pos}: unknown command {case.cmd!r}")
        try:
            handler(case)
        except RaftError as e:
            self.out.append(f"error: {type(e).__name__}: {e}")
        if self.silent and case.cmd != "log-level":
            return "ok"
        return "\n".join(self.out) if self.out else "ok"

    def cmd_log_level(self, case: TestCase) -> None:
        """``log-level none|all``: hide the output of setup steps (etcd does the same);
        a following ``raft-state`` shows where the setup left the cluster."""
        self.silent = case.args[0].key == "none"

    def _positional(self, case: TestCase) -> list[NodeId]:
        return [node_id(a.key) for a in case.args if not a.vals and a.key[0].isalnum()]

    def _ids(self, case: TestCase) -> list[NodeId]:
        return self._positional(case) or sorted(self.nodes, key=lambda n: int(n[1:]))

    def _sink(self, node: NodeId) -> Callable[[str], None]:
        # Late-bound: ``self.out`` is replaced at each command. The core already
        # prefixes its lines with the node id.
        return lambda line: self.out.append(line)

    def _start(self, node: NodeId) -> None:
        disk = self.disks[node]
        self.starts[node] = self.starts.get(node, 0) + 1
        rng = random.Random(f"{node}/{self.starts[node]}")
        self.nodes[node] = RawNode(self.configs[node], disk.restored(), rng, self._sink(node))
        self.queues.setdefault(node, [])

    # ---- cluster setup ----------------------------------------------------------

    def cmd_add_nodes(self, case: TestCase) -> None:
        """``add-nodes N [voters=1,2] [learners=3] [pre-vote=false ...]``: new nodes are
        founders of the given membership (default: all new nodes are voters when the
        cluster is empty) or, when joining an existing cluster, start empty."""
        count = int(case.args[0].key)
        first = len(self.disks) + 1
        new = [f"n{i}" for i in range(first, first + count)]
        voters, learners = case.arg("voters"), case.arg("learners")
        opts = {CONFIG_ARGS[a.key]: _value(a.vals[0]) for a in case.args if a.key in CONFIG_ARGS}
        if voters or learners or not self.disks:
            vs = {node_id(v) for v in voters.vals} if voters else set(new)
            ls = frozenset(node_id(v) for v in learners.vals) if learners else frozenset()
            boot: Restored | None = Restored.bootstrap(vs, ls)
        else:
            boot = None
        for n in new:
            if boot is None:
                self.disks[n] = Disk()
            else:
                applied = len(boot.entries)
                self.disks[n] = Disk(boot.hard_state, boot.snapshot, list(boot.entries), applied)
            self.configs[n] = Config(id=n, applied=self.disks[n].applied, **opts)  # type: ignore[arg-type]
            self.state[n] = b""
            self._start(n)

    def cmd_crash(self, case: TestCase) -> None:
        """Lose everything volatile, including messages queued for the node."""
        for n in self._ids(case):
            del self.nodes[n]
            self.queues[n] = []
            self.out.append(f"{n} crashed")

    def cmd_restart(self, case: TestCase) -> None:
        """Start again from what was persisted (the disk) and applied (the state)."""
        for n in self._ids(case):
            self.configs[n] = Config(
                **{
                    f: getattr(self.configs[n], f)
                    for f in Config.__dataclass_fields__
                    if f != "applied"
                },
                applied=self.disks[n].applied,
            )
            self._start(n)

    def cmd_partition(self, case: TestCase) -> None:
        """``partition 1,2/3``: messages between groups are dropped on delivery."""
        groups = " ".join(a.key + ("=" + ",".join(a.vals) if a.vals else "") for a in case.args)
        self.groups = [{node_id(w) for w in g.split(",") if w} for g in groups.split("/")]
        self.out.append("partitioned " + " | ".join(" ".join(sorted(g)) for g in self.groups))

    def cmd_heal(self, case: TestCase) -> None:
        self.groups = None
        self.out.append("healed")

    # ---- inputs -----------------------------------------------------------------

    def cmd_campaign(self, case: TestCase) -> None:
        for n in self._ids(case):
            self.nodes[n].campaign()

    def cmd_tick(self, case: TestCase) -> None:
        """``tick ID [n]``: tick one node n times (default once)."""
        n = node_id(case.args[0].key)
        times = int(case.args[1].key) if len(case.args) > 1 else 1
        for _ in range(times):
            self.nodes[n].tick()

    def cmd_tick_election(self, case: TestCase) -> None:
        """Tick exactly until the node's (randomized) election timeout fires; a leader
        ticks one base election timeout (a check-quorum round)."""
        for n in self._ids(case):
            raft = self.nodes[n]._raft
            if raft.role is Role.LEADER:
                times = raft.cfg.election_ticks - raft.election_elapsed
            else:
                times = max(1, raft.randomized_timeout - raft.election_elapsed)
            for _ in range(times):
                self.nodes[n].tick()

    def cmd_propose(self, case: TestCase) -> None:
        n, data = node_id(case.args[0].key), case.args[1].key
        self.out.append(f"{n} proposed at index {self.nodes[n].propose(data.encode())}")

    def cmd_propose_conf_change(self, case: TestCase) -> None:
        n, kind, target = (a.key for a in case.args[:3])
        cc = ConfChange(CONF_KINDS[kind], node_id(target))
        index = self.nodes[node_id(n)].propose_conf_change(cc)
        self.out.append(f"{node_id(n)} proposed {kind} {node_id(target)} at index {index}")

    def cmd_read_index(self, case: TestCase) -> None:
        self.nodes[node_id(case.args[0].key)].read_index(case.args[1].key.encode())

    def cmd_transfer_leader(self, case: TestCase) -> None:
        self.nodes[node_id(case.args[0].key)].transfer_leader(node_id(case.args[1].key))

    def cmd_compact(self, case: TestCase) -> None:
        """``compact ID INDEX``: snapshot the application at INDEX (<= applied), persist
        it, then let the core compact its log."""
        n, index = node_id(case.args[0].key), int(case.args[1].key)
        rn = self.nodes[n]
        rn.create_snapshot(index, self.state[n])
        snap = rn._raft.log.snapshot
        disk = self.disks[n]
        disk.snapshot = snap
        disk.entries = [e for e in disk.entries if e.index > index]

    # ---- the Ready loop ---------------------------------------------------------

    def _process_ready(self, n: NodeId) -> None:
        rn = self.nodes[n]
        rd = rn.ready()
        self.out.append(f"> {n} handling Ready")
        self.out.extend("  " + line for line in describe_ready(rd).split("\n"))
        disk = self.disks[n]
        disk.save(rd)  # persist ...
        for m in rd.messages:  # ... then send (a crashed node receives nothing) ...
            if m.dst in self.nodes or m.dst not in self.disks:
                self.queues.setdefault(m.dst, []).append(m)
        if rd.snapshot is not None:  # ... then apply
            self.state[n] = rd.snapshot.data
            disk.applied = max(disk.applied, rd.snapshot.meta.index)
        for e in rd.committed_entries:
            if e.index > disk.applied:
                disk.applied = e.index
                if e.kind is EntryKind.NORMAL:
                    self.state[n] += e.data
        rn.advance(rd)

    def cmd_process_ready(self, case: TestCase) -> None:
        for n in self._ids(case):
            self._process_ready(n)

    def _blocked(self, m: Message) -> bool:
        if m.dst not in self.nodes:
            return True
        if self.groups is None:
            return False
        return not any(m.src in g and m.dst in g for g in self.groups)

    def _deliver(self, n: NodeId, drop: bool = False) -> bool:
        msgs, self.queues[n] = self.queues.get(n, []), []
        if not msgs:
            return False
        self.out.append(f"> {n} receiving messages")
        for m in msgs:
            if drop or self._blocked(m):
                self.out.append(f"  dropped: {describe_message(m)}")
                continue
            self.out.append(f"  {describe_message(m)}")
            self.nodes[n].step(m)
        return True

    def cmd_deliver_msgs(self, case: TestCase) -> None:
        """``deliver-msgs [ID...] [drop=ID,...]``: deliver (or drop) queued messages."""
        dropped = case.arg("drop")
        drop = [node_id(v) for v in dropped.vals] if dropped else []
        for n in drop:
            self._deliver(n, drop=True)
        targets = self._positional(case) or ([] if drop else self._ids(case))
        for n in targets:
            if n not in drop:
                self._deliver(n)

    def cmd_stabilize(self, case: TestCase) -> None:
        """Handle Readies and deliver messages among the given nodes until quiet."""
        ids = [n for n in self._ids(case) if n in self.nodes]
        for _ in range(MAX_STABILIZE_ROUNDS):
            busy = False
            for n in ids:
                if self.nodes[n].has_ready():
                    self._process_ready(n)
                    busy = True
            for n in ids:
                busy |= self._deliver(n)
            if not busy:
                return
        raise AssertionError(f"not stable after {MAX_STABILIZE_ROUNDS} rounds")

    # ---- observation ------------------------------------------------------------

    def cmd_raft_state(self, case: TestCase) -> None:
        for n in sorted(self.disks, key=lambda n: int(n[1:])):
            if n not in self.nodes:
                self.out.append(f"{n}: crashed")
                continue
            st = self.nodes[n].status()
            self.out.append(
                f"{n}: {st.role.value} term={st.term} leader={st.leader or '-'}"
                f" commit={st.commit} applied={st.applied} last={st.last_index}"
            )

    def cmd_raft_log(self, case: TestCase) -> None:
        n = node_id(case.args[0].key)
        st = self.nodes[n].status()
        if st.first_index > 1:
            meta = self.nodes[n]._raft.log.snapshot.meta
            data = describe_bytes(self.nodes[n]._raft.log.snapshot.data)
            self.out.append(f"snapshot {meta.term}/{meta.index} data={data}")
        for e in self.nodes[n].entries(st.first_index, st.last_index + 1):
            self.out.append(describe_entry(e))
