"""Client library: leader discovery, pipelining, retries, exactly-once writes.

Theory of operation. :class:`AsyncClient` keeps at most one connection per node and
pipelines every request over it: each request gets a fresh id and a future, one reader
task per connection resolves futures as responses arrive, in any order
(docs/PROTOCOL.md §3). Each public call runs a retry loop until its ``deadline``:

- it goes to the cached leader, else the next endpoint in turn;
- NOT_LEADER with an address switches to that node at once and caches it (redirect,
  not forwarding: §6);
- UNAVAILABLE, TIMEOUT, INTERNAL, a lost connection or an attempt that outlives
  ``timeout`` back off exponentially with jitter and try again, on another node if the
  one tried seems gone.

Transactions are etcd's (compare / success / failure, kvstore/commands.py): one that
writes is a write, with a session; a read-only one is a linearizable read. Leases are
writes too. A watch is a stream on a connection of its own to one node, so ending it is
closing that connection; it does not fail over (the caller resumes elsewhere from
``Watch.revision + 1``, gap-free, because the history is the same on every node).

Writes carry a session (§7): a random 16-byte client id, a ``seq`` per write that every
retry of that write reuses, and ``ack``, the highest seq below which every write has
finished. The state machine answers a duplicate seq from its session table, so a write
retried after a leader change applies once. A write that gave up after any attempt
whose fate is unknown raises :class:`Indeterminate`, never :class:`Unavailable`: callers
(and the linearizability checker) must be able to tell "may have happened" from "did
not happen".

Auth (docs/SECURITY.md). Given ``user`` and ``password``, the client logs in (the
``authenticate`` op, on any node) before its first request and presents the token to
every node it connects to, in the hello; a connection opened before a fresh login gets
the new token by ``auth_token``. When a node answers AUTH_REQUIRED or AUTH_FAILED (the
token expired, the password changed, auth was switched on or re-enabled) the client
logs in again once and retries. Its write session is bound to the user it was opened
as, so a client whose identity changed (auth switched on after it started) opens a new
session.

:class:`Client` is the same API, synchronous, running an AsyncClient on a private event
loop in a background thread (for the CLI and scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from raft.errors import CodecError
from raft.framing import FrameDecoder, encode_frame

from . import protocol as p
from .commands import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    PutOp,
    RangeOp,
    TxnOp,
    name_problem,
    read_only,
)
from .password import MAX_PASSWORD_BYTES
from .protocol import (
    AlarmInfo,
    Code,
    Consistency,
    KeyValue,
    Limits,
    ProtocolError,
    RangeResult,
    WatchEvent,
    WriteOpResult,
)

__all__ = [
    "AlarmInfo",
    "AsyncClient",
    "AuthFailed",
    "BadRequest",
    "CertificateError",
    "Client",
    "ClientError",
    "Compacted",
    "Compare",
    "CompareFailed",
    "CompareOp",
    "CompareTarget",
    "Conflict",
    "DeleteOp",
    "FailedPrecondition",
    "Indeterminate",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Members",
    "NoSpace",
    "NodeStatus",
    "NotFound",
    "PermissionDenied",
    "PutOp",
    "RangeOp",
    "RangeResult",
    "RoleInfo",
    "ScanResult",
    "SeqReused",
    "SessionExpired",
    "TooLarge",
    "TxnResult",
    "Unavailable",
    "UserInfo",
    "Watch",
    "WatchEnded",
    "WatchEvent",
    "WriteOpResult",
    "WriteResult",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
KeyLike = bytes | str

# ---- results and errors --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteResult:
    """An applied put, delete or cas: the store revision it produced and the key's
    previous value (None if it was absent)."""

    revision: int
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One page of a scan; ``more`` means keys were left out (limit or frame size):
    continue from ``kvs[-1].key + b"\\x00"``."""

    kvs: tuple[KeyValue, ...]
    more: bool
    revision: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Which branch ran (``succeeded``: every compare held), one result per operation of
    that branch (``protocol.RangeResult`` or ``protocol.WriteOpResult``), and the store
    revision after the txn."""

    succeeded: bool
    responses: tuple[RangeResult | WriteOpResult, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    role: str
    term: int
    leader: str | None
    leader_addr: str | None
    commit: int
    applied: int
    wall_ms: int | None = None  # the node's wall clock when it answered
    mono_ms: int | None = None  # its monotonic clock (arbitrary origin)
    pid: int | None = None
    alarms: tuple[AlarmInfo, ...] | None = None  # raised, as this node has applied them
    data_bytes: int | None = None  # the data size the storage quota bounds
    quota_bytes: int | None = None  # this node's storage quota


@dataclass(frozen=True, slots=True)
class Members:
    """The membership as one node has applied it."""

    voters: tuple[str, ...]
    learners: tuple[str, ...]
    leader: str | None


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """``permissions``: (``"read"|"write"|"readwrite"``, key prefix) pairs."""

    name: str
    permissions: tuple[tuple[str, bytes], ...]


class ClientError(Exception):
    """Base of every error this library raises on purpose."""


class AuthFailed(ClientError):
    """Auth is on and the client could not authenticate: no credentials, a wrong user
    name or password, or a token no longer valid (definite: nothing was done)."""


class PermissionDenied(ClientError):
    """The user may not do this (definite: nothing was done)."""


class FailedPrecondition(ClientError):
    """An auth change the cluster refused (the user or role exists already, auth
    enable without a root user, ...): nothing changed (definite)."""


class NotFound(ClientError):
    """The key does not exist (definite)."""


class CompareFailed(ClientError):
    """A cas expectation did not hold; nothing was written (definite). ``current`` is
    what the key held when the cas was applied."""

    def __init__(self, current: KeyValue | None, revision: int) -> None:
        super().__init__(f"compare failed (current version {current and current.version})")
        self.current = current
        self.revision = revision


class NoSpace(ClientError):
    """The write could grow the data past the storage quota, or the cluster's NOSPACE
    alarm is raised: it was not applied (definite). Delete keys, then disarm the
    alarm (docs/OPERATIONS.md)."""


class Unavailable(ClientError):
    """No node could serve the request before the deadline. For a write: it certainly
    was not applied (every attempt was refused before entering the log)."""


class CertificateError(ClientError):
    """A node's TLS certificate failed verification against the client's CA (another
    CA, a host name it does not name, expired...). Definite: nothing was sent, and no
    retry can help until the configuration changes, so it is raised at the first
    attempt rather than retried until the deadline."""


class Indeterminate(ClientError):
    """The write may or may not have been applied (an attempt timed out or its
    connection died after sending). Deliberately not a subclass of Unavailable."""


class SessionExpired(ClientError):
    """The write's session had expired; it was not applied (definite). The client has
    already started a new session for later writes."""


class SeqReused(ClientError):
    """The session's seq had answered another request: this one was not applied
    (definite). This library never does that; a client reusing a session id would."""


class BadRequest(ClientError):
    """The server rejected the request as malformed: a client bug, retrying won't help."""


