"""The deterministic KV state machine behind ``raft.engine.StateMachine``.

Theory of operation. ``apply(index, bytes)`` decodes one command (kvstore/commands.py),
runs it against the versioned store (kvstore/mvcc.py) and returns a :class:`Result`.
Everything it reads is the current state and the command bytes: no clocks, no I/O, no
randomness, no iteration over unordered containers whose order could differ between
replicas. No replicated decision reads a clock: sessions are bounded by count, and a
lease ends only by a command in the log (a client's revoke, or the ``ExpireLease`` the
leader's lessor proposes when the lease ran out on the leader's monotonic clock,
kvstore/lessor.py).

Exactly once (dissertation §6.3). Each client session (``client_id``) keeps the
results of its requests that the client has not yet acknowledged. A retried request
(same ``client_id`` and ``seq``) whose result is cached gets that result back without
being applied again. ``ack_seq`` lets the state machine forget results: every
``seq <= ack_seq`` has been answered. Results are also bounded per session
(``max_results_per_session``): past the bound the lowest seq is dropped. Both moves
raise the session's ``floor``; the invariant is that every cached seq is above it.

A request with ``seq <= floor`` whose result is not cached is answered
``STALE_SEQ`` and *not* applied. It is either a duplicate of a request the client
already acknowledged -- a confused client, or a stale retry proposal committed after
the client moved on, and either way nobody is waiting for a real answer -- or a request
whose result was dropped because the client had more than the bound in flight. The
state machine cannot tell whether such a seq was ever applied (it keeps a floor, not a
set), so re-applying could apply it twice: the code is definite for *this* proposal (it
did nothing) but the client must treat the original request as indefinite.

Sessions are opened only by an explicit ``OpenSession`` command (the client's request
seq 1, whose answer it awaits before sending writes); a data command for an unknown
client_id gets ``SESSION_EXPIRED``: the session existed and was evicted (or never
existed), its cached results are gone, so the client must treat its outstanding
requests as indefinite and start a new session under a fresh client_id. (Until issue
9 a data command with seq 1 opened the session: evicted before a retry of that first
write, the retry reopened it and applied the write twice.) ``CloseSession`` ends one.

A cached result answers a retry only if the retry carries the same command (by
:func:`kvstore.commands.command_digest`): a reused seq with another command is refused
with ``SEQ_REUSED``, definite (nothing applied), instead of answering it with the
result of a different request.

Eviction is replicated state decided by count alone (dissertation §6.3's LRU bound):
when ``max_sessions`` are open, the least recently active session -- by log order, the
one whose last command is oldest -- makes room for a new one. The session table is kept
in that order. ``max_sessions`` must be identical on every replica. There is no idle
timeout: one would need a clock every replica agrees on, and a leader's wall clock is
not one (issue 9: a leader an hour ahead evicted every session at once).

Transactions (``Txn``) are etcd's: compares on the current state choose a branch whose
operations run in order, at one revision, reading their own writes. A branch that puts
to a lease that does not exist applies nothing (LEASE_NOT_FOUND), as in etcd. A
read-only transaction need not enter the log: :meth:`KVStateMachine.read_txn` runs it
against the local state after the engine's read barrier.

Leases are replicated as (id, TTL): which leases exist, and the keys attached to them.
*When* one runs out is not replicated state (etcd's lessor): the leader tracks it on
its own monotonic clock and proposes ``ExpireLease``, which, like a revoke, deletes
every key attached to the lease in one revision, at the same index on every replica.
The lessor learns of grants and revokes through :meth:`set_lease_observer`.

Storage quota (kvstore/quota.py). The state machine holds the raised alarms and the
data size (:attr:`data_bytes`, kept by the store in O(1) per write); it never sees the
quota itself, a per-node setting the server checks before proposing. While a NOSPACE
alarm is raised it refuses, at apply, every command that could grow the data (puts,
cas, lease grants, a Txn whose chosen branch puts) with the definite NOSPACE result;
everything else -- deletes first -- is admitted, so there is always a way out.

Old logs. Commands of formats 1 and 2 carry the proposing leader's wall clock; for
them alone the state machine still applies the rules they were written under, so an old
log replays to exactly the state it had (replicas upgraded from snapshots at different
indexes must agree): the clock they built (the maximum ``now_ms`` applied) expires the
leases those formats granted or kept alive, evicts sessions idle for ten minutes of it,
and chooses the session evicted by count as the least recently active *by that clock*
(ties by client_id). Every session carries its last activity by that clock for this;
format-3 commands never move it. Leases granted by format 3 have no clock deadline.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped]  # no stubs upstream
from sortedcontainers import SortedList  # type: ignore[import-untyped]  # no stubs upstream

from kvstore.auth import AuthError, AuthState, NotFoundError, session_owners_from_obj
from kvstore.commands import (
    AUTH_COMMANDS,
    AUTH_FORMATS,
    CLIENT_ID_LEN,
    CLOCKED_FORMATS,
    AlarmType,
    Cas,
    CloseSession,
    Command,
    CommandError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteOp,
    DisarmAlarm,
    ExpireLease,
    Header,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Noop,
    OpenSession,
    Put,
    PutOp,
    RaiseAlarm,
    RangeOp,
    Tick,
    Txn,
    command_digest,
    decode_command,
)
from kvstore.mvcc import DEFAULT_HISTORY_LIMIT, Event, KeyValue, MVCCStore, WriteBatch
from kvstore.quota import (
    Alarm,
    branch_puts,
    decode_alarms_section,
    refused_under_nospace,
)
from kvstore.snapshot import SNAPSHOT_FORMAT_VERSION, SnapshotCapture
from raft.errors import InvariantViolation
from raft.types import Index

__all__ = [
    "DEFAULT_MAX_RESULTS_PER_SESSION",
    "DEFAULT_MAX_SESSIONS",
    "SNAPSHOT_FORMAT_VERSION",
    "KVStateMachine",
    "LeaseObserver",
    "Result",
    "ResultCode",
    "SnapshotError",
]

DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_MAX_RESULTS_PER_SESSION = 1024


class ResultCode(enum.IntEnum):
    """Outcome of one applied command. Values are stable (they reach clients and
    snapshots); new codes get new numbers."""

    OK = 0
    NOT_FOUND = 1  # Delete of an absent key: nothing changed
    COMPARE_FAILED = 2  # Cas expectation did not hold: nothing changed
    SESSION_EXPIRED = 3  # unknown session: outstanding requests are indefinite
    BAD_COMMAND = 4  # undecodable log entry: nothing changed
    STALE_SEQ = 5  # seq at or below the session floor, result gone: not applied
    LEASE_NOT_FOUND = 6  # a Txn put names a lease that does not exist: nothing changed
    SEQ_REUSED = 7  # a cached seq retried with another command: nothing changed
    NOSPACE = 8  # a NOSPACE alarm is raised and the command could grow the data: nothing changed
    PERMISSION_DENIED = 9  # auth on, and the user may not do this: nothing changed
    FAILED_PRECONDITION = 10  # an auth change the auth state refuses: nothing changed


@dataclass(frozen=True, slots=True)
class Result:
    """What ``apply`` returns to the proposer.

    ``kv`` is the record after the command (for COMPARE_FAILED: the current record,
    so the client can retry without a read); ``prev`` the record it replaced or deleted
    (etcd ``prev_kv``); ``revision`` the store revision after the command (etcd response
    header). A cached result is returned as it was, revision included. ``data`` is the
    command-specific rest, in plain msgpack-able form: for a Txn ``[succeeded,
    [response, ...]]`` with a response per operation (``[0, [kv, ...], more]`` for a
    range, ``[1, prev]`` for a put, ``[2, prev]`` for a delete; kvs as ``to_obj``); for a
    lease grant or keep-alive ``[lease, ttl_ms]``."""

    code: ResultCode
    kv: KeyValue | None
    prev: KeyValue | None
    revision: int
    message: str = ""
    data: Any = None

    def to_obj(self) -> list[Any]:
        kv = None if self.kv is None else self.kv.to_obj()
        prev = None if self.prev is None else self.prev.to_obj()
        return [int(self.code), kv, prev, self.revision, self.message, self.data]

    @classmethod
    def from_obj(cls, obj: Any) -> Result:
        code, kv, prev, revision, message, *rest = obj
        if type(revision) is not int or type(message) is not str or len(rest) > 1:
            raise ValueError("bad result revision or message")
        return cls(
            ResultCode(code),
            None if kv is None else KeyValue.from_obj(kv),
            None if prev is None else KeyValue.from_obj(prev),
            revision,
            message,
            _thaw(rest[0]) if rest else None,
        )


def _thaw(v: Any) -> Any:
    """msgpack tuples back to the lists ``to_obj`` wrote, so a restored cached result
    equals the live one."""
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


class SnapshotError(ValueError):
    """Bytes that are not a snapshot of this format. The state is left unchanged."""


class LeaseObserver(Protocol):
    """Told of every change to the set of leases, as it is applied (the lessor)."""

    def lease_granted(self, lease: int, ttl_ms: int) -> None: ...

    def lease_revoked(self, lease: int) -> None: ...

    def leases_restored(self, leases: list[tuple[int, int]]) -> None:
        """The whole set was replaced by a snapshot: (id, ttl_ms) of every lease."""
        ...


NOSPACE_MESSAGE = (
    "NOSPACE alarm raised: the data reached a storage quota; delete keys, then "
    "`kv alarm disarm` (docs/OPERATIONS.md)"
)

OLD_SESSION_TTL_MS = 10 * 60 * 1000
"""Formats 1 and 2 evicted a session idle for this long by their clock (replayed)."""


@dataclass(slots=True)
class _Session:
    # Invariant: every key of ``results`` is > ``floor``.
    floor: int = 0
    # The old clock at its last command of format 1 or 2 (see Old logs, above).
    last_active_ms: int = 0
    results: dict[int, Result] = field(default_factory=dict)
    # The capture epoch this object was made in. A session from an earlier epoch may
    # be held by a snapshot capture, so it is copied before it changes
    # (KVStateMachine._own_session): copy-on-write.
    epoch: int = 0
    # command_digest of the request each cached seq answered (absent: restored from a
    # format-2 snapshot, which did not keep it; such a result answers any retry).
    digests: dict[int, int] = field(default_factory=dict)
    # The user whose OpenSession created it (None: opened without authentication).
    # While auth is on, only that user's requests may use the session.
    user: str | None = None

    def acknowledge(self, ack_seq: int) -> None:
        """The client has every answer up to ``ack_seq``: forget them (§6.3)."""
        if ack_seq <= self.floor:
            return
        self.floor = ack_seq
        for seq in [s for s in self.results if s <= ack_seq]:
            del self.results[seq]
            self.digests.pop(seq, None)

    def remember(self, seq: int, result: Result, digest: int, bound: int) -> None:
        self.results[seq] = result
        self.digests[seq] = digest
        if len(self.results) > bound:
            oldest = min(self.results)
            del self.results[oldest]
            self.digests.pop(oldest, None)
            self.floor = max(self.floor, oldest)


@dataclass(frozen=True, slots=True)
class _Lease:
    """Replaced, never changed: a snapshot capture may hold it. ``expiry_ms``: the
    deadline by the clock of formats 1 and 2, for a lease those formats granted or
    kept alive; 0 for a lease of format 3, which only the leader's lessor ends."""

    ttl_ms: int
    expiry_ms: int = 0


