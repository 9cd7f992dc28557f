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

Sessions are opened implicitly by a command with ``seq == 1`` for an unknown
client_id; any other seq for an unknown client_id gets ``SESSION_EXPIRED``: the
session existed and was evicted (or never existed), its cached results are gone, so
the client must treat its outstanding requests as indefinite and start a new session
under a fresh client_id. NB: opening on "``ack_seq == 0``" as well, which would accept
pipelined first requests arriving out of order, is unsafe: a session evicted before
the client got any answer would be reopened by the retry of an already-applied
request, applying it twice. The same holds for seq 1 itself, so a client should open a
session with a ``Noop`` and await its answer before sending writes.

Eviction is replicated state: a session idle for more than ``session_ttl_ms`` of the
state machine clock is dropped during apply, and when ``max_sessions`` are open the
least recently active (ties broken by client_id) makes room for a new one. Both
constructor arguments must be identical on every replica. NB: a leader whose clock runs
far ahead drags the replicated clock with it: every session expires once, and TTL expiry
then stalls until real time catches up (``max_sessions`` still bounds the table).
TODO(kv-sessions): bound how far one command may advance the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream
from sortedcontainers import SortedList  # type: ignore[import-untyped]  # no stubs upstream

from kvstore.commands import (
    CLIENT_ID_LEN,
    Cas,
    Command,
    CommandError,
    Delete,
    Noop,
    Put,
    decode_command,
)
from kvstore.mvcc import KeyValue, MVCCStore
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

SNAPSHOT_FORMAT_VERSION = 1
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


@dataclass(frozen=True, slots=True)
class Result:
    """What ``apply`` returns to the proposer.

    ``kv`` is the record after the command (for COMPARE_FAILED: the current record,
    so the client can retry without a read); ``prev`` the record it replaced or deleted
    (etcd ``prev_kv``); ``revision`` the store revision after the command (etcd response
    header). A cached result is returned as it was, revision included."""

    code: ResultCode
    kv: KeyValue | None
    prev: KeyValue | None
    revision: int
    message: str = ""

    def to_obj(self) -> list[Any]:
        kv = None if self.kv is None else self.kv.to_obj()
        prev = None if self.prev is None else self.prev.to_obj()
        return [int(self.code), kv, prev, self.revision, self.message]

    @classmethod
    def from_obj(cls, obj: Any) -> Result:
        code, kv, prev, revision, message = obj
        if type(revision) is not int or type(message) is not str:
            raise ValueError("bad result revision or message")
        return cls(
            ResultCode(code),
            None if kv is None else KeyValue.from_obj(kv),
            None if prev is None else KeyValue.from_obj(prev),
            revision,
            message,
        )


class SnapshotError(ValueError):
    """Bytes that are not a snapshot of this format. The state is left unchanged."""


