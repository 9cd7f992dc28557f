"""The deterministic KV state machine behind ``raft.engine.StateMachine``.

Theory of operation. ``apply(index, bytes)`` decodes one command (kvstore/commands.py),
runs it against the versioned store (kvstore/mvcc.py) and returns a :class:`Result`.
Everything it reads is the current state and the command bytes: no clocks, no I/O, no
randomness, no iteration over unordered containers whose order could differ between
replicas. Time enters only as ``header.now_ms``; the state machine's clock is the
maximum ``now_ms`` applied so far, so it never runs backwards even when a new leader's
wall clock lags the old one's.

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

Eviction is replicated state: a session idle for more than ``session_ttl_ms`` of the
state machine clock is dropped during apply, and when ``max_sessions`` are open the
least recently active (ties broken by client_id) makes room for a new one. Both
constructor arguments must be identical on every replica. NB: a leader whose clock runs
far ahead drags the replicated clock with it: every session expires once, and TTL expiry
then stalls until real time catches up (``max_sessions`` still bounds the table).
TODO(kv-sessions): bound how far one command may advance the clock.

Transactions (``Txn``) are etcd's: compares on the current state choose a branch whose
operations run in order, at one revision, reading their own writes. A branch that puts
to a lease that does not exist applies nothing (LEASE_NOT_FOUND), as in etcd. A
read-only transaction need not enter the log: :meth:`KVStateMachine.read_txn` runs it
against the local state after the engine's read barrier.

Leases are replicated state too. A lease expires when the state machine clock passes
its deadline (``clock + ttl`` at grant or keep-alive); expiry, like a revoke, deletes
every key attached to the lease in one revision. Since the clock only moves when a
command is applied, the leader proposes a ``Tick`` when the earliest deadline has passed
by its own clock (kvstore/server.py), so leases expire on time on an idle cluster; the
deadline is still decided here, by the log, so every replica expires the same lease at
the same index. NB: a new leader whose clock runs ahead of the old one's expires leases
early (etcd extends every lease on leader change for this reason);
TODO(leases): do the same once terms are visible to the state machine.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream
from sortedcontainers import SortedList  # type: ignore[import-untyped]  # no stubs upstream

from kvstore.commands import (
    CLIENT_ID_LEN,
    Cas,
    CloseSession,
    Command,
    CommandError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteOp,
    Header,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Noop,
    OpenSession,
    Put,
    PutOp,
    RangeOp,
    Tick,
    Txn,
    command_digest,
    decode_command,
)
from kvstore.mvcc import DEFAULT_HISTORY_LIMIT, Event, KeyValue, MVCCStore, WriteBatch
from kvstore.snapshot import SNAPSHOT_FORMAT_VERSION, SnapshotCapture
from raft.errors import InvariantViolation
from raft.types import Index

__all__ = [
    "DEFAULT_MAX_RESULTS_PER_SESSION",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_SESSION_TTL_MS",
    "SNAPSHOT_FORMAT_VERSION",
    "KVStateMachine",
    "Result",
    "ResultCode",
    "SnapshotError",
]

DEFAULT_SESSION_TTL_MS = 10 * 60 * 1000
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


@dataclass(slots=True)
class _Session:
    # Invariant: every key of ``results`` is > ``floor``.
    last_active: int
    floor: int = 0
    results: dict[int, Result] = field(default_factory=dict)
    # The capture epoch this object was made in. A session from an earlier epoch may
    # be held by a snapshot capture, so it is copied before it changes
    # (KVStateMachine._own_session): copy-on-write.
    epoch: int = 0
    # command_digest of the request each cached seq answered (absent: restored from a
    # format-2 snapshot, which did not keep it; such a result answers any retry).
    digests: dict[int, int] = field(default_factory=dict)

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
    """Replaced, never changed: a snapshot capture may hold it."""

    ttl_ms: int
    expiry_ms: int


class KVStateMachine:
    """Deterministic replicated KV state: MVCC store, client sessions, clock, applied index.

    Implements ``raft.engine.StateMachine``. Reads (:meth:`get`, :meth:`range`) are local
    and are linearizable only after the engine's read barrier."""

    def __init__(
        self,
        *,
        session_ttl_ms: int = DEFAULT_SESSION_TTL_MS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_results_per_session: int = DEFAULT_MAX_RESULTS_PER_SESSION,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
    ) -> None:
        if session_ttl_ms < 1 or max_sessions < 1 or max_results_per_session < 1:
            raise ValueError("session limits must be positive")
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self.history_limit = history_limit
        self._store = MVCCStore(history_limit)
        self._applied_index: Index = 0
        self._clock_ms = 0  # Invariant: never decreases; >= every session's last_active
        self._sessions: dict[bytes, _Session] = {}
        # Ids of ended sessions, oldest first, at most max_sessions: never reopened.
        self._ended: dict[bytes, None] = {}
        # (last_active, client_id) of every session: expiry and LRU order, independent
        # of insertion order so a restored replica evicts exactly as a live one does.
        self._activity: Any = SortedList()
        self._leases: dict[int, _Lease] = {}
        self._lease_deadlines: Any = SortedList()  # (expiry_ms, lease id)
        self._next_lease_id = 1
        self._listeners: list[Callable[[], None]] = []
        self._epoch = 0  # snapshot captures so far: see _Session.epoch

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every apply that wrote and after a restore (watches
        wake on it). Not replicated state: listeners only observe."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for cb in self._listeners:
            cb()

    # ---- read side ----------------------------------------------------------------

    @property
    def applied_index(self) -> Index:
        return self._applied_index

    @property
    def revision(self) -> int:
        return self._store.revision

    @property
    def clock_ms(self) -> int:
        return self._clock_ms

    @property
    def session_count(self) -> int:
        return len(self._sessions)

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

    def next_lease_expiry_ms(self) -> int | None:
        """The earliest lease deadline, by the state machine clock (None: no lease)."""
        return self._lease_deadlines[0][0] if self._lease_deadlines else None

    def lease_ttl_remaining_ms(self, lease: int) -> int | None:
        """Milliseconds of state machine clock left on ``lease`` (None: no such lease)."""
        entry = self._leases.get(lease)
        return None if entry is None else max(0, entry.expiry_ms - self._clock_ms)

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
        self._advance_clock(header.now_ms)
        if isinstance(cmd, Tick):
            return self._result(ResultCode.OK)  # idempotent: no session needed
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
            session = self._open_session(client_id)
        else:
            session = self._own_session(client_id, session)
            self._touch(client_id, session)
        if isinstance(cmd, CloseSession):
            self._close_session(client_id, session)
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
        result = self._execute(cmd)
        session.remember(seq, result, digest, self.max_results_per_session)
        return result

    def _execute(self, cmd: Command) -> Result:
        store = self._store
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
                self._set_lease(lease, ttl_ms)
                return self._result(ResultCode.OK, data=[lease, ttl_ms])
            case LeaseKeepAlive(lease):
                entry = self._leases.get(lease)
                if entry is None:
                    return self._result(ResultCode.NOT_FOUND, message=f"no lease {lease}")
                self._set_lease(lease, entry.ttl_ms)
                return self._result(ResultCode.OK, data=[lease, entry.ttl_ms])
            case LeaseRevoke(lease):
                if lease not in self._leases:
                    return self._result(ResultCode.NOT_FOUND, message=f"no lease {lease}")
                self._revoke(lease)
                return self._result(ResultCode.OK)
        raise InvariantViolation(f"unhandled command {cmd!r}")  # pragma: no cover

    def _txn(self, txn: Txn, batch: WriteBatch | None) -> Result:
        """Evaluate ``txn``; writes go through ``batch`` (None: read-only, checked)."""
        store = self._store
        succeeded = all(_holds(c, store.get(c.key)) for c in txn.compares)
        branch = txn.success if succeeded else txn.failure
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

    def _set_lease(self, lease: int, ttl_ms: int) -> None:
        old = self._leases.get(lease)
        if old is not None:
            self._lease_deadlines.remove((old.expiry_ms, lease))
        entry = _Lease(ttl_ms, self._clock_ms + ttl_ms)
        self._leases[lease] = entry
        self._lease_deadlines.add((entry.expiry_ms, lease))

    def _revoke(self, lease: int) -> None:
        """Drop ``lease`` and delete its keys, all in one revision (etcd's LeaseRevoke)."""
        entry = self._leases.pop(lease)
        self._lease_deadlines.remove((entry.expiry_ms, lease))
        batch = self._store.batch()
        for key in self._store.keys_of_lease(lease):
            batch.delete(key)
        self._store.end_batch(batch)

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
        """Move the clock to ``max(clock, now_ms)``, evict sessions idle > TTL and expire
        leases whose deadline has passed (earliest first, ties by id)."""
        if now_ms > self._clock_ms:
            self._clock_ms = now_ms
        deadline = self._clock_ms - self.session_ttl_ms
        activity = self._activity
        while activity and activity[0][0] < deadline:
            _, client_id = activity.pop(0)
            self._end_session(client_id)
        deadlines = self._lease_deadlines
        while deadlines and deadlines[0][0] <= self._clock_ms:
            self._revoke(deadlines[0][1])

    def _open_session(self, client_id: bytes) -> _Session:
        if len(self._sessions) >= self.max_sessions:
            _, victim = self._activity.pop(0)  # least recently active, then lowest id
            self._end_session(victim)
        session = _Session(last_active=self._clock_ms, epoch=self._epoch)
        # Only a format-1 command (an old log) may reopen an ended id: it is open again.
        # Invariant: no id is both open and ended.
        self._ended.pop(client_id, None)
        self._sessions[client_id] = session
        self._activity.add((session.last_active, client_id))
        return session

    def _own_session(self, client_id: bytes, session: _Session) -> _Session:
        """``session``, or its copy if a snapshot capture may hold it: the one place a
        session changes is ``_apply``, on what this returns."""
        if session.epoch == self._epoch:
            return session
        own = _Session(
            session.last_active,
            session.floor,
            dict(session.results),
            self._epoch,
            dict(session.digests),
        )
        self._sessions[client_id] = own
        return own

    def _close_session(self, client_id: bytes, session: _Session) -> None:
        self._activity.remove((session.last_active, client_id))
        self._end_session(client_id)

    def _end_session(self, client_id: bytes) -> None:
        """Drop a session and remember its id (bounded, oldest forgotten first): a
        delayed duplicate of its OpenSession must not bring it back empty, where a
        retry of an applied write would apply again."""
        del self._sessions[client_id]
        self._ended[client_id] = None
        if len(self._ended) > self.max_sessions:
            del self._ended[next(iter(self._ended))]

    def _touch(self, client_id: bytes, session: _Session) -> None:
        if session.last_active != self._clock_ms:
            self._activity.remove((session.last_active, client_id))
            session.last_active = self._clock_ms
            self._activity.add((session.last_active, client_id))

    # ---- snapshot -----------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as snapshot bytes (format 3, kvstore/snapshot.py), encoded
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
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with :meth:`snapshot` output; SnapshotError (state
        unchanged) on anything else, including a snapshot holding more sessions or
        cached results than this replica's limits (a configuration mismatch)."""
        try:
            obj = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
            version = obj[0]
            if version == 1:  # before leases and history
                _, applied, clock, store_state, rows = obj
                lease_rows, next_lease, ended_rows = (), 1, ()
            elif version == 2:
                _, applied, clock, store_state, rows, lease_rows, next_lease = obj
                ended_rows = ()
            elif version == SNAPSHOT_FORMAT_VERSION:  # 3: digests, ended session ids
                _, applied, clock, store_state, rows, lease_rows, next_lease, ended_rows = obj
            else:
                raise ValueError(f"unknown snapshot format {version!r}")
            if type(applied) is not int or type(clock) is not int or min(applied, clock) < 0:
                raise ValueError("bad applied index or clock")
            store = MVCCStore(self.history_limit)
            store.restore_state(store_state)
            sessions = self._decode_sessions(rows, clock)
            leases = _decode_leases(lease_rows, next_lease)
            ended = self._decode_ended(ended_rows, sessions)
        except SnapshotError:
            raise
        except Exception as exc:  # any shape mismatch in our own format
            raise SnapshotError(f"bad snapshot: {exc}") from exc
        self._store = store
        self._applied_index = applied
        self._clock_ms = clock
        self._sessions = sessions
        self._ended = ended
        self._activity = SortedList((s.last_active, cid) for cid, s in sessions.items())
        self._leases = leases
        self._lease_deadlines = SortedList((e.expiry_ms, lid) for lid, e in leases.items())
        self._next_lease_id = next_lease
        self._notify()

    def _decode_ended(self, rows: Any, sessions: dict[bytes, _Session]) -> dict[bytes, None]:
        if len(rows) > self.max_sessions:
            raise SnapshotError(f"{len(rows)} ended sessions exceed max_sessions")
        ended: dict[bytes, None] = {}
        for cid in rows:
            if type(cid) is not bytes or len(cid) != CLIENT_ID_LEN or cid in sessions:
                raise ValueError("bad ended session id")
            ended[cid] = None
        if len(ended) != len(rows):
            raise ValueError("duplicate ended session id")
        return ended

    def _decode_sessions(self, rows: Any, clock: int) -> dict[bytes, _Session]:
        if len(rows) > self.max_sessions:
            raise SnapshotError(f"{len(rows)} sessions exceed max_sessions {self.max_sessions}")
        sessions: dict[bytes, _Session] = {}
        for client_id, last_active, floor, results in rows:
            if type(client_id) is not bytes or len(client_id) != CLIENT_ID_LEN:
                raise ValueError("bad client_id")
            if client_id in sessions or not 0 <= last_active <= clock or floor < 0:
                raise ValueError("duplicate session, or bad last_active or floor")
            if len(results) > self.max_results_per_session:
                raise SnapshotError("cached results exceed max_results_per_session")
            s = _Session(last_active, floor)
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


def _decode_leases(rows: Any, next_lease: Any) -> dict[int, _Lease]:
    if type(next_lease) is not int or next_lease < 1:
        raise ValueError("bad next lease id")
    leases: dict[int, _Lease] = {}
    for lid, ttl, expiry in rows:
        if not all(type(n) is int for n in (lid, ttl, expiry)):
            raise ValueError("lease fields must be ints")
        if not 1 <= lid < next_lease or lid in leases or ttl < 1:
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