class KVStateMachine:
    """Deterministic replicated KV state: MVCC store, client sessions, clock, applied index.

    Implements ``raft.engine.StateMachine``. Reads (:meth:`get`, :meth:`range`) are local
    and are linearizable only after the engine's read barrier."""

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_results_per_session: int = DEFAULT_MAX_RESULTS_PER_SESSION,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
    ) -> None:
        if max_sessions < 1 or max_results_per_session < 1:
            raise ValueError("session limits must be positive")
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self.history_limit = history_limit
        self._store = MVCCStore(history_limit)
        self._applied_index: Index = 0
        # The clock of formats 1 and 2 (old logs only). Invariant: never decreases.
        self._clock_ms = 0
        # Open sessions, least recently active first (the LRU order is replicated state:
        # a snapshot keeps it).
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        # (last_active_ms, client_id) of every open session: the old formats' order.
        self._activity: Any = SortedList()
        # Ids of ended sessions, oldest first, at most max_sessions: never reopened.
        self._ended: OrderedDict[bytes, None] = OrderedDict()
        self._leases: dict[int, _Lease] = {}
        # (expiry_ms, lease id) of the leases with a format-1/2 clock deadline.
        self._lease_deadlines: Any = SortedList()
        self._next_lease_id = 1
        self._listeners: list[Callable[[], None]] = []
        self._lease_observer: LeaseObserver | None = None
        self._auth = AuthState()
        self._validated: tuple[bytes, Any] | None = None  # see validate()
        self._epoch = 0  # snapshot captures so far: see _Session.epoch
        # Raised alarms (replaced, never changed: a snapshot capture may hold it).
        # Invariant: _nospace == any NOSPACE alarm in _alarms.
        self._alarms: frozenset[Alarm] = frozenset()
        self._nospace = False

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every apply that wrote and after a restore (watches
        wake on it). Not replicated state: listeners only observe."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for cb in self._listeners:
            cb()

    def set_lease_observer(self, observer: LeaseObserver | None) -> None:
        """Tell ``observer`` of every lease granted or revoked from now on, and of a
        restore; it is told of the leases existing now at once. Not replicated state."""
        self._lease_observer = observer
        if observer is not None:
            observer.leases_restored(list(self.leases()))

    # ---- read side ----------------------------------------------------------------

    @property
    def applied_index(self) -> Index:
        return self._applied_index

    @property
    def revision(self) -> int:
        return self._store.revision

    @property
    def clock_ms(self) -> int:
        """The clock of command formats 1 and 2 (0 on a log that never had them)."""
        return self._clock_ms

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def auth(self) -> AuthState:
        """The replicated auth state, for reading (the server's checks); it changes only
        by applied commands."""
        return self._auth

    def session_user(self, client_id: bytes) -> tuple[bool, str | None]:
        """(whether session ``client_id`` is open, the user who opened it)."""
        session = self._sessions.get(client_id)
        return (False, None) if session is None else (True, session.user)

    def keys_of_lease(self, lease: int) -> list[bytes]:
        """The keys attached to ``lease``, in key order."""
        return self._store.keys_of_lease(lease)

    def get(self, key: bytes) -> KeyValue | None:
        return self._store.get(key)

    def range(
        self, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> tuple[list[KeyValue], bool]:
        """etcd-style range, see :meth:`kvstore.mvcc.MVCCStore.range`."""
        return self._store.range(start, end, limit)

    def events_since(
        self, revision: int, start: bytes, end: bytes | None, limit: int = 1000
    ) -> tuple[list[Event], int]:
        """History for watches; see :meth:`kvstore.mvcc.MVCCStore.events_since`."""
        return self._store.events_since(revision, start, end, limit)

    @property
    def compacted_revision(self) -> int:
        return self._store.compacted_revision

    @property
    def lease_count(self) -> int:
        return len(self._leases)

    @property
    def data_bytes(self) -> int:
        """The logical size the storage quota bounds (kvstore/quota.py); O(1)."""
        return self._store.data_bytes

    @property
    def nospace(self) -> bool:
        """Whether a NOSPACE alarm is raised (growing writes are refused at apply)."""
        return self._nospace

    def alarms(self) -> list[Alarm]:
        """The raised alarms, (type, member id), sorted."""
        return sorted(self._alarms)

    def leases(self) -> Iterator[tuple[int, int]]:
        """(id, ttl_ms) of every lease, by id."""
        for lease in sorted(self._leases):
            yield lease, self._leases[lease].ttl_ms

    def lease_ttl_ms(self, lease: int) -> int | None:
        """The TTL ``lease`` was granted with (None: no such lease)."""
        entry = self._leases.get(lease)
        return None if entry is None else entry.ttl_ms

    def read_txn(self, txn: Txn) -> Result:
        """A read-only Txn against the current state (linearizable after the engine's
        read barrier); changes nothing."""
        if not txn.read_only:
            raise ValueError("read_txn takes a read-only Txn")
        return self._txn(txn, None)

    # ---- apply --------------------------------------------------------------------

    def apply(self, index: Index, command: bytes) -> Result:
        """Apply the committed entry at ``index``. Never raises on bad bytes: a malformed
        entry yields BAD_COMMAND on every replica alike, with the state unchanged (but
        the index consumed)."""
        if index <= self._applied_index:
            raise InvariantViolation(f"apply({index}) after applied index {self._applied_index}")
        self._applied_index = index
        try:
            header, cmd = decode_command(command)
        except CommandError as exc:
            return self._result(ResultCode.BAD_COMMAND, message=str(exc))
        before = self._store.revision
        try:
            return self._apply(header, cmd)
        finally:
            if self._store.revision != before:
                self._notify()

    def _apply(self, header: Header, cmd: Command) -> Result:
        client_id, seq = header.client_id, header.seq
        clocked = header.format in CLOCKED_FORMATS
        if clocked:
            self._advance_clock(header.now_ms)
        if isinstance(cmd, Tick):
            return self._result(ResultCode.OK)  # idempotent: no session needed
        if isinstance(cmd, ExpireLease):  # idempotent: lease ids are never reused
            return self._revoke_if_present(cmd.lease)
        if isinstance(cmd, (RaiseAlarm, DisarmAlarm)):  # sessionless, idempotent
            return self._set_alarm(cmd)
        session = self._sessions.get(client_id)
        if session is None:
            # Format 1 (older logs): a data command with seq 1 opened its session; kept
            # for them alone, so an old log replays to the state it had (issue 9).
            implicit = header.format == 1 and seq == 1
            if not (isinstance(cmd, OpenSession) or implicit):
                return self._result(ResultCode.SESSION_EXPIRED, message="unknown session")
            if not implicit and client_id in self._ended:
                return self._result(
                    ResultCode.SESSION_EXPIRED, message="session ended: open a new one"
                )
            why = self._recheck(header, cmd)
            if why is not None:  # no session is opened for a user refused meanwhile
                return self._result(ResultCode.PERMISSION_DENIED, message=why)
            session = self._open_session(client_id, clocked)
            session.user = header.user
        else:
            if self._auth.enabled and session.user != header.user:
                # Another user's client id (issue 11): refused, and the session is not
                # touched (no activity recorded: a stranger cannot keep it from eviction).
                return self._result(
                    ResultCode.PERMISSION_DENIED, message="the session belongs to another user"
                )
            session = self._own_session(client_id, session)
            self._sessions.move_to_end(client_id)
            if clocked and session.last_active_ms != self._clock_ms:
                self._activity.remove((session.last_active_ms, client_id))
                session.last_active_ms = self._clock_ms
                self._activity.add((session.last_active_ms, client_id))
        if isinstance(cmd, CloseSession):
            self._end_session(client_id)
            return self._result(ResultCode.OK)
        session.acknowledge(header.ack_seq)
        digest = command_digest(cmd)
        cached = session.results.get(seq)
        if cached is not None:
            if header.format > 1 and session.digests.get(seq, digest) != digest:
                return self._result(
                    ResultCode.SEQ_REUSED, message=f"seq {seq} was used by another command"
                )
            return cached
        if seq <= session.floor:
            return self._result(ResultCode.STALE_SEQ, message=f"seq {seq} <= floor {session.floor}")
        why = self._recheck(header, cmd)
        if why is not None:
            # Cached like any result: a retry gets the same definite refusal.
            result = self._result(ResultCode.PERMISSION_DENIED, message=why)
            session.remember(seq, result, digest, self.max_results_per_session)
            return result
        result = self._execute(cmd, clocked)
        session.remember(seq, result, digest, self.max_results_per_session)
        return result

    def _set_alarm(self, cmd: RaiseAlarm | DisarmAlarm) -> Result:
        if isinstance(cmd, RaiseAlarm):
            self._alarms = self._alarms | {(cmd.alarm, cmd.member)}
        else:
            self._alarms = frozenset(a for a in self._alarms if a[0] is not cmd.alarm)
        self._nospace = any(kind is AlarmType.NOSPACE for kind, _ in self._alarms)
        return self._result(ResultCode.OK)

    def _recheck(self, header: Header, cmd: Command) -> str | None:
        """Why ``cmd`` may not apply (None: it may). The proposer checked it against
        auth revision ``header.auth_revision``; only if the auth state has changed
        since is it checked again (etcd's rule), so a permission revoked while the
        request was in flight is enforced. A command of a format without a user
        (older nodes) counts as unauthenticated once auth is on."""
        auth = self._auth
        if not auth.enabled:
            return None
        if header.format in AUTH_FORMATS and header.auth_revision >= auth.revision:
            return None
        return auth.denial(header.user, cmd, self.keys_of_lease)

    def _execute(self, cmd: Command, clocked: bool) -> Result:
        """Run a data command; ``clocked``: it is of format 1 or 2 (old lease rules)."""
        store = self._store
        if self._nospace and refused_under_nospace(cmd):
            return self._nospace_result()
        match cmd:
            case Noop() | OpenSession():
                return self._result(ResultCode.OK)
            case Put(key, value):
                prev = store.get(key)
                return self._result(ResultCode.OK, store.put(key, value), prev)
            case Delete(key):
                prev = store.delete(key)
                code = ResultCode.NOT_FOUND if prev is None else ResultCode.OK
                return self._result(code, None, prev)
            case Cas(key, expected_value, expected_version, new_value):
                cur = store.get(key)
                if not _compare(cur, expected_value, expected_version):
                    return self._result(ResultCode.COMPARE_FAILED, cur)
                return self._result(ResultCode.OK, store.put(key, new_value), cur)
            case Txn():
                return self._txn(cmd, store.batch())
            case LeaseGrant(ttl_ms):
                lease = self._next_lease_id
                self._next_lease_id += 1
                self._set_lease(lease, ttl_ms, clocked)
                if self._lease_observer is not None:
                    self._lease_observer.lease_granted(lease, ttl_ms)
                return self._result(ResultCode.OK, data=[lease, ttl_ms])
            case LeaseKeepAlive(lease):  # formats 1 and 2 only
                entry = self._leases.get(lease)
                if entry is None:
                    return self._result(ResultCode.NOT_FOUND, message=f"no lease {lease}")
                self._set_lease(lease, entry.ttl_ms, clocked)
                return self._result(ResultCode.OK, data=[lease, entry.ttl_ms])
            case LeaseRevoke(lease):
                return self._revoke_if_present(lease)
            case _ if isinstance(cmd, AUTH_COMMANDS):
                try:
                    self._auth.apply(cmd)
                except NotFoundError as exc:
                    return self._result(ResultCode.NOT_FOUND, message=str(exc))
                except AuthError as exc:
                    return self._result(ResultCode.FAILED_PRECONDITION, message=str(exc))
                return self._result(ResultCode.OK)
        raise InvariantViolation(f"unhandled command {cmd!r}")  # pragma: no cover

    def _txn(self, txn: Txn, batch: WriteBatch | None) -> Result:
        """Evaluate ``txn``; writes go through ``batch`` (None: read-only, checked)."""
        store = self._store
        succeeded = all(_holds(c, store.get(c.key)) for c in txn.compares)
        branch = txn.success if succeeded else txn.failure
        if self._nospace and branch_puts(branch):
            return self._nospace_result()
        for op in branch:
            if isinstance(op, PutOp) and op.lease and op.lease not in self._leases:
                return self._result(ResultCode.LEASE_NOT_FOUND, message=f"no lease {op.lease}")
        responses: list[Any] = []
        for op in branch:
            match op:
                case RangeOp(key, end, limit):
                    kvs, more = store.range(key, end, limit)
                    responses.append([0, [kv.to_obj() for kv in kvs], more])
                case PutOp(key, value, lease):
                    assert batch is not None, "read-only txn has no puts"
                    prev = store.get(key)
                    batch.put(key, value, lease)
                    responses.append([1, None if prev is None else prev.to_obj()])
                case DeleteOp(key):
                    assert batch is not None, "read-only txn has no deletes"
                    prev = batch.delete(key)
                    responses.append([2, None if prev is None else prev.to_obj()])
        if batch is not None:
            store.end_batch(batch)
        return self._result(ResultCode.OK, data=[succeeded, responses])

    # ---- leases -------------------------------------------------------------------

    def _set_lease(self, lease: int, ttl_ms: int, clocked: bool) -> None:
        """(Re)start ``lease``; a command of format 1 or 2 gives it a clock deadline."""
        old = self._leases.get(lease)
        if old is not None and old.expiry_ms:
            self._lease_deadlines.remove((old.expiry_ms, lease))
        entry = _Lease(ttl_ms, self._clock_ms + ttl_ms if clocked else 0)
        self._leases[lease] = entry
        if entry.expiry_ms:
            self._lease_deadlines.add((entry.expiry_ms, lease))

    def _revoke_if_present(self, lease: int) -> Result:
        if lease not in self._leases:
            return self._result(ResultCode.NOT_FOUND, message=f"no lease {lease}")
        self._revoke(lease)
        return self._result(ResultCode.OK)

    def _revoke(self, lease: int) -> None:
        """Drop ``lease`` and delete its keys, all in one revision (etcd's LeaseRevoke)."""
        entry = self._leases.pop(lease)
        if entry.expiry_ms:
            self._lease_deadlines.remove((entry.expiry_ms, lease))
        batch = self._store.batch()
        for key in self._store.keys_of_lease(lease):
            batch.delete(key)
        self._store.end_batch(batch)
        if self._lease_observer is not None:
            self._lease_observer.lease_revoked(lease)

    def _nospace_result(self) -> Result:
        return self._result(ResultCode.NOSPACE, message=NOSPACE_MESSAGE)

    def _result(
        self,
        code: ResultCode,
        kv: KeyValue | None = None,
        prev: KeyValue | None = None,
        message: str = "",
        data: Any = None,
    ) -> Result:
        return Result(code, kv, prev, self._store.revision, message, data)

    # ---- sessions -----------------------------------------------------------------

    def _advance_clock(self, now_ms: int) -> None:
        """Formats 1 and 2 only: move their clock to ``max(clock, now_ms)`` and expire
        the leases whose deadline it passed (earliest first, ties by id)."""
        if now_ms > self._clock_ms:
            self._clock_ms = now_ms
        idle_before = self._clock_ms - OLD_SESSION_TTL_MS
        while self._activity and self._activity[0][0] < idle_before:
            self._end_session(self._activity[0][1])
        deadlines = self._lease_deadlines
        while deadlines and deadlines[0][0] <= self._clock_ms:
            self._revoke(deadlines[0][1])

    def _open_session(self, client_id: bytes, clocked: bool) -> _Session:
        if len(self._sessions) >= self.max_sessions:
            # The least recently active: by log order, or by the old clock for a
            # command of the old formats (their rule, replayed).
            victim = self._activity[0][1] if clocked else next(iter(self._sessions))
            self._end_session(victim)
        session = _Session(epoch=self._epoch, last_active_ms=self._clock_ms)
        self._activity.add((session.last_active_ms, client_id))
        # Only a format-1 command (an old log) may reopen an ended id: it is open again.
        # Invariant: no id is both open and ended.
        self._ended.pop(client_id, None)
        self._sessions[client_id] = session
        return session

    def _own_session(self, client_id: bytes, session: _Session) -> _Session:
        """``session``, or its copy if a snapshot capture may hold it: the one place a
        session changes is ``_apply``, on what this returns."""
        if session.epoch == self._epoch:
            return session
        own = _Session(
            session.floor,
            session.last_active_ms,
            dict(session.results),
            self._epoch,
            dict(session.digests),
            session.user,
        )
        self._sessions[client_id] = own
        return own

    def _end_session(self, client_id: bytes) -> None:
        """Drop a session and remember its id (bounded, oldest forgotten first): a
        delayed duplicate of its OpenSession must not bring it back empty, where a
        retry of an applied write would apply again."""
        session = self._sessions.pop(client_id)
        self._activity.remove((session.last_active_ms, client_id))
        self._ended[client_id] = None
        if len(self._ended) > self.max_sessions:
            self._ended.popitem(last=False)

    # ---- snapshot -----------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as snapshot bytes (format 5, kvstore/snapshot.py), encoded
        here and now; the engine uses :meth:`snapshot_capture` instead."""
        return self.snapshot_capture()()

    def snapshot_capture(self) -> SnapshotCapture:
        """Freeze the state as of now, cheaply, and return the encoder of its snapshot
        bytes, to be called once, in any thread, while ``apply`` goes on
        (kvstore/snapshot.py). Everything is copy-on-write or immutable, so capturing
        copies only references: the session and lease tables (sessions are copied
        before they change once captured, ``_own_session``; leases and cached results
        never change), and the key space (:meth:`kvstore.mvcc.MVCCStore.capture`)."""
        self._epoch += 1  # every session now existing may be held by this capture
        return SnapshotCapture(
            applied=self._applied_index,
            clock_ms=self._clock_ms,
            store=self._store.capture(),
            sessions=list(self._sessions.items()),
            leases=list(self._leases.items()),
            next_lease_id=self._next_lease_id,
            ended=list(self._ended),
            alarms=self._alarms,
            auth=self._auth.to_obj(),
        )

    def validate(self, data: bytes, index: Index | None = None) -> None:
        """SnapshotError unless :meth:`restore` would accept ``data`` (as the state at
        log ``index``, if given); the state is not touched. The decoded state is kept for
        a ``restore`` of the same bytes object, so checking a leader's snapshot before
        adopting it costs no second decode."""
        decoded = self._decode(data)
        if index is not None and decoded[0] != index:
            raise SnapshotError(f"snapshot of applied index {decoded[0]} sent as index {index}")
        self._validated = (data, decoded)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with :meth:`snapshot` output; SnapshotError (state
        unchanged) on anything else, including a snapshot holding more sessions or
        cached results than this replica's limits (a configuration mismatch)."""
        validated, self._validated = self._validated, None
        if validated is not None and validated[0] is data:
            decoded = validated[1]
        else:
            decoded = self._decode(data)
        applied, clock, store, sessions, ended, leases, next_lease, alarms, auth = decoded
        self._store = store
        self._auth = auth
        self._applied_index = applied
        self._clock_ms = clock
        self._sessions = sessions
        self._activity = SortedList((s.last_active_ms, cid) for cid, s in sessions.items())
        self._ended = ended
        self._leases = leases
        self._lease_deadlines = SortedList(
            (e.expiry_ms, lid) for lid, e in leases.items() if e.expiry_ms
        )
        self._next_lease_id = next_lease
        self._alarms = alarms
        self._nospace = any(kind is AlarmType.NOSPACE for kind, _ in alarms)
        if self._lease_observer is not None:
            self._lease_observer.leases_restored(list(self.leases()))
        self._notify()

    def _decode(self, data: bytes) -> Any:
        """Snapshot bytes → (applied, clock, store, sessions, ended, leases, next lease
        id, alarms, auth state), all new objects; SnapshotError on anything that is not
        our format. Format 5 is format 4 plus a map of named sections
        (:func:`_decode_sections`); sessions carry the user who opened them (``auth``)."""
        try:
            obj = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
            version, sections = obj[0], {}
            if version == SNAPSHOT_FORMAT_VERSION:  # 5: named sections
                *obj, sections = obj
                version = 4
            if version == 1:  # before leases and history
                _, applied, clock, store_state, rows = obj
                lease_rows, next_lease, ended_rows = (), 1, ()
            elif version == 2:
                _, applied, clock, store_state, rows, lease_rows, next_lease = obj
                ended_rows = ()
            elif version in (3, 4):  # 3: digests, ended ids; 4: LRU
                _, applied, clock, store_state, rows, lease_rows, next_lease, ended_rows = obj
            else:
                raise ValueError(f"unknown snapshot format {version!r}")
            if type(applied) is not int or type(clock) is not int or min(applied, clock) < 0:
                raise ValueError("bad applied index or clock")
            store = MVCCStore(self.history_limit)
            store.restore_state(store_state)
            sessions = self._decode_sessions(rows, version, clock)
            leases = _decode_leases(lease_rows, next_lease)
            ended = self._decode_ended(ended_rows, sessions)
            alarms, auth = _decode_sections(sections, sessions)
        except SnapshotError:
            raise
        except Exception as exc:  # any shape mismatch in our own format
            raise SnapshotError(f"bad snapshot: {exc}") from exc
        return applied, clock, store, sessions, ended, leases, next_lease, alarms, auth

    def _decode_ended(
        self, rows: Any, sessions: OrderedDict[bytes, _Session]
    ) -> OrderedDict[bytes, None]:
        if len(rows) > self.max_sessions:
            raise SnapshotError(f"{len(rows)} ended sessions exceed max_sessions")
        ended: OrderedDict[bytes, None] = OrderedDict()
        for cid in rows:
            if type(cid) is not bytes or len(cid) != CLIENT_ID_LEN or cid in sessions:
                raise ValueError("bad ended session id")
            ended[cid] = None
        if len(ended) != len(rows):
            raise ValueError("duplicate ended session id")
        return ended

    def _decode_sessions(self, rows: Any, version: int, clock: int) -> OrderedDict[bytes, _Session]:
        """Rows ``[client_id, last_active_ms, floor, results]``. Format 4 lists them
        least recently active first (by log order); formats 1-3 did not keep that
        order: their sessions were ordered by last activity, ties by client_id."""
        if len(rows) > self.max_sessions:
            raise SnapshotError(f"{len(rows)} sessions exceed max_sessions {self.max_sessions}")
        if not all(type(r) is tuple and len(r) == 4 and type(r[1]) is int for r in rows):
            raise ValueError("bad session row")
        if version < 4:
            rows = sorted(rows, key=_lru)
        sessions: OrderedDict[bytes, _Session] = OrderedDict()
        for client_id, last_active_ms, floor, results in rows:
            if type(client_id) is not bytes or len(client_id) != CLIENT_ID_LEN:
                raise ValueError("bad client_id")
            if client_id in sessions or type(floor) is not int or floor < 0:
                raise ValueError("duplicate session, or bad floor")
            if not 0 <= last_active_ms <= clock:
                raise ValueError("bad last_active_ms")
            if len(results) > self.max_results_per_session:
                raise SnapshotError("cached results exceed max_results_per_session")
            s = _Session(floor, last_active_ms)
            for seq, result, *digest in results:  # format 3 adds the digest
                if type(seq) is not int or seq <= floor or seq in s.results:
                    raise ValueError(f"bad cached seq {seq!r}")
                s.results[seq] = Result.from_obj(result)
                if digest:
                    if len(digest) != 1 or type(digest[0]) is not int:
                        raise ValueError(f"bad digest of seq {seq}")
                    s.digests[seq] = digest[0]
            sessions[client_id] = s
        return sessions


SNAPSHOT_SECTIONS = frozenset({"alarms", "auth"})
"""The named sections format 5 may carry; each absent one is empty state."""


def _decode_sections(
    sections: Any, sessions: OrderedDict[bytes, _Session]
) -> tuple[frozenset[Alarm], AuthState]:
    """Format 5's trailing map of named sections; an unknown name is refused (it is
    state this release cannot hold, and dropping it would silently change the state).
    Sets the user of each session a user opened."""
    if type(sections) is not dict:
        raise ValueError("snapshot sections must be a map")
    unknown = sections.keys() - SNAPSHOT_SECTIONS
    if unknown:
        raise ValueError(f"unknown snapshot section(s) {sorted(map(repr, unknown))}")
    alarms = decode_alarms_section(sections.get("alarms", ()))
    section = sections.get("auth")
    if section is None:
        return alarms, AuthState()
    if type(section) is not dict:
        raise ValueError("auth section must be a map")
    section = dict(section)
    owners = session_owners_from_obj(section.pop("sessions", ()), sessions)
    auth = AuthState.from_obj(section)
    for cid, user in owners.items():
        sessions[cid].user = user
    return alarms, auth


def _lru(row: tuple[Any, ...]) -> tuple[int, bytes]:
    cid, last_active = row[0], row[1]
    if type(cid) is not bytes:
        raise ValueError("bad client_id")
    return last_active, cid


def _decode_leases(rows: Any, next_lease: Any) -> dict[int, _Lease]:
    if type(next_lease) is not int or next_lease < 1:
        raise ValueError("bad next lease id")
    leases: dict[int, _Lease] = {}
    for lid, ttl, expiry in rows:
        if not all(type(n) is int for n in (lid, ttl, expiry)):
            raise ValueError("lease fields must be ints")
        if not 1 <= lid < next_lease or lid in leases or ttl < 1 or expiry < 0:
            raise ValueError(f"bad lease {lid!r}")
        leases[lid] = _Lease(ttl, expiry)
    return leases


def _holds(c: Compare, kv: KeyValue | None) -> bool:
    """One Txn compare (etcd semantics: an absent key has no value, and 0 for the rest)."""
    actual: bytes | int
    if c.target is CompareTarget.VALUE:
        if kv is None:
            return False
        actual = kv.value
    elif kv is None:
        actual = 0
    else:
        actual = {
            CompareTarget.VERSION: kv.version,
            CompareTarget.CREATE: kv.create_revision,
            CompareTarget.MOD: kv.mod_revision,
            CompareTarget.LEASE: kv.lease,
        }[c.target]
    operand = c.operand
    match c.op:
        case CompareOp.EQ:
            return actual == operand
        case CompareOp.NE:
            return actual != operand
        case CompareOp.LT:
            return actual < operand  # type: ignore[operator]
        case CompareOp.GT:
            return actual > operand  # type: ignore[operator]


def _compare(cur: KeyValue | None, value: bytes | None, version: int | None) -> bool:
    """Cas expectations (etcd Compare semantics): version 0 means absent; a value
    compare never matches an absent key."""
    if version is not None and (cur.version if cur is not None else 0) != version:
        return False
    return value is None or (cur is not None and cur.value == value)