@dataclass(slots=True)
class _Session:
    # Invariant: every key of ``results`` is > ``floor``.
    last_active: int
    floor: int = 0
    results: dict[int, Result] = field(default_factory=dict)

    def acknowledge(self, ack_seq: int) -> None:
        """The client has every answer up to ``ack_seq``: forget them (§6.3)."""
        if ack_seq <= self.floor:
            return
        self.floor = ack_seq
        for seq in [s for s in self.results if s <= ack_seq]:
            del self.results[seq]

    def remember(self, seq: int, result: Result, bound: int) -> None:
        self.results[seq] = result
        if len(self.results) > bound:
            oldest = min(self.results)
            del self.results[oldest]
            self.floor = max(self.floor, oldest)


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
    ) -> None:
        if session_ttl_ms < 1 or max_sessions < 1 or max_results_per_session < 1:
            raise ValueError("session limits must be positive")
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self._store = MVCCStore()
        self._applied_index: Index = 0
        self._clock_ms = 0  # Invariant: never decreases; >= every session's last_active
        self._sessions: dict[bytes, _Session] = {}
        # (last_active, client_id) of every session: expiry and LRU order, independent
        # of insertion order so a restored replica evicts exactly as a live one does.
        self._activity: Any = SortedList()

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
        self._advance_clock(header.now_ms)
        session = self._sessions.get(header.client_id)
        if session is None:
            if header.seq != 1:
                return self._result(ResultCode.SESSION_EXPIRED, message="unknown session")
            session = self._open_session(header.client_id)
        else:
            self._touch(header.client_id, session)
        session.acknowledge(header.ack_seq)
        cached = session.results.get(header.seq)
        if cached is not None:
            return cached
        if header.seq <= session.floor:
            return self._result(
                ResultCode.STALE_SEQ, message=f"seq {header.seq} <= floor {session.floor}"
            )
        result = self._execute(cmd)
        session.remember(header.seq, result, self.max_results_per_session)
        return result

    def _execute(self, cmd: Command) -> Result:
        store = self._store
        match cmd:
            case Noop():
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
        raise InvariantViolation(f"unhandled command {cmd!r}")  # pragma: no cover

    def _result(
        self,
        code: ResultCode,
        kv: KeyValue | None = None,
        prev: KeyValue | None = None,
        message: str = "",
    ) -> Result:
        return Result(code, kv, prev, self._store.revision, message)

    # ---- sessions -----------------------------------------------------------------

    def _advance_clock(self, now_ms: int) -> None:
        """Move the clock to ``max(clock, now_ms)`` and evict sessions idle > TTL."""
        if now_ms > self._clock_ms:
            self._clock_ms = now_ms
        deadline = self._clock_ms - self.session_ttl_ms
        activity = self._activity
        while activity and activity[0][0] < deadline:
            _, client_id = activity.pop(0)
            del self._sessions[client_id]

    def _open_session(self, client_id: bytes) -> _Session:
        if len(self._sessions) >= self.max_sessions:
            _, victim = self._activity.pop(0)  # least recently active, then lowest id
            del self._sessions[victim]
        session = _Session(last_active=self._clock_ms)
        self._sessions[client_id] = session
        self._activity.add((session.last_active, client_id))
        return session

    def _touch(self, client_id: bytes, session: _Session) -> None:
        if session.last_active != self._clock_ms:
            self._activity.remove((session.last_active, client_id))
            session.last_active = self._clock_ms
            self._activity.add((session.last_active, client_id))

    # ---- snapshot -----------------------------------------------------------------

    def snapshot(self) -> bytes:
        """``[format, applied_index, clock_ms, mvcc_state, sessions]`` as msgpack.

        Sessions are ordered by client_id and results by seq (arrays, never maps), so
        equal states give equal bytes on every replica."""
        sessions = [
            [
                client_id,
                s.last_active,
                s.floor,
                [[seq, s.results[seq].to_obj()] for seq in sorted(s.results)],
            ]
            for client_id, s in sorted(self._sessions.items())
        ]
        state = [
            SNAPSHOT_FORMAT_VERSION,
            self._applied_index,
            self._clock_ms,
            self._store.snapshot_state(),
            sessions,
        ]
        data: bytes = msgpack.packb(state, use_bin_type=True)
        return data

    def restore(self, data: bytes) -> None:
        """Replace the whole state with :meth:`snapshot` output; SnapshotError (state
        unchanged) on anything else, including a snapshot holding more sessions or
        cached results than this replica's limits (a configuration mismatch)."""
        try:
            version, applied, clock, store_state, rows = msgpack.unpackb(
                data, raw=False, use_list=False, strict_map_key=True
            )
            if version != SNAPSHOT_FORMAT_VERSION:
                raise ValueError(f"unknown snapshot format {version!r}")
            if type(applied) is not int or type(clock) is not int or min(applied, clock) < 0:
                raise ValueError("bad applied index or clock")
            store = MVCCStore()
            store.restore_state(store_state)
            sessions = self._decode_sessions(rows, clock)
        except SnapshotError:
            raise
        except Exception as exc:  # any shape mismatch in our own format
            raise SnapshotError(f"bad snapshot: {exc}") from exc
        self._store = store
        self._applied_index = applied
        self._clock_ms = clock
        self._sessions = sessions
        self._activity = SortedList((s.last_active, cid) for cid, s in sessions.items())

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
            for seq, result in results:
                if type(seq) is not int or seq <= floor or seq in s.results:
                    raise ValueError(f"bad cached seq {seq!r}")
                s.results[seq] = Result.from_obj(result)
            sessions[client_id] = s
        return sessions


def _compare(cur: KeyValue | None, value: bytes | None, version: int | None) -> bool:
    """Cas expectations (etcd Compare semantics): version 0 means absent; a value
    compare never matches an absent key."""
    if version is not None and (cur.version if cur is not None else 0) != version:
        return False
    return value is None or (cur is not None and cur.value == value)