class TooLarge(BadRequest):
    """Key or value over the limit the server announced."""


class Conflict(ClientError):
    """A membership change the leader refused (another change still pending, a
    leadership transfer in progress, the last voter): not applied (definite)."""


class LeaseNotFound(ClientError):
    """The lease does not exist (never granted, revoked or expired); nothing was
    written (definite)."""


class Compacted(ClientError):
    """A watch asked for revisions the history no longer holds."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class WatchEnded(ClientError):
    """A watch stream ended (its node went away, or shut down); resume from
    ``Watch.revision + 1``, on any node."""


_RELOGIN_CODES = (Code.AUTH_REQUIRED, Code.AUTH_FAILED)
"""Answers after which a client with credentials logs in again (once) and retries."""
_FINAL_AUTH_ERRORS: dict[Code, type[ClientError]] = {
    Code.AUTH_REQUIRED: AuthFailed,
    Code.AUTH_FAILED: AuthFailed,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.FAILED_PRECONDITION: FailedPrecondition,
}


class _NewIdentity(Exception):
    """A re-login changed who this client is (auth came on): the write, not applied,
    must go in a session of the new user."""


class _Retry(Exception):
    """One attempt failed in a way worth retrying. ``indefinite``: the request was sent
    and its outcome is unknown."""

    def __init__(self, reason: str, *, indefinite: bool, node_gone: bool = False) -> None:
        super().__init__(reason)
        self.indefinite = indefinite
        self.node_gone = node_gone


# ---- one connection ------------------------------------------------------------------


class _Connection:
    """A handshaken connection to one node, pipelining requests by id."""

    def __init__(
        self,
        addr: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: p.HelloOk,
    ) -> None:
        self.addr = addr
        self.hello = hello
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(hello.limits.max_frame_bytes)
        self._pending: dict[int, tuple[p.Op, asyncio.Future[p.Response]]] = {}
        # Streams (watches): every frame for the id goes to its queue, then a final
        # error frame or a _ConnectionLost. NB: unbounded; a watcher must keep reading.
        self._streams: dict[int, asyncio.Queue[p.Response | _ConnectionLost]] = {}
        self._next_id = 1
        self.closed = False
        self.token: bytes | None = None  # the login token bound to this connection
        # The server reads no more than this many requests of one connection at once;
        # more would wait unread and time out as if lost (indefinite).
        self._slots = asyncio.Semaphore(hello.limits.max_in_flight or 1 << 30)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        addr: str,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        token: bytes | None = None,
    ) -> _Connection:
        host, port = _split_address(addr)
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            except ssl.SSLCertVerificationError as exc:
                raise CertificateError(
                    f"cannot verify the TLS certificate of {addr}: {exc.verify_message} "
                    "(the client's CA, --cacert or [security] ca_file, must be the one "
                    "that signed the node's certificate, which must name the host dialled)"
                ) from None
            try:
                writer.write(encode_frame(p.encode_hello(p.Hello(token=token))))
                decoder = FrameDecoder(64 << 10)
                while (frame := decoder.next_frame()) is None:
                    chunk = await reader.read(64 << 10)
                    if not chunk:
                        raise ConnectionError(f"{addr} closed during handshake")
                    decoder.feed(chunk)
                reply = p.decode_hello_reply(frame)
            except BaseException:
                writer.close()
                raise
        if isinstance(reply, p.ErrorResponse):
            writer.close()
            raise ConnectionError(f"{addr} refused the handshake: {reply.code} {reply.message}")
        conn = cls(addr, reader, writer, reply)
        conn.token = token
        return conn

    async def request(self, build: Callable[[int], p.Request], timeout: float) -> p.Response:
        """Send one request and wait for its response. Raises _Retry; ``indefinite``
        is set once the bytes may have left."""
        if self.closed:
            raise _Retry(f"connection to {self.addr} closed", indefinite=False, node_gone=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:  # never sent: nothing can have happened
            raise _Retry(f"{self.addr}: no request slot in {timeout}s", indefinite=False) from None
        try:
            return await self._exchange(build, deadline, timeout)
        finally:
            self._slots.release()

    async def _exchange(
        self, build: Callable[[int], p.Request], deadline: float, timeout: float
    ) -> p.Response:
        if self.closed:
            raise _Retry(f"connection to {self.addr} closed", indefinite=False, node_gone=True)
        rid = self._next_id
        self._next_id += 1
        req = build(rid)
        fut: asyncio.Future[p.Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (p.op_of(req), fut)
        try:
            self._writer.write(encode_frame(p.encode_request(req)))
            async with asyncio.timeout_at(deadline):
                await self._writer.drain()
                return await fut
        except TimeoutError:
            # A silent node (paused, partitioned, half-open socket) is suspect like a
            # refused one: the next attempt tries elsewhere instead of waiting on it.
            raise _Retry(
                f"no response from {self.addr} in {timeout}s", indefinite=True, node_gone=True
            ) from None
        except (ConnectionError, _ConnectionLost) as exc:
            raise _Retry(str(exc), indefinite=True, node_gone=True) from None
        finally:
            self._pending.pop(rid, None)

    def open_stream(
        self, build: Callable[[int], p.Request]
    ) -> asyncio.Queue[p.Response | _ConnectionLost]:
        """Send a streaming request; its frames arrive on the returned queue."""
        if self.closed:
            raise ConnectionError(f"connection to {self.addr} closed")
        rid = self._next_id
        self._next_id += 1
        queue: asyncio.Queue[p.Response | _ConnectionLost] = asyncio.Queue()
        self._streams[rid] = queue
        self._writer.write(encode_frame(p.encode_request(build(rid))))
        return queue

    def _op_for(self, rid: int) -> p.Op | None:
        if rid in self._streams:
            return p.Op.WATCH
        entry = self._pending.get(rid)
        return None if entry is None else entry[0]

    async def _read_loop(self) -> None:
        reason = "connection closed by server"
        try:
            while chunk := await self._reader.read(256 << 10):
                self._decoder.feed(chunk)
                for frame in self._decoder.frames():
                    resp = p.decode_response(frame, self._op_for, self.hello.limits)
                    if resp is None:
                        continue  # late answer to an attempt we abandoned
                    if resp.id is None:
                        assert isinstance(resp, p.ErrorResponse)
                        reason = f"server closing connection: {resp.code} {resp.message}"
                        continue
                    stream = self._streams.get(resp.id)
                    if stream is not None:
                        if isinstance(resp, p.ErrorResponse):
                            del self._streams[resp.id]
                        stream.put_nowait(resp)
                        continue
                    _, fut = self._pending.pop(resp.id)
                    if not fut.done():
                        fut.set_result(resp)
        except (ProtocolError, CodecError) as exc:
            reason = f"protocol violation by {self.addr}: {exc}"
            log.warning("%s", reason)
        except OSError as exc:
            reason = f"connection to {self.addr} lost: {exc}"
        finally:
            self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        self.closed = True
        self._writer.close()
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_ConnectionLost(reason))
        self._pending.clear()
        for stream in self._streams.values():
            stream.put_nowait(_ConnectionLost(reason))
        self._streams.clear()

    async def close(self) -> None:
        self.closed = True
        self._writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class _ConnectionLost(Exception):
    pass


def _split_address(addr: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` too) → (host, port); ValueError otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {addr!r} is not host:port")
    return host.strip("[]"), int(port)


# ---- sessions ------------------------------------------------------------------------


class _Session:
    """Seq numbering for one client id. Invariant: every seq in ``_open`` is > ``ack``.

    Only ``session_open`` creates a session (kvstore/state_machine.py): it is the
    session's request seq 1, sent and answered before any write, which then use seqs
    2, 3, ... A write never opens a session, so a session evicted before a retry of a
    write cannot come back and apply that write twice."""

    def __init__(self, client_id: bytes) -> None:
        self.client_id = client_id
        self._next_seq = 2  # 1 is the session_open
        self._open: set[int] = set()
        self.opened = False
        self.opening: asyncio.Future[None] | None = None
        # Who the session was opened as (None: not authenticated): the cluster binds a
        # session to that user.
        self.user: str | None = None

    def begin(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._open.add(seq)
        return seq

    def finish(self, seq: int) -> None:
        """The write is over (answered, or given up for good): it may be acknowledged,
        since it will never be retried."""
        self._open.discard(seq)

    @property
    def ack(self) -> int:
        return (min(self._open) if self._open else self._next_seq) - 1

    def header(self, seq: int) -> p.Session:
        return p.Session(client=self.client_id, seq=seq, ack=self.ack)


# ---- the client ----------------------------------------------------------------------


def _key(k: KeyLike) -> bytes:
    return k.encode() if isinstance(k, str) else k


class AsyncClient:
    """Asyncio client for a raftkv cluster. Safe to share between tasks of one loop.

    ``timeout`` bounds one attempt (connect + request); ``deadline`` bounds a whole call
    including retries. ``client_id`` (16 bytes) names the write session; random by
    default. It must be new: the client opens its session under it, and the cluster
    never reopens an id whose session ended (a session cannot be resumed by another
    client object, whose seqs would start over). ``tls``: speak TLS to every node,
    verifying it with this context (``kvstore.tls.client_context``)."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        timeout: float = 5.0,
        deadline: float = 30.0,
        client_id: bytes | None = None,
        backoff_base: float = 0.02,
        backoff_cap: float = 0.25,
        max_writes_in_flight: int = 1000,
        rng: random.Random | None = None,
        tls: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("need at least one endpoint")
        for e in endpoints:
            _split_address(e)  # fail now on a typo, not at the deadline
        if client_id is not None and len(client_id) != p.CLIENT_ID_BYTES:
            raise ValueError(f"client_id must be {p.CLIENT_ID_BYTES} bytes")
        if (user is None) != (password is None):
            raise ValueError("give user and password together")
        if user is not None and password is not None:
            try:
                _check_name(user)
                _check_password(password)
            except BadRequest as exc:
                raise ValueError(str(exc)) from None
        self._credentials = None if user is None or password is None else (user, password)
        self._token: bytes | None = None
        self._token_user: str | None = None  # who the token authenticates
        self._logins = 0  # completed login attempts (a generation count)
        self._login: asyncio.Future[None] | None = None
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._deadline = deadline
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = rng or random.Random()
        self._tls = tls
        self._session = _Session(client_id or os.urandom(p.CLIENT_ID_BYTES))
        # The state machine keeps 1024 results per session; more writes in flight could
        # make it forget one whose retry then comes back STALE_SEQ (indefinite).
        self._write_slots = asyncio.Semaphore(max_writes_in_flight)
        self._conns: dict[str, asyncio.Task[_Connection]] = {}
        self._leader: str | None = None
        self._next_endpoint = 0
        self._closed = False

    @property
    def client_id(self) -> bytes:
        return self._session.client_id

    @property
    def leader(self) -> str | None:
        """The cached leader address, if any."""
        return self._leader

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- public operations -----------------------------------------------------------

    async def get(self, key: KeyLike, *, consistency: str = "linearizable") -> KeyValue:
        """The key's current value; raises NotFound."""
        k, c = _key(key), Consistency(consistency)
        resp = await self._call(
            lambda rid: p.Get(id=rid, key=k, consistency=c),
            None,
            leader_only=c is Consistency.LINEARIZABLE,
        )
        assert isinstance(resp, p.GetResponse)
        return resp.kv

    async def scan(
        self,
        prefix: KeyLike | None = None,
        *,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        limit: int | None = None,
        consistency: str = "linearizable",
    ) -> ScanResult:
        """One page of keys: those starting with ``prefix``, or in ``[start, end)``
        (``end=None``: no upper bound)."""
        if prefix is not None and (start is not None or end is not None):
            raise ValueError("give prefix or start/end, not both")
        if prefix is not None:
            s, e = _key(prefix), p.prefix_end(_key(prefix))
        else:
            s, e = _key(start or b""), None if end is None else _key(end)
        c = Consistency(consistency)
        resp = await self._call(
            lambda rid: p.Scan(id=rid, start=s, end=e, limit=limit, consistency=c),
            None,
            leader_only=c is Consistency.LINEARIZABLE,
        )
        assert isinstance(resp, p.ScanResponse)
        return ScanResult(resp.kvs, resp.more, resp.revision)

    async def put(self, key: KeyLike, value: KeyLike) -> WriteResult:
        k, v = _key(key), _key(value)
        return await self._write(lambda rid, s: p.Put(id=rid, key=k, value=v, session=s))

    async def delete(self, key: KeyLike) -> WriteResult:
        """Remove the key; raises NotFound if it was absent."""
        k = _key(key)
        return await self._write(lambda rid, s: p.Delete(id=rid, key=k, session=s))

    async def cas(
        self,
        key: KeyLike,
        *,
        new_value: KeyLike,
        expected_value: KeyLike | None = None,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Set ``key`` to ``new_value`` iff the expectations hold (``expected_version=0``:
        the key must not exist); raises CompareFailed otherwise."""
        if expected_value is None and expected_version is None:
            raise ValueError("cas needs expected_value and/or expected_version")
        k, nv = _key(key), _key(new_value)
        ev = None if expected_value is None else _key(expected_value)
        return await self._write(
            lambda rid, s: p.Cas(
                id=rid,
                key=k,
                new_value=nv,
                session=s,
                expected_value=ev,
                expected_version=expected_version,
            )
        )

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """etcd's mini-transaction, atomic at one revision. With no put or delete in
        either branch it is a linearizable read; otherwise a write (exactly once).
        Raises LeaseNotFound when the chosen branch puts with a lease that is gone."""
        c, ok, ko = tuple(compare), tuple(success), tuple(failure)
        if read_only(ok, ko):
            resp = await self._call(
                lambda rid: p.Txn(id=rid, compares=c, success=ok, failure=ko), None
            )
        else:
            resp = await self._write_raw(
                lambda rid, s: p.Txn(id=rid, compares=c, success=ok, failure=ko, session=s)
            )
        assert isinstance(resp, p.TxnResponse)
        return TxnResult(resp.succeeded, resp.responses, resp.revision)

    async def lease_grant(self, ttl_ms: int) -> Lease:
        """A new lease; keys put with it are deleted when it expires or is revoked."""
        resp = await self._write_raw(lambda rid, s: p.LeaseGrant(id=rid, ttl_ms=ttl_ms, session=s))
        assert isinstance(resp, p.LeaseResponse)
        return Lease(resp.lease, resp.ttl_ms)

    async def lease_keepalive(self, lease: int) -> Lease:
        """Restart the lease's TTL; raises NotFound if it has already expired. Answered
        by the leader once it has confirmed it leads (never logged), so it needs no
        session and is safe to repeat."""
        resp = await self._call(lambda rid: p.LeaseKeepAlive(id=rid, lease=lease), None)
        assert isinstance(resp, p.LeaseResponse)
        return Lease(resp.lease, resp.ttl_ms)

    async def lease_ttl(self, lease: int) -> Lease:
        """The lease with the milliseconds it has left by the leader's clock (as its
        ``ttl_ms``); raises NotFound if it is gone."""
        resp = await self._call(lambda rid: p.LeaseTimeToLive(id=rid, lease=lease), None)
        assert isinstance(resp, p.LeaseResponse)
        return Lease(resp.lease, resp.ttl_ms)

    async def lease_revoke(self, lease: int) -> WriteResult:
        """End the lease now, deleting its keys; raises NotFound if it is gone."""
        return await self._write(lambda rid, s: p.LeaseRevoke(id=rid, lease=lease, session=s))

    async def watch(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        end: KeyLike | None = None,
        start_revision: int | None = None,
        endpoint: str | None = None,
    ) -> Watch:
        """Stream changes to ``key`` (or every key starting with it, or ``[key, end)``)
        from ``start_revision`` (None: the next write), served by ``endpoint`` (default:
        the first endpoint). Any node serves watches, followers included. With
        credentials, the watch's first frame is awaited here: one refused for an
        expired or voided token is opened again after a new login."""
        k = _key(key)
        e = (p.prefix_end(k) or b"\x00") if prefix else (None if end is None else _key(end))
        addr = endpoint or self._endpoints[0]
        await self._first_login()
        rev = (start_revision or 1) - 1
        for attempt in range(2):
            logins = self._logins
            conn = await _Connection.open(addr, self._timeout, self._tls, self._token)
            try:
                queue = conn.open_stream(
                    lambda rid: p.Watch(id=rid, key=k, end=e, start_revision=start_revision)
                )
                first = None
                if self._credentials is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._timeout):
                            first = await queue.get()
            except BaseException:
                await conn.close()
                raise
            refused = isinstance(first, p.ErrorResponse) and first.code in _RELOGIN_CODES
            if not refused or attempt:
                return Watch(conn, queue, rev, first)
            await conn.close()
            await self._relogin(logins)
        raise AssertionError("unreachable")  # pragma: no cover

    async def status(self, endpoint: str | None = None) -> NodeStatus:
        """One node's view of the cluster (``endpoint``, or whichever node answers)."""
        resp = await self._call(lambda rid: p.Status(id=rid), None, leader_only=False, pin=endpoint)
        assert isinstance(resp, p.StatusResponse)
        return NodeStatus(
            resp.node,
            resp.role,
            resp.term,
            resp.leader,
            resp.leader_addr,
            resp.commit,
            resp.applied,
            resp.wall_ms,
            resp.mono_ms,
            resp.pid,
            resp.alarms,
            resp.data_bytes,
            resp.quota_bytes,
        )

    async def transfer_leader(self, to: str) -> str:
        """Move leadership to voter ``to``; returns the new leader's id. Raises
        BadRequest (``to`` is not a voter), Unavailable (certainly not moved) or
        Indeterminate (the move may still happen)."""
        resp = await self._call(
            lambda rid: p.TransferLeader(id=rid, to=to), None, leader_only=False, admin=True
        )
        assert isinstance(resp, p.TransferLeaderResponse)
        self._leader = resp.leader_addr  # the old leader's address is stale now
        return resp.leader

    async def member_add(self, node: str, *, learner: bool = False) -> Members:
        """Add ``node`` as a voter (promoting a learner) or as a learner; returns the
        membership after the change. Raises Conflict, BadRequest (node not in the
        servers' config), Unavailable or Indeterminate."""
        return await self._member_change(
            lambda rid: p.MemberAdd(id=rid, node=node, learner=learner)
        )

    async def member_remove(self, node: str) -> Members:
        """Remove ``node`` (voter or learner); returns the membership after it."""
        return await self._member_change(lambda rid: p.MemberRemove(id=rid, node=node))

    async def member_list(
        self, endpoint: str | None = None, consistency: str = "linearizable"
    ) -> Members:
        """The membership: linearizable by default (the cluster's, confirmed by the
        leader); ``serializable``: as ``endpoint`` (or whichever node answers) has it in
        its log, at once."""
        level = p.Consistency(consistency)
        resp = await self._call(
            lambda rid: p.MemberList(id=rid, consistency=level),
            None,
            leader_only=level is p.Consistency.LINEARIZABLE and endpoint is None,
            pin=endpoint,
        )
        return _members(resp)

    async def alarm_list(self) -> tuple[AlarmInfo, ...]:
        """The raised alarms, as the cluster has committed them (a linearizable read)."""
        resp = await self._call(lambda rid: p.AlarmList(id=rid), None, leader_only=False)
        assert isinstance(resp, p.AlarmsResponse)
        return resp.alarms

    async def alarm_disarm(self, alarm: str | None = None) -> tuple[AlarmInfo, ...]:
        """Clear ``alarm`` ("NOSPACE"; None: every alarm) on every member; returns the
        alarms left. Idempotent, so an unknown outcome is simply retried. A write still
        past a node's quota raises NOSPACE again."""
        kind = None
        if alarm is not None:
            kind = p.ALARM_NAMES.get(alarm.upper())
            if kind is None:
                raise BadRequest(f"unknown alarm {alarm!r}: one of {sorted(p.ALARM_NAMES)}")
        resp = await self._call(lambda rid: p.AlarmDisarm(id=rid, alarm=kind), None, admin=True)
        assert isinstance(resp, p.AlarmsResponse)
        return resp.alarms

    # ---- auth (docs/SECURITY.md) ------------------------------------------------------

    async def auth_enable(self) -> None:
        """Turn authentication on; FailedPrecondition unless user root has role root."""
        await self._auth_change(p.Op.AUTH_ENABLE)

    async def auth_disable(self) -> None:
        await self._auth_change(p.Op.AUTH_DISABLE)

    async def auth_status(self) -> tuple[bool, int]:
        """(whether auth is on, the auth revision), as the answering node applied it."""
        resp = await self._call(
            lambda rid: p.AuthQuery(id=rid, op=p.Op.AUTH_STATUS), None, leader_only=False
        )
        assert isinstance(resp, p.AuthStatusResponse)
        return resp.enabled, resp.revision

    async def user_add(self, name: str, password: str) -> None:
        await self._auth_change(p.Op.USER_ADD, name=name, password=password)

    async def user_delete(self, name: str) -> None:
        await self._auth_change(p.Op.USER_DELETE, name=name)

    async def user_passwd(self, name: str, password: str) -> None:
        """Set ``name``'s password; the user's tokens stop working."""
        await self._auth_change(p.Op.USER_PASSWD, name=name, password=password)

    async def user_grant_role(self, name: str, role: str) -> None:
        await self._auth_change(p.Op.USER_GRANT_ROLE, name=name, role=role)

    async def user_revoke_role(self, name: str, role: str) -> None:
        await self._auth_change(p.Op.USER_REVOKE_ROLE, name=name, role=role)

    async def role_add(self, name: str) -> None:
        await self._auth_change(p.Op.ROLE_ADD, name=name)

    async def role_delete(self, name: str) -> None:
        await self._auth_change(p.Op.ROLE_DELETE, name=name)

    async def role_grant_permission(self, name: str, perm: str, prefix: KeyLike) -> None:
        """Grant ``perm`` ("read", "write" or "readwrite") on keys starting with
        ``prefix`` (empty: every key)."""
        if perm not in p.PERMISSION_NAMES:
            raise ValueError(f"perm must be one of {sorted(p.PERMISSION_NAMES)}")
        await self._auth_change(
            p.Op.ROLE_GRANT_PERMISSION,
            name=name,
            perm=p.PERMISSION_NAMES[perm],
            prefix=_key(prefix),
        )

    async def role_revoke_permission(self, name: str, prefix: KeyLike) -> None:
        await self._auth_change(p.Op.ROLE_REVOKE_PERMISSION, name=name, prefix=_key(prefix))

    async def user_list(self) -> tuple[str, ...]:
        return await self._names(p.Op.USER_LIST)

    async def role_list(self) -> tuple[str, ...]:
        return await self._names(p.Op.ROLE_LIST)

    async def user_get(self, name: str) -> UserInfo:
        resp = await self._auth_query(p.Op.USER_GET, name)
        assert isinstance(resp, p.UserResponse)
        return UserInfo(resp.name, resp.roles)

    async def role_get(self, name: str) -> RoleInfo:
        resp = await self._auth_query(p.Op.ROLE_GET, name)
        assert isinstance(resp, p.RoleResponse)
        return RoleInfo(resp.name, resp.permissions)

    async def _auth_change(self, op: p.Op, **fields: Any) -> None:
        for field in ("name", "role"):
            _check_name(fields.get(field))
        if "password" in fields:
            _check_password(fields["password"])
        await self._write(lambda rid, s: p.AuthChange(id=rid, op=op, session=s, **fields))

    async def _auth_query(self, op: p.Op, name: str | None = None) -> p.Response:
        """Answered by the leader after a read barrier: every change acknowledged
        before is in the answer."""
        _check_name(name)
        return await self._call(lambda rid: p.AuthQuery(id=rid, op=op, name=name), None)

    async def _names(self, op: p.Op) -> tuple[str, ...]:
        resp = await self._auth_query(op)
        assert isinstance(resp, p.NamesResponse)
        return resp.names

    async def _member_change(self, build: Callable[[int], p.Request]) -> Members:
        return _members(await self._call(build, None, admin=True))

    async def close(self) -> None:
        if not self._closed:
            await self._close_session()
        self._closed = True
        conns, self._conns = list(self._conns.values()), {}
        for task in conns:
            if not task.done():
                task.cancel()
            try:
                conn = await task
            except BaseException:
                continue
            await conn.close()

    # ---- retry loop --------------------------------------------------------------------

    async def _write(self, build: Callable[[int, p.Session], p.Request]) -> WriteResult:
        resp = await self._write_raw(build)
        assert isinstance(resp, p.WriteResponse)
        return WriteResult(resp.revision, resp.prev)

    async def _write_raw(self, build: Callable[[int, p.Session], p.Request]) -> p.Response:
        async with self._write_slots:
            return await self._write_in_slot(build)

    async def _write_in_slot(self, build: Callable[[int, p.Session], p.Request]) -> p.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline
        renewed = False
        while True:
            await self._first_login()
            if self._session.opened and self._session.user != self._token_user:
                # Auth switched on (or off) since the session was opened: the cluster
                # binds a session to its user, so this identity needs its own.
                self._session = _Session(os.urandom(p.CLIENT_ID_BYTES))
            session = self._session
            await self._ensure_open(session, deadline)
            seq = session.begin()
            try:
                resp = await self._call(
                    functools.partial(_with_session, build, session, seq),
                    session,
                    deadline=deadline,
                )
            except SessionExpired:
                # Definite: no attempt of this write can have been applied, so it is safe
                # to send it again as a new write of the fresh session (once).
                if renewed or loop.time() >= deadline:
                    raise
                renewed = True
                continue
            except _NewIdentity:
                continue  # nothing applied; the loop opens a session as the new user
            finally:
                session.finish(seq)
            break
        if isinstance(resp, p.CompareFailedResponse):
            raise CompareFailed(resp.current, resp.revision)
        return resp

    async def open_session(self) -> None:
        """Open this client's write session now (else the first write does it): one
        write through the log, whose answer every later write waits for."""
        deadline = asyncio.get_running_loop().time() + self._deadline
        await self._ensure_open(self._session, deadline)

    async def _ensure_open(self, session: _Session, deadline: float) -> None:
        """Open ``session`` (once; concurrent writers share the attempt) before its first
        write: one more round trip through the log per session. An open whose outcome
        is unknown is simply sent again by the next write: it is idempotent."""
        if session.opened:
            return
        if session.opening is None or session.opening.done():
            session.opening = asyncio.ensure_future(self._open_session(session, deadline))
        try:
            await asyncio.shield(session.opening)
        except (Unavailable, Indeterminate) as exc:
            raise Unavailable(f"could not open a session: {exc}") from exc

    async def _open_session(self, session: _Session, deadline: float) -> None:
        session.user = self._token_user
        header = p.Session(client=session.client_id, seq=1, ack=0)
        await self._call(
            lambda rid: p.SessionOpen(id=rid, session=header), session, deadline=deadline
        )
        session.opened = True

    async def _close_session(self) -> None:
        """Tell the cluster this client is done (best effort): its session and cached
        results go now instead of when the session table is full."""
        session = self._session
        if not session.opened:
            return
        seq = session.begin()
        deadline = asyncio.get_running_loop().time() + min(self._deadline, 2.0)
        with contextlib.suppress(ClientError):
            await self._call(
                lambda rid: p.SessionClose(id=rid, session=session.header(seq)),
                session,
                deadline=deadline,
            )

    async def _call(
        self,
        build: Callable[[int], p.Request],
        session: _Session | None,
        *,
        leader_only: bool = True,
        pin: str | None = None,
        deadline: float | None = None,
        admin: bool = False,
        login: bool = False,
    ) -> p.Response:
        """Attempts until a final answer or the deadline. ``session`` marks a write;
        ``admin`` an admin op (an unknown outcome is indefinite, as for a write);
        ``leader_only`` requests succeed only at the leader, so success caches it.
        ``login``: this is the login itself (no re-login on an auth error)."""
        if self._closed:
            raise ClientError("client is closed")
        if not login:
            await self._first_login()
        relogged = False
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._deadline
        changes = session is not None or admin  # an unknown outcome matters
        indefinite = False  # some attempt of this write may have been applied
        failures = redirects = 0
        last = "no attempt made"
        while (remaining := deadline - loop.time()) > 0:
            if self._closed:
                break
            addr = pin or self._pick()
            logins = self._logins
            try:
                resp = await self._attempt(addr, build, min(self._timeout, remaining))
            except _Retry as exc:
                last = f"{addr}: {exc}"
                indefinite = indefinite or (changes and exc.indefinite)
                if exc.node_gone:
                    self._node_failed(addr)
            else:
                if not isinstance(resp, p.ErrorResponse):
                    if leader_only:
                        self._leader = addr
                    return resp
                auth_error = resp.code in _RELOGIN_CODES
                if auth_error and not login and self._credentials and not relogged:
                    relogged = True  # the token expired or auth came on: log in, once
                    await self._relogin(logins)
                    if session is not None and session.user != self._token_user:
                        if not session.opened:
                            session.user = self._token_user  # the open goes on as it
                        elif not indefinite:  # nothing applied: resend in a new session
                            raise _NewIdentity
                    continue
                self._raise_if_final(resp, session, indefinite)
                last = f"{addr}: {resp.code} {resp.message}"
                if resp.code in (Code.TIMEOUT, Code.INTERNAL):
                    indefinite = indefinite or changes
                    self._node_failed(addr)  # e.g. a deposed leader that cannot commit
                elif resp.code is Code.NOT_LEADER:
                    self._leader = resp.leader_addr
                    if resp.leader_addr is None:
                        self._next_endpoint += 1
                    elif resp.leader_addr != addr and redirects < 3:
                        redirects += 1
                        continue  # follow the redirect at once
                elif resp.code is Code.UNAVAILABLE:
                    self._node_failed(addr)
            failures += 1
            await asyncio.sleep(min(self._backoff(failures), max(0.0, deadline - loop.time())))
        if indefinite:
            what = "write" if session is not None else "change"
            raise Indeterminate(f"gave up; the {what} may have been applied ({last})")
        if self._closed:
            raise ClientError("client closed")
        raise Unavailable(f"gave up after {self._deadline}s: {last}")

    def _raise_if_final(
        self, resp: p.ErrorResponse, session: _Session | None, indefinite: bool
    ) -> None:
        """Map a final error code to its exception; retryable codes return."""
        final = _FINAL_AUTH_ERRORS.get(resp.code)
        if final is not None:
            if indefinite:  # an earlier attempt may have been applied
                raise Indeterminate(f"{resp.code} after an unknown outcome: {resp.message}")
            raise final(f"{resp.code}: {resp.message}")
        match resp.code:
            case Code.NOT_FOUND:
                raise NotFound(resp.message)
            case Code.LEASE_NOT_FOUND:
                raise LeaseNotFound(resp.message)
            case Code.TOO_LARGE:
                raise TooLarge(resp.message)
            case Code.BAD_REQUEST | Code.UNKNOWN_OP:
                raise BadRequest(f"{resp.code}: {resp.message}")
            case Code.CONFLICT:
                if indefinite:  # an earlier attempt may be the change that is pending
                    raise Indeterminate(f"conflict after an unknown outcome: {resp.message}")
                raise Conflict(resp.message)
            case Code.SESSION_EXPIRED:
                if session is not None and self._session is session:
                    self._session = _Session(os.urandom(p.CLIENT_ID_BYTES))
                if indefinite:
                    raise Indeterminate(f"session expired after an unknown outcome: {resp.message}")
                raise SessionExpired(resp.message)
            case Code.NOSPACE:
                if indefinite:  # an earlier attempt may have been applied
                    raise Indeterminate(f"NOSPACE after an unknown outcome: {resp.message}")
                raise NoSpace(resp.message)
            case Code.STALE_SEQ:
                # The session forgot this seq's result: retrying cannot tell us more.
                raise Indeterminate(f"outcome forgotten by the server: {resp.message}")
            case Code.SEQ_REUSED:
                if indefinite:  # an earlier attempt may be what the seq remembers
                    raise Indeterminate(f"seq reused after an unknown outcome: {resp.message}")
                raise SeqReused(resp.message)

    async def _attempt(
        self, addr: str, build: Callable[[int], p.Request], timeout: float
    ) -> p.Response:
        start = time.monotonic()
        try:
            conn = await self._connection(addr, timeout)
        except (OSError, TimeoutError, ProtocolError, CodecError) as exc:
            raise _Retry(f"cannot connect: {exc!r}", indefinite=False, node_gone=True) from None
        req = build(0)
        _check_limits(req, conn.hello.limits)
        token = self._token
        if token is not None and conn.token != token and not isinstance(req, p.Authenticate):
            # A connection opened before the latest login: give it the new token first.
            left = max(0.001, timeout - (time.monotonic() - start))
            bound = await conn.request(lambda rid: p.AuthToken(id=rid, token=token), left)
            if isinstance(bound, p.ErrorResponse):
                return bound  # AUTH_FAILED: the caller logs in again
            conn.token = token
        left = max(0.001, timeout - (time.monotonic() - start))
        resp = await conn.request(build, left)
        if isinstance(resp, p.TokenResponse):
            conn.token = resp.token  # the server bound it to this connection
        return resp

    # ---- login -------------------------------------------------------------------------

    async def _first_login(self) -> None:
        if self._credentials is not None and self._logins == 0:
            await self._relogin(0)

    async def _relogin(self, seen: int) -> None:
        """Log in again, unless a login has completed since generation ``seen`` (the
        attempt that failed used an older token); concurrent callers share one."""
        if self._logins != seen:
            return
        if self._login is None or self._login.done():
            self._login = asyncio.ensure_future(self._do_login())
        await asyncio.shield(self._login)

    async def _do_login(self) -> None:
        assert self._credentials is not None
        user, password = self._credentials
        try:
            resp = await self._call(
                lambda rid: p.Authenticate(id=rid, user=user, password=password),
                None,
                login=True,
            )
        except FailedPrecondition:  # auth is off: carry on without a token
            self._token, self._token_user = None, None
        else:
            assert isinstance(resp, p.TokenResponse)
            self._token, self._token_user = resp.token, user
        finally:
            self._logins += 1

    async def _connection(self, addr: str, timeout: float) -> _Connection:
        """The pooled connection to ``addr``: concurrent callers share one dial."""
        task = self._conns.get(addr)
        if (
            task is not None
            and task.done()
            and (task.cancelled() or task.exception() is not None or task.result().closed)
        ):
            task = None
        if task is None:
            task = asyncio.get_running_loop().create_task(
                _Connection.open(addr, timeout, self._tls, self._token)
            )
            self._conns[addr] = task
        try:
            return await asyncio.shield(task)
        except BaseException:
            if self._conns.get(addr) is task and task.done():
                del self._conns[addr]
            raise

    def _pick(self) -> str:
        if self._leader is not None:
            return self._leader
        return self._endpoints[self._next_endpoint % len(self._endpoints)]

    def _node_failed(self, addr: str) -> None:
        if self._leader == addr:
            self._leader = None
        if self._endpoints[self._next_endpoint % len(self._endpoints)] == addr:
            self._next_endpoint += 1

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with "equal jitter": spreads retrying clients apart."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** min(failures, 30))
        return float(ceiling * (0.5 + 0.5 * self._rng.random()))


