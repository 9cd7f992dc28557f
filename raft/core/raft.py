"""The Raft role state machine: elections, replication, reads, transfers, membership.

Theory of operation
-------------------
``Raft`` is driven by :class:`raft.core.raw_node.RawNode` and is never touched by
I/O. Every input ends in one of a few funnels: ``tick`` (time), ``step`` (a message
from a peer) and the local requests (``propose``, ``read_index``, ...). Output is
accumulated — messages in ``self.msgs``, entries in the log above ``stabled``, read
states in ``self.read_states`` — and collected by :meth:`ready` as one batch.

``step`` first applies the rules that depend only on terms (dissertation §3.3, plus
pre-vote §9.6 and the leader lease of check-quorum §6.2), then dispatches on role.

Replication is lazy: proposals and read requests only mark the leader dirty, and
:meth:`ready` broadcasts once, so everything proposed between two ``ready()`` calls
travels in one append per follower (batching) and is fsynced once (group commit).

The leader counts itself towards a commit only for entries acknowledged durable by
``advance``, so nothing is committed that a majority has not persisted.

Membership changes are single-server changes, one in flight at a time, taking effect
when the change entry is applied (docs/ARCHITECTURE.md, "Membership"). A new leader
may propose one only after its own no-op entry is applied, i.e. after it committed
an entry of its term (the fix for the single-server-change bug reported in 2015).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

from raft.config import Config
from raft.core import quorum
from raft.core.log import RaftLog
from raft.core.progress import Inflights, Progress, ProgressState
from raft.core.read_only import ReadOnly, ReadRound
from raft.core.ready import PeerStatus, Ready, Restored, Status
from raft.errors import InvariantViolation, NotLeader, ProposalDropped
from raft.messages import (
    AppendEntries,
    AppendResp,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    Message,
    ReadIndex,
    ReadIndexResp,
    RequestVote,
    SnapshotResp,
    TimeoutNow,
    VoteResp,
)
from raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    Term,
)

_LEADER_MESSAGES = (AppendEntries, Heartbeat, InstallSnapshot)


MAX_FORWARDED_READS = 4096


class Raft:
    def __init__(
        self,
        config: Config,
        restored: Restored,
        rng: random.Random,
        trace: Callable[[str], None] | None,
        snapshot_check: Callable[[Index, bytes], str | None] | None = None,
    ) -> None:
        self.id = config.id
        self.cfg = config
        self._rng = rng
        self._trace = trace
        # The application's verdict on a leader's snapshot before it is adopted (None:
        # fine; else why not), and the checksum of the snapshot this node sends.
        self._snapshot_check = snapshot_check
        self._sent_crc: tuple[Index, int] = (0, 0)
        hs = restored.hard_state
        self.log = RaftLog(restored.snapshot, restored.entries, hs.commit)
        self.term: Term = hs.term
        self.vote: NodeId | None = hs.vote
        self.lead: NodeId | None = None
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.votes: dict[NodeId, bool] = {}
        self.prs: dict[NodeId, Progress] = {}
        self.read_only = ReadOnly()
        # Contexts of reads this node forwarded to a leader, in this life only: an
        # answer to anything else (a request of a previous incarnation, delivered
        # late) must not become a ReadState. Oldest first; bounded (a forwarded read
        # whose answer never came is long abandoned by its caller).
        self.forwarded_reads: dict[bytes, None] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.lead_transferee: NodeId | None = None
        self.pending_conf_index: Index = 0
        self.uncommitted_bytes = 0
        self._append_dirty = False  # leader: new entries to broadcast at ready()
        # Follower: snapshot chunks received so far (meta, bytes).
        self._incoming: tuple[SnapshotMeta, bytearray] | None = None
        # Membership as of each applied change, for snapshots taken below `applied`.
        self.conf = restored.snapshot.meta.conf
        self._conf_history: list[tuple[Index, ConfState]] = [(self.log.snapshot_index, self.conf)]
        applied = max(config.applied, self.log.snapshot_index)
        if applied > self.log.committed:
            raise InvariantViolation(f"applied {applied} beyond commit {self.log.committed}")
        for e in self.log.slice(self.log.first_index, applied + 1):
            if e.kind is EntryKind.CONF_CHANGE:
                self._apply_conf(e)
        self.log.applied = applied
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._prev_hard = hs
        self._reset(self.term)
        self._debug(f"started term={self.term} commit={self.log.committed} applied={applied}")

    # ---- small helpers -----------------------------------------------------------

    def _debug(self, text: str) -> None:
        if self._trace is not None:
            self._trace(f"{self.id}: {text}")

    def _send(self, msg: Message) -> None:
        self.msgs.append(msg)

    @property
    def promotable(self) -> bool:
        return self.id in self.conf.voters and self.log.pending_snapshot is None

    def _is_quorum(self, nodes: set[NodeId]) -> bool:
        return quorum.has_quorum(self.conf.voters, nodes)

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_none(self.log.committed) == self.term

    # ---- role transitions --------------------------------------------------------

    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._rng.randrange(
            self.cfg.election_ticks, 2 * self.cfg.election_ticks
        )
        self.lead_transferee = None
        self.votes = {}
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only = ReadOnly()
        self._append_dirty = False
        self.prs = {n: self._new_progress(n) for n in self.conf.members}

    def _new_progress(self, node: NodeId) -> Progress:
        pr = Progress(
            match=0,
            next=self.log.last_index + 1,
            inflights=Inflights(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes),
            recent_active=True,
        )
        if node == self.id:
            pr.match = self.log.stabled
        return pr

    def become_follower(self, term: Term, lead: NodeId | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._debug(f"became follower at term {term} (leader {lead})")

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote: a node that cannot win never
        # disrupts the cluster by bumping terms (§9.6).
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = None
        self._debug(f"became pre-candidate at term {self.term}")

    def _become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantViolation("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._debug(f"became candidate at term {self.term}")

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        # _reset left every follower probing from our last index + 1 (Figure 2).
        self.prs[self.id].become_replicate()
        # The no-op commits every earlier entry once it commits (§5.4.2), and gates
        # membership changes until this leader has committed in its own term.
        noop = Entry(self.term, self.log.last_index + 1)
        self.log.append([noop])
        self.pending_conf_index = noop.index
        self._append_dirty = True
        self._debug(f"became leader at term {self.term}")

    # ---- elections ---------------------------------------------------------------

    def campaign(self, transfer: bool = False, skip_pre_vote: bool = False) -> None:
        """Start an election. ``transfer`` (leadership transfer) asks voters to ignore
        their leader lease; ``skip_pre_vote`` follows a won pre-vote."""
        if not self.promotable:
            self._debug("cannot campaign: not a voter (or snapshot pending)")
            return
        if self.role is Role.LEADER:
            return
        if self._unapplied_conf_change():
            # etcd's guard (raft.go hup): until this node has applied every committed
            # membership change it would count votes in a configuration the cluster
            # has already left.
            self._debug("cannot campaign: committed conf changes are not applied yet")
            return
        if self.cfg.pre_vote and not (transfer or skip_pre_vote):
            self._become_pre_candidate()
            vote_term, pre = self.term + 1, True
        else:
            self._become_candidate()
            vote_term, pre = self.term, False
        self.votes[self.id] = True
        if self._tally_votes():
            return
        last = self.log.last_id
        for node in sorted(self.conf.voters - {self.id}):
            self._send(
                RequestVote(
                    src=self.id,
                    dst=node,
                    term=vote_term,
                    last_index=last.index,
                    last_term=last.term,
                    pre_vote=pre,
                    transfer=transfer,
                )
            )

    def _unapplied_conf_change(self) -> bool:
        """A membership change is committed but not yet applied here."""
        lo = max(self.log.applied, self.log.snapshot_index) + 1
        if self.log.committed < lo:
            return False
        pending = self.log.slice(lo, self.log.committed + 1)
        return any(e.kind is EntryKind.CONF_CHANGE for e in pending)

    def _tally_votes(self) -> bool:
        """Act on the election outcome; True when it was decided."""
        result = quorum.vote_result(self.conf.voters, self.votes)
        if result is quorum.VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self.campaign(skip_pre_vote=True)
            else:
                self._become_leader()
            return True
        if result is quorum.VoteResult.LOST:
            self.become_follower(self.term, None)
            return True
        return False

    def _handle_vote_request(self, m: RequestVote) -> None:
        # A node that knows no configuration at all started empty to join a cluster,
        # perhaps with its data wiped after its removal: it remembers none of the votes
        # it gave, so it gives none until a leader has replicated the configuration to
        # it. (Found by the fault harness: a member restarted with a configuration from
        # before the removal won an election with the wiped node's vote, beside the
        # real leader, and acknowledged writes that were later lost.)
        knows_cluster = bool(self.conf.voters or self.conf.learners)
        can_vote = knows_cluster and (
            self.vote == m.src
            or (self.vote is None and self.lead is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            # A granted pre-vote answers in the candidate's future term; see step().
            self._send(
                VoteResp(
                    src=self.id,
                    dst=m.src,
                    term=m.term,
                    granted=True,
                    pre_vote=m.pre_vote,
                )
            )
            if not m.pre_vote:
                self.election_elapsed = 0
                self.vote = m.src
            self._debug(f"granted {'pre-' if m.pre_vote else ''}vote to {m.src} at {m.term}")
        else:
            self._send(
                VoteResp(src=self.id, dst=m.src, term=self.term, granted=False, pre_vote=m.pre_vote)
            )

    # ---- time --------------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self.election_elapsed += 1
            if self.promotable and self.election_elapsed >= self.randomized_timeout:
                self.election_elapsed = 0
                self.campaign()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._check_quorum_active():
                self._debug("stepped down: no quorum heard from within an election timeout")
                self.become_follower(self.term, None)
                return
            if self.lead_transferee is not None:
                self._debug(f"aborted transfer to {self.lead_transferee}: timed out")
                self.lead_transferee = None
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _check_quorum_active(self) -> bool:
        active = {n for n, pr in self.prs.items() if pr.recent_active or n == self.id}
        for n, pr in self.prs.items():
            if n != self.id:
                pr.recent_active = False
        return self._is_quorum(active)

    # ---- step: term rules first, then per role -----------------------------------

    def step(self, m: Message) -> None:
        if m.dst != self.id:
            raise InvariantViolation(f"{self.id} got a message for {m.dst}")
        if m.term > self.term and not self._step_higher_term(m):
            return
        if m.term < self.term:
            self._step_lower_term(m)
            return
        if isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_higher_term(self, m: Message) -> bool:
        """Apply §3.3's "newer term wins"; False when the message is to be dropped."""
        if isinstance(m, RequestVote):
            in_lease = (
                self.cfg.check_quorum
                and self.lead is not None
                and self.election_elapsed < self.cfg.election_ticks
            )
            if in_lease and not m.transfer:
                # A live leader exists: a rejoining node must not disrupt it (§6.2).
                self._debug(f"ignored vote request from {m.src} at {m.term}: leader lease")
                return False
            if m.pre_vote:
                return True  # never change term on a pre-vote
        if isinstance(m, VoteResp) and m.pre_vote and m.granted:
            return True  # our own future term; we bump it only when the pre-vote wins
        lead = m.src if isinstance(m, _LEADER_MESSAGES) else None
        self.become_follower(m.term, lead)
        return True

    def _step_lower_term(self, m: Message) -> None:
        if isinstance(m, _LEADER_MESSAGES) and (self.cfg.check_quorum or self.cfg.pre_vote):
            # A deposed leader (or one cut off while we moved on) learns our term and
            # steps down; without this, pre-vote can deadlock (etcd issue 8501).
            self._send(AppendResp(src=self.id, dst=m.src, term=self.term, index=0))
        elif isinstance(m, RequestVote) and m.pre_vote:
            self._send(
                VoteResp(src=self.id, dst=m.src, term=self.term, granted=False, pre_vote=True)
            )
        else:
            self._debug(f"ignored stale {type(m).__name__} from {m.src} at term {m.term}")

    def _step_follower(self, m: Message) -> None:
        match m:
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                self.election_elapsed = 0
                self.lead = m.src
                if isinstance(m, AppendEntries):
                    self._handle_append(m)
                elif isinstance(m, Heartbeat):
                    self._handle_heartbeat(m)
                else:
                    self._handle_snapshot_chunk(m)
            case TimeoutNow():
                self._debug(f"campaigning at once: leadership transfer from {m.src}")
                self.campaign(transfer=True)
            case ReadIndexResp():
                if m.ctx not in self.forwarded_reads:
                    self._debug(f"ignored a read answer for a request not issued here: {m.ctx!r}")
                else:
                    del self.forwarded_reads[m.ctx]
                    if not m.reject:
                        self.read_states.append(ReadState(m.index, m.ctx))
            case ReadIndex():
                self._reject_read(m)
            case _:
                self._debug(f"follower ignored {type(m).__name__} from {m.src}")

    def _step_candidate(self, m: Message) -> None:
        match m:
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                self.become_follower(m.term, m.src)
                self._step_follower(m)
            case VoteResp() if m.pre_vote == (self.role is Role.PRE_CANDIDATE):
                self.votes.setdefault(m.src, m.granted)
                self._tally_votes()
            case ReadIndex():
                self._reject_read(m)
            case _:
                self._debug(f"candidate ignored {type(m).__name__} from {m.src}")

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.src)
        match m:
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                raise InvariantViolation(
                    f"two leaders in term {self.term}: this node ({self.id}) and {m.src}, "
                    f"which sent {type(m).__name__}"
                )
            case ReadIndex():
                self._leader_read(m.ctx, m.src)
            case AppendResp() if pr is not None:
                pr.recent_active = True
                self._handle_append_resp(m, pr)
            case HeartbeatResp() if pr is not None:
                pr.recent_active = True
                self._handle_heartbeat_resp(m, pr)
            case SnapshotResp() if pr is not None:
                pr.recent_active = True
                self._handle_snapshot_resp(m, pr)
            case _:
                self._debug(f"leader ignored {type(m).__name__} from {m.src}")

    # ---- replication: leader side ------------------------------------------------

    def _maybe_send_append(self, to: NodeId, send_if_empty: bool) -> bool:
        """Send ``to`` the entries it lacks, or a snapshot if they are compacted away.
        Returns whether a message was sent."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term_or_none(prev_index)
        if prev_term is None:
            self._start_snapshot(to, pr)
            return True
        ents = self.log.entries_from(pr.next, self.cfg.max_msg_entries, self.cfg.max_msg_bytes)
        if not ents and not send_if_empty:
            return False
        self._send(
            AppendEntries(
                src=self.id,
                dst=to,
                term=self.term,
                prev_index=prev_index,
                prev_term=prev_term,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(ents[-1].index if ents else None, sum(e.size for e in ents))
        return True

    def _send_all_appends(self, to: NodeId) -> None:
        """Fill the follower's pipeline: the first append even if empty, then more
        while entries remain and the in-flight window allows."""
        if self._maybe_send_append(to, send_if_empty=True):
            while self._maybe_send_append(to, send_if_empty=False):
                pass

    def _bcast_append(self) -> None:
        for to in sorted(self.prs):
            if to != self.id:
                self._send_all_appends(to)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        ctx = ctx or self._latest_read_ctx()
        for to in sorted(self.prs):
            if to == self.id:
                continue
            pr = self.prs[to]
            commit = min(pr.match, self.log.committed)
            self._send(Heartbeat(src=self.id, dst=to, term=self.term, commit=commit, ctx=ctx))

    def _handle_append_resp(self, m: AppendResp, pr: Progress) -> None:
        if m.reject:
            hint = m.hint_index
            if m.hint_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decr_to(m.index, hint):
                self._debug(f"{m.src} rejected {m.index}; probing from {pr.next}")
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_all_appends(m.src)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._append_dirty = True  # one broadcast of the new commit per batch
        if was_paused and not self._append_dirty:
            # A paused follower missed commit updates; the pending broadcast (if any)
            # tells it anyway, so send now only when none is due.
            self._send_all_appends(m.src)
        else:
            while self._maybe_send_append(m.src, send_if_empty=False):
                pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index:
            self._send_timeout_now(m.src)

    def _handle_heartbeat_resp(self, m: HeartbeatResp, pr: Progress) -> None:
        if pr.state is ProgressState.SNAPSHOT:
            # A chunk with no answer for a whole heartbeat round was probably lost.
            if pr.probe_sent:
                pr.probe_sent = False
            else:
                self._send_snapshot_chunk(m.src, pr)
        else:
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # Appends may have been lost: let one more go, so the follower either
                # acks (freeing the window) or rejects the gap (and we probe).
                pr.inflights.free_first()
            # PROBE sends even to a follower that looks caught up (report_unreachable,
            # or a follower that lost entries): its answer decides where replication
            # resumes.
            if pr.match < self.log.last_index or pr.state is ProgressState.PROBE:
                self._send_all_appends(m.src)
        if m.ctx and m.src in self.conf.voters:
            self.read_only.ack(int.from_bytes(m.ctx, "big"), m.src)
            self._release_reads()

    def _commit_allowed(self, index: Index) -> bool:
        """§5.4.2: only an entry of the leader's own term is committed by counting
        replicas; earlier entries commit with it, indirectly."""
        return self.log.term_or_none(index) == self.term

    def _maybe_commit(self) -> bool:
        match = {n: pr.match for n, pr in self.prs.items()}
        index = quorum.committed_index(self.conf.voters, match)
        if index > self.log.committed and self._commit_allowed(index):
            self.log.commit_to(index)
            return True
        return False

    # ---- replication: follower side ----------------------------------------------

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.log.committed:
            self._send(AppendResp(src=self.id, dst=m.src, term=self.term, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new is not None:
            self._send(AppendResp(src=self.id, dst=m.src, term=self.term, index=last_new))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.prev_index, self.log.last_index), m.prev_term
        )
        self._debug(f"rejected append at {m.prev_index}/{m.prev_term}; hint {hint_index}")
        self._send(
            AppendResp(
                src=self.id,
                dst=m.src,
                term=self.term,
                index=m.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        # The leader caps the commit at what we matched, so this never outruns our log.
        self.log.commit_to(min(m.commit, self.log.last_index))
        self._send(HeartbeatResp(src=self.id, dst=m.src, term=self.term, ctx=m.ctx))

    # ---- snapshots ---------------------------------------------------------------

    def _start_snapshot(self, to: NodeId, pr: Progress) -> None:
        pr.become_snapshot(self.log.snapshot.meta.index)
        self._debug(f"sending snapshot at {pr.pending_snapshot} to {to}")
        self._send_snapshot_chunk(to, pr)

    def _send_snapshot_chunk(self, to: NodeId, pr: Progress) -> None:
        snap = self.log.snapshot
        if snap.meta.index != pr.pending_snapshot:  # compacted again meanwhile: restart
            pr.become_snapshot(snap.meta.index)
        lo = pr.snapshot_offset
        data = snap.data[lo : lo + self.cfg.snapshot_chunk_bytes]
        if self._sent_crc[0] != snap.meta.index:
            self._sent_crc = (snap.meta.index, zlib.crc32(snap.data))
        self._send(
            InstallSnapshot(
                src=self.id,
                dst=to,
                term=self.term,
                meta=snap.meta,
                offset=lo,
                data=data,
                done=lo + len(data) >= len(snap.data),
                checksum=self._sent_crc[1],
            )
        )
        pr.probe_sent = True

    def _handle_snapshot_resp(self, m: SnapshotResp, pr: Progress) -> None:
        if pr.state is not ProgressState.SNAPSHOT or m.index != pr.pending_snapshot:
            return
        total = len(self.log.snapshot.data)
        if m.reject:
            pr.snapshot_offset = min(m.offset, total)
            self._send_snapshot_chunk(m.src, pr)
        elif pr.snapshot_offset < m.offset < total:  # stale or duplicate acks are ignored
            pr.snapshot_offset = m.offset
            self._send_snapshot_chunk(m.src, pr)

    def _handle_snapshot_chunk(self, m: InstallSnapshot) -> None:
        inc = self._incoming
        if m.offset == 0:
            inc = (m.meta, bytearray())
        elif inc is None or inc[0] != m.meta or len(inc[1]) != m.offset:
            have = len(inc[1]) if inc is not None and inc[0] == m.meta else 0
            self._send(
                SnapshotResp(
                    src=self.id,
                    dst=m.src,
                    term=self.term,
                    index=m.meta.index,
                    offset=have,
                    reject=True,
                )
            )
            return
        inc[1].extend(m.data)
        self._incoming = inc
        if not m.done:
            self._send(
                SnapshotResp(
                    src=self.id,
                    dst=m.src,
                    term=self.term,
                    index=m.meta.index,
                    offset=len(inc[1]),
                )
            )
            return
        self._incoming = None
        data = bytes(inc[1])
        problem = "checksum mismatch" if zlib.crc32(data) != m.checksum else None
        adopt = m.meta.index > self.log.committed and not self.log.matches(
            m.meta.index, m.meta.term
        )  # else _restore ignores the data: no need to decode it
        if problem is None and adopt and self._snapshot_check is not None:
            problem = self._snapshot_check(m.meta.index, data)
        if problem is not None:
            # Nothing was adopted or written; the leader starts the snapshot again.
            self._debug(f"refused snapshot at {m.meta.index} from {m.src}: {problem}")
            reject = SnapshotResp(
                src=self.id, dst=m.src, term=self.term, index=m.meta.index, offset=0, reject=True
            )
            self._send(reject)
            return
        self._restore(Snapshot(meta=m.meta, data=data))
        # Acknowledge only what is known to match the leader: the commit index (the
        # snapshot index after a restore). Entries past it were never checked against
        # the leader's log, so claiming them could commit a divergent tail.
        self._send(AppendResp(src=self.id, dst=m.src, term=self.term, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> None:
        """Adopt a leader's snapshot unless our log already covers it (§5.1)."""
        index = snap.meta.index
        if index <= self.log.committed:
            self._debug(f"ignored stale snapshot at {index} (commit {self.log.committed})")
            return
        if self.log.matches(index, snap.meta.term):
            self._debug(f"fast-forwarded commit to snapshot index {index}")
            self.log.commit_to(index)
            return
        self._debug(f"restoring snapshot at {index}/{snap.meta.term}")
        self.log.restore(snap)
        self.conf = snap.meta.conf
        self._conf_history = [(index, self.conf)]
        self.prs = {n: self._new_progress(n) for n in self.conf.members}

    def create_snapshot(self, index: Index, data: bytes) -> Snapshot:
        if self.log.pending_snapshot is not None or index <= self.log.snapshot_index:
            raise ProposalDropped(f"snapshot at {index} is out of date")
        meta = SnapshotMeta(index=index, term=self.log.term(index), conf=self._conf_at(index))
        snap = Snapshot(meta=meta, data=data)
        # Keep a catch-up margin below the snapshot: a follower a few entries behind
        # gets them by append instead of the whole snapshot (etcd's
        # SnapshotCatchUpEntries). The leader sends a snapshot only once its
        # follower's next entry falls below the margin (_maybe_send_append).
        self.log.compact(snap, self.cfg.snapshot_catchup_entries)
        while len(self._conf_history) > 1 and self._conf_history[1][0] <= index:
            del self._conf_history[0]
        kept = "" if self.log.offset == index else f" (snapshot at {index})"
        self._debug(f"compacted log through {self.log.offset}{kept}")
        return snap

    def _conf_at(self, index: Index) -> ConfState:
        conf = self._conf_history[0][1]
        for at, c in self._conf_history:
            if at > index:
                break
            conf = c
        return conf

    # ---- proposals and membership ------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if self.id not in self.conf.voters:
            raise ProposalDropped("this leader is being removed from the cluster")

    def _append_proposal(self, kind: EntryKind, data: bytes) -> Index:
        entry = Entry(self.term, self.log.last_index + 1, kind, data)
        if self.uncommitted_bytes + entry.size > self.cfg.max_uncommitted_bytes:
            raise ProposalDropped("too much uncommitted data; retry later")
        self.uncommitted_bytes += entry.size
        self.log.append([entry])
        self._append_dirty = True
        return entry.index

    def propose(self, data: bytes) -> Index:
        self._check_can_propose()
        return self._append_proposal(EntryKind.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> Index:
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped("a membership change (or this term's no-op) is pending")
        after = self.conf.apply(cc)
        if after == self.conf:
            raise ProposalDropped(f"{cc.kind.name} {cc.node} changes nothing")
        if not after.voters:
            raise ProposalDropped("cannot remove the last voter")
        index = self._append_proposal(EntryKind.CONF_CHANGE, cc.encode())
        self.pending_conf_index = index
        self._debug(f"proposed {cc.kind.name} {cc.node} at {index}")
        return index

    def _apply_conf(self, entry: Entry) -> None:
        cc = ConfChange.decode(entry.data)
        self.conf = self.conf.apply(cc)
        self._conf_history.append((entry.index, self.conf))
        self._debug(f"applied {cc.kind.name} {cc.node}: voters={sorted(self.conf.voters)}")
        for n in list(self.prs):
            if n not in self.conf.members:
                del self.prs[n]
        for n in sorted(self.conf.members - self.prs.keys()):
            self.prs[n] = self._new_progress(n)
        if self.role is not Role.LEADER:
            return
        if self.id not in self.conf.voters:
            self.become_follower(self.term, None)  # removed or demoted: let others lead
            return
        if self.lead_transferee is not None and self.lead_transferee not in self.conf.voters:
            self.lead_transferee = None
        self._maybe_commit()  # a smaller quorum may already hold more
        self._append_dirty = True  # tell new members, and everyone the new commit

    # ---- leadership transfer -----------------------------------------------------

    def transfer_leader(self, to: NodeId) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if to == self.id or to not in self.conf.voters:
            self._debug(f"ignored transfer to {to}: not another voter")
            return
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        self._debug(f"transferring leadership to {to}")
        if self.prs[to].match == self.log.last_index:
            self._send_timeout_now(to)
        else:
            self._send_all_appends(to)

    def _send_timeout_now(self, to: NodeId) -> None:
        self._send(TimeoutNow(src=self.id, dst=to, term=self.term))

    # ---- linearizable reads (§6.4) ------------------------------------------------

    def read_index(self, ctx: bytes) -> None:
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.lead is None:
            raise NotLeader(None)
        else:
            self.forwarded_reads[ctx] = None
            if len(self.forwarded_reads) > MAX_FORWARDED_READS:
                del self.forwarded_reads[next(iter(self.forwarded_reads))]
            self._send(ReadIndex(src=self.id, dst=self.lead, term=self.term, ctx=ctx))

    def _leader_read(self, ctx: bytes, requester: NodeId) -> None:
        """Queue a read; it joins the next heartbeat round (sent at ready())."""
        self.read_only.add(ctx, requester)

    def _reject_read(self, m: ReadIndex) -> None:
        self._send(
            ReadIndexResp(src=self.id, dst=m.src, term=self.term, ctx=m.ctx, index=0, reject=True)
        )

    def _latest_read_ctx(self) -> bytes:
        n = self.read_only.latest_round()
        return n.to_bytes(8, "big") if n else b""

    def _start_read_round(self) -> None:
        # Until an entry of this term commits, our commit index may be behind what a
        # previous leader committed; such reads wait (§6.4 step 1).
        if not self.read_only.waiting or not self._committed_entry_in_current_term():
            return
        rnd = self.read_only.start_round(self.log.committed, self.id)
        if rnd is None:
            return
        if self._is_quorum({self.id}):
            self._release_reads()
        else:
            self._bcast_heartbeat(rnd.number.to_bytes(8, "big"))

    def _release_reads(self) -> None:
        for rnd in self.read_only.release(self._is_quorum):
            self._serve_round(rnd)

    def _serve_round(self, rnd: ReadRound) -> None:
        for req in rnd.requests:
            if req.requester == self.id:
                self.read_states.append(ReadState(rnd.index, req.ctx))
            else:
                self._send(
                    ReadIndexResp(
                        src=self.id,
                        dst=req.requester,
                        term=self.term,
                        ctx=req.ctx,
                        index=rnd.index,
                    )
                )

    def report_unreachable(self, peer: NodeId) -> None:
        pr = self.prs.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    # ---- Ready -------------------------------------------------------------------

    def _flush(self) -> None:
        """Turn pending leader work into messages, once per batch."""
        if self.role is not Role.LEADER:
            return
        if self._append_dirty:
            self._append_dirty = False
            self._bcast_append()
        self._start_read_round()

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        return bool(
            self.msgs
            or self.read_states
            or (self.role is Role.LEADER and self._append_dirty)
            or (self.read_only.waiting and self._committed_entry_in_current_term())
            or self.log.pending_snapshot is not None
            or self.log.stabled < self.log.last_index
            or self.log.has_next_committed()
            # The same functions ready() uses, so the two can never disagree about
            # whether anything is pending (a mismatch would spin on empty batches).
            or self._hard_state() != self._prev_hard
            or SoftState(self.lead, self.role) != self._prev_soft
        )

    def ready(self) -> Ready:
        self._flush()
        soft = SoftState(self.lead, self.role)
        hard = self._hard_state()
        entries = self.log.unstable_entries()
        snapshot = self.log.pending_snapshot
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(self.msgs),
            committed_entries=self.log.next_committed(),
            read_states=tuple(self.read_states),
            must_sync=bool(
                entries
                or snapshot
                or hard.term != self._prev_hard.term
                or hard.vote != self._prev_hard.vote
            ),
        )
        self.msgs = []
        self.read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.log.snapshot_stable(rd.snapshot)
        if rd.entries:
            self.log.stable_to(rd.entries[-1].id)
            if self.role is Role.LEADER:
                self.prs[self.id].maybe_update(self.log.stabled)
                if self._maybe_commit():
                    self._append_dirty = True
        for e in rd.committed_entries:
            if e.index <= self.log.applied:
                continue  # already covered by a snapshot restored in this batch
            self.log.applied_to(e.index)
            if e.kind is EntryKind.CONF_CHANGE:
                self._apply_conf(e)
            if self.role is Role.LEADER:
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - e.size)

    def status(self) -> Status:
        progress = (
            {
                n: PeerStatus(pr.match, pr.next, pr.state.value, pr.recent_active)
                for n, pr in self.prs.items()
            }
            if self.role is Role.LEADER
            else {}
        )
        return Status(
            id=self.id,
            role=self.role,
            term=self.term,
            vote=self.vote,
            leader=self.lead,
            commit=self.log.committed,
            applied=self.log.applied,
            first_index=self.log.first_index,
            last_index=self.log.last_index,
            conf=self.conf,
            progress=progress,
            lead_transferee=self.lead_transferee,
        )