class Watch:
    """A watch stream: ``async for events in watch`` yields batches of
    ``protocol.WatchEvent`` in revision order (the first batch may be empty: it
    confirms the watch). ``revision`` is the revision through which everything has been
    delivered. Iteration ends after ``close()``; it raises Compacted if the start is
    gone from the history, and WatchEnded if the node or connection goes away or the
    server cancels the watch (e.g. it was not read fast enough)."""

    def __init__(
        self,
        conn: _Connection,
        queue: asyncio.Queue[p.Response | _ConnectionLost],
        rev: int,
        first: p.Response | _ConnectionLost | None = None,
    ) -> None:
        self._conn = conn
        self._queue = queue
        self._first = first  # a frame already taken from the queue (watch() peeked)
        self.revision = rev
        self.node = conn.hello.node

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> tuple[p.WatchEvent, ...]:
        frame, self._first = self._first, None
        if frame is None:
            if self._conn.closed and self._queue.empty():
                raise StopAsyncIteration
            frame = await self._queue.get()
        if isinstance(frame, _ConnectionLost):
            if self._conn.closed and str(frame) == _CLOSED_BY_US:
                raise StopAsyncIteration
            raise WatchEnded(str(frame))
        if isinstance(frame, p.WatchEvents):
            self.revision = max(self.revision, frame.revision)
            return frame.events
        assert isinstance(frame, p.ErrorResponse)
        if frame.code is Code.COMPACTED:
            raise Compacted(frame.message, frame.compact_revision or 0)
        # This client ends a watch by closing its connection, never by watch_cancel: a
        # CANCELED is the server's (a slow watcher, a node shutting down), not an end.
        raise WatchEnded(f"{frame.code}: {frame.message}")

    async def close(self) -> None:
        self._queue.put_nowait(_ConnectionLost(_CLOSED_BY_US))
        await self._conn.close()


_CLOSED_BY_US = "watch closed by the client"


def _members(resp: p.Response) -> Members:
    assert isinstance(resp, p.MembersResponse)
    return Members(resp.voters, resp.learners, resp.leader)


def _with_session(
    build: Callable[[int, p.Session], p.Request], session: _Session, seq: int, rid: int
) -> p.Request:
    """The request for one attempt: the ack is recomputed, the seq never changes."""
    return build(rid, session.header(seq))


def _check_name(name: str | None) -> None:
    """Refuse locally a user or role name the server would refuse (definite)."""
    problem = None if name is None else name_problem(name)
    if problem is not None:
        raise BadRequest(f"{name!r}: {problem}")


def _check_password(password: str) -> None:
    try:
        size = len(password.encode())
    except UnicodeEncodeError:
        raise BadRequest("the password is not valid text (UTF-8)") from None
    if not 0 < size <= MAX_PASSWORD_BYTES:
        raise BadRequest(f"a password must be 1 to {MAX_PASSWORD_BYTES} bytes")


def _check_limits(req: p.Request, limits: Limits) -> None:
    """Refuse locally what the server would refuse, so it fails the same way at rest and
    under load (a definite error: nothing was sent)."""
    keys = [getattr(req, "key", b"")]
    values = [getattr(req, n, None) for n in ("value", "new_value", "expected_value")]
    if any(len(k) > limits.max_key_bytes for k in keys):
        raise TooLarge(f"key exceeds the server's limit of {limits.max_key_bytes} bytes")
    if any(v is not None and len(v) > limits.max_value_bytes for v in values):
        raise TooLarge(f"value exceeds the server's limit of {limits.max_value_bytes} bytes")


# ---- synchronous facade ----------------------------------------------------------------


class Client:
    """Synchronous client: an AsyncClient on a private event loop in a daemon thread.
    Same methods and errors as AsyncClient except ``watch`` (a stream: use the
    AsyncClient); safe to call from several threads."""

    def __init__(self, endpoints: list[str], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="raftkv-client", daemon=True
        )
        self._thread.start()
        self._async = self._run(_make_async(endpoints, kwargs))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client_id(self) -> bytes:
        return self._async.client_id

    def get(self, key: KeyLike, *, consistency: str = "linearizable") -> KeyValue:
        return self._run(self._async.get(key, consistency=consistency))

    def scan(
        self,
        prefix: KeyLike | None = None,
        *,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        limit: int | None = None,
        consistency: str = "linearizable",
    ) -> ScanResult:
        return self._run(
            self._async.scan(prefix, start=start, end=end, limit=limit, consistency=consistency)
        )

    def put(self, key: KeyLike, value: KeyLike) -> WriteResult:
        return self._run(self._async.put(key, value))

    def delete(self, key: KeyLike) -> WriteResult:
        return self._run(self._async.delete(key))

    def cas(
        self,
        key: KeyLike,
        *,
        new_value: KeyLike,
        expected_value: KeyLike | None = None,
        expected_version: int | None = None,
    ) -> WriteResult:
        return self._run(
            self._async.cas(
                key,
                new_value=new_value,
                expected_value=expected_value,
                expected_version=expected_version,
            )
        )

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        return self._run(self._async.txn(compare, success, failure))

    def lease_grant(self, ttl_ms: int) -> Lease:
        return self._run(self._async.lease_grant(ttl_ms))

    def lease_keepalive(self, lease: int) -> Lease:
        return self._run(self._async.lease_keepalive(lease))

    def lease_revoke(self, lease: int) -> WriteResult:
        return self._run(self._async.lease_revoke(lease))

    def lease_ttl(self, lease: int) -> Lease:
        return self._run(self._async.lease_ttl(lease))

    def status(self, endpoint: str | None = None) -> NodeStatus:
        return self._run(self._async.status(endpoint))

    def transfer_leader(self, to: str) -> str:
        return self._run(self._async.transfer_leader(to))

    def member_add(self, node: str, *, learner: bool = False) -> Members:
        return self._run(self._async.member_add(node, learner=learner))

    def member_remove(self, node: str) -> Members:
        return self._run(self._async.member_remove(node))

    def member_list(
        self, endpoint: str | None = None, consistency: str = "linearizable"
    ) -> Members:
        return self._run(self._async.member_list(endpoint, consistency))

    def alarm_list(self) -> tuple[AlarmInfo, ...]:
        return self._run(self._async.alarm_list())

    def alarm_disarm(self, alarm: str | None = None) -> tuple[AlarmInfo, ...]:
        return self._run(self._async.alarm_disarm(alarm))

    def auth_enable(self) -> None:
        self._run(self._async.auth_enable())

    def auth_disable(self) -> None:
        self._run(self._async.auth_disable())

    def auth_status(self) -> tuple[bool, int]:
        return self._run(self._async.auth_status())

    def user_add(self, name: str, password: str) -> None:
        self._run(self._async.user_add(name, password))

    def user_delete(self, name: str) -> None:
        self._run(self._async.user_delete(name))

    def user_passwd(self, name: str, password: str) -> None:
        self._run(self._async.user_passwd(name, password))

    def user_grant_role(self, name: str, role: str) -> None:
        self._run(self._async.user_grant_role(name, role))

    def user_revoke_role(self, name: str, role: str) -> None:
        self._run(self._async.user_revoke_role(name, role))

    def user_list(self) -> tuple[str, ...]:
        return self._run(self._async.user_list())

    def user_get(self, name: str) -> UserInfo:
        return self._run(self._async.user_get(name))

    def role_add(self, name: str) -> None:
        self._run(self._async.role_add(name))

    def role_delete(self, name: str) -> None:
        self._run(self._async.role_delete(name))

    def role_grant_permission(self, name: str, perm: str, prefix: KeyLike) -> None:
        self._run(self._async.role_grant_permission(name, perm, prefix))

    def role_revoke_permission(self, name: str, prefix: KeyLike) -> None:
        self._run(self._async.role_revoke_permission(name, prefix))

    def role_list(self) -> tuple[str, ...]:
        return self._run(self._async.role_list())

    def role_get(self, name: str) -> RoleInfo:
        return self._run(self._async.role_get(name))

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


async def _make_async(endpoints: list[str], kwargs: dict[str, Any]) -> AsyncClient:
    return AsyncClient(endpoints, **kwargs)
