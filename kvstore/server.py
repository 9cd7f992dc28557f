"""The client-facing asyncio server: protocol frames in, engine calls, responses out.

Theory of operation. One handler task per TCP connection does the handshake, then
reads frames and spawns one task per request, so a slow linearizable read or a write
waiting for its commit never holds up the requests pipelined behind it
(docs/PROTOCOL.md §3). At most ``max_in_flight`` requests of one connection run at
once; beyond that the handler simply stops reading, and TCP pushes back on the client.
Responses leave through one lock per connection, so frames never interleave and a
client that stops reading stalls only its own connection.

Every byte from a client goes through :mod:`kvstore.protocol`. A request that decodes
far enough to show its id gets an error response and the connection lives on; a stream
that cannot be read any more (bad msgpack, a frame over the limit, no id) ends the
connection: the requests already running are answered first, then one error with
``"id": nil``, then close. Nothing a client sends can raise out of its handler, so no
client affects another.

Writes become commands (kvstore/commands.py) carrying the client's session, and go
through ``Engine.propose``; linearizable reads (and read-only
transactions) wait for ``Engine.read_barrier`` and then read the local state machine.
Engine errors map onto codes by what they promise: NotLeader and ProposalDropped
certainly did not apply (NOT_LEADER / UNAVAILABLE), TimeoutError may have (TIMEOUT).

What one client may hold is bounded (:class:`ConnectionLimits`, from ``[client]``;
docs/SECURITY.md): connections per node (more are refused politely; with TLS the count
includes handshakes in progress, see :meth:`ClientServer.start`), requests in flight
per connection, a frame begun must complete in time, a connection with nothing in
flight and no watch closes when idle, response bytes waiting for a client that does not
read (the node stops reading its requests; a watch that would add more is cancelled),
watches per connection and per node, and the rate of leadership transfers.

Watches are streams: one task per watch reads the state machine's event history from
the watcher's next revision, sends what it finds, and once caught up sleeps until the
state machine applies another write (``add_listener``). Reading from the history rather
than pushing each event as it is applied makes the stream gap-free by construction, and
a slow watcher costs nothing but its place in the history: one that falls behind the
compaction point gets COMPACTED instead of a silent gap.

Auth (kvstore/auth.py, docs/SECURITY.md). While the replicated auth state is off, a
request costs one attribute read more than before. Once it is on, a connection acts as
the user of the token bound to it (in the hello, by ``authenticate`` or by
``auth_token``); each request checks the token (signature, user, password revision,
expiry by this node's wall clock) and then its permissions against this node's applied
auth state. A write carries the user and that auth revision into the log, and the state
machine re-checks it if the auth state moved in between. Admin ops need role root.

Leases run out by the leader's lessor (kvstore/lessor.py), on this node's monotonic
clock. A ticker follows this node's leadership (promoting the lessor when it becomes
leader, in each new term; demoting it when it is not) and proposes ``ExpireLease`` for
each lease the lessor finds run out. A keep-alive is answered here, after a ReadIndex
round has confirmed this node still leads, and is never logged. No wall clock is read.

The storage quota (kvstore/quota.py) is checked here, before proposing: a write that
may grow the data past this node's ``quota_bytes`` is refused with NOSPACE (definite:
nothing was proposed) and this node proposes its NOSPACE alarm, which the state machine
then enforces at apply on every replica. The check costs O(1) for a put: the state
machine keeps its data size up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Protocol

from raft.engine import Engine
from raft.errors import NotLeader, ProposalDropped
from raft.framing import FrameDecoder, FrameTooLarge, encode_frame, frame_header
from raft.types import ConfChange, ConfChangeKind, NodeId

from . import protocol as p
from .auth import ROOT, AuthBehind, AuthError, AuthState, key_range
from .commands import (
    CLIENT_ID_LEN,
    TOKEN_KEY_BYTES,
    AlarmType,
    AuthDisable,
    AuthEnable,
    Cas,
    CloseSession,
    Command,
    CommandError,
    Delete,
    DisarmAlarm,
    ExpireLease,
    Header,
    LeaseGrant,
    LeaseRevoke,
    OpenSession,
    Permission,
    Put,
    RaiseAlarm,
    RangeOp,
    RoleAdd,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
    Txn,
    TxnOp,
    UserAdd,
    UserChangePassword,
    UserDelete,
    UserGrantRole,
    UserRevokeRole,
    encode_command,
)
from .lessor import Lessor
from .mvcc import END_OF_KEYSPACE, Compacted, Event, EventType
from .mvcc import KeyValue as StoredKV
from .password import PasswordHash, hash_password, verify_password
from .protocol import Code, Consistency, Limits, ProtocolError
from .quota import DEFAULT_QUOTA_BYTES, Alarm, write_growth
from .refusals import RefusalLog
from .state_machine import LeaseObserver, Result, ResultCode

__all__ = ["ClientServer", "ConnectionLimits", "ReadableState"]

log = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT = 10.0
_READ_CHUNK = 256 << 10
_RESPONSE_SLACK = 1024  # bytes kept free in a frame for the response envelope
_KV_OVERHEAD = 96  # msgpack bytes per kv beyond key and value (5 field names, 3 ints)
_TRANSFER_POLL_S = 0.01
_SPLIT_WRITE_BYTES = 64 << 10
_REFUSAL_LINGER_S = 0.2  # a refused connection's reply gets this long to arrive
_WATCH_FRAME_BYTES = 64 << 10  # a watcher that stops reading holds about this, twice
_LEASE_TICK_S = 0.1  # how often the lessor follows leadership and looks for expiries
# The header of the sessionless commands this server proposes on its own (ExpireLease,
# RaiseAlarm) and of DisarmAlarm: their client id is never looked up.
_SESSIONLESS = Header(bytes(CLIENT_ID_LEN), 1, 0)
_LOGINS_AT_ONCE = 2  # scrypt checks in flight per node (16 MiB and ~50 ms each)
# Checked when the user does not exist, so a wrong name costs what a wrong password does.
_DUMMY_HASH = PasswordHash(bytes(16), 14, 8, 1, bytes(32))
_OPEN_OPS = (p.Status, p.MemberList, p.Authenticate, p.AuthToken)


def _open_to_all(req: p.Request) -> bool:
    """Answered without a token even when auth is on: status, member list, auth
    status (what a client needs to find its way, as in etcd) and the login itself."""
    return isinstance(req, _OPEN_OPS) or (
        isinstance(req, p.AuthQuery) and req.op is p.Op.AUTH_STATUS
    )


MIN_TTL_ELECTION_TIMEOUTS = 1.5
"""A granted TTL is at least this many election timeouts (etcd's minimum): a shorter
lease could run out during one election, before its holder can reach the new leader."""


class ReadableState(Protocol):
    """What the server reads locally: the KV state machine's read side."""

    @property
    def revision(self) -> int: ...

    def get(self, key: bytes) -> StoredKV | None: ...

    def range(
        self, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> tuple[list[StoredKV], bool]: ...

    def read_txn(self, txn: Txn) -> Result: ...

    def events_since(
        self, revision: int, start: bytes, end: bytes | None, limit: int = 1000
    ) -> tuple[list[Event], int]: ...

    def lease_ttl_ms(self, lease: int) -> int | None: ...

    @property
    def auth(self) -> AuthState: ...

    def session_user(self, client_id: bytes) -> tuple[bool, str | None]: ...

    def keys_of_lease(self, lease: int) -> list[bytes]: ...

    def set_lease_observer(self, observer: LeaseObserver | None) -> None: ...

    def add_listener(self, callback: Callable[[], None]) -> None: ...

    @property
    def data_bytes(self) -> int: ...

    def alarms(self) -> list[Alarm]: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client may hold of a node (the ``[client]`` settings of the same names;
    times in seconds here)."""

    idle_timeout: float = 300.0
    frame_timeout: float = 10.0
    max_connections: int = 4096
    max_in_flight: int = 32
    max_queued_bytes: int = 8 << 20
    max_watches_per_connection: int = 1000
    max_watches: int = 10_000
    transfer_interval: float = 1.0
    token_ttl: float = 300.0

    @classmethod
    def from_settings(cls, settings: Any) -> ConnectionLimits:
        """From a cluster.toml ClientSettings (duck-typed; missing fields: defaults)."""
        d = cls()

        def get(name: str, default: Any) -> Any:
            v = getattr(settings, name, None)
            return default if v is None else v

        def ms(name: str, default: float) -> float:
            v = get(name + "_ms", None)
            return default if v is None else v / 1000

        return cls(
            idle_timeout=ms("idle_timeout", d.idle_timeout),
            frame_timeout=ms("frame_timeout", d.frame_timeout),
            max_connections=get("max_connections", d.max_connections),
            max_in_flight=get("max_in_flight", d.max_in_flight),
            max_queued_bytes=get("max_queued_bytes", d.max_queued_bytes),
            max_watches_per_connection=get(
                "max_watches_per_connection", d.max_watches_per_connection
            ),
            max_watches=get("max_watches", d.max_watches),
            transfer_interval=ms("transfer_interval", d.transfer_interval),
            token_ttl=ms("token_ttl", d.token_ttl),
        )


def limits_from_settings(settings: Any) -> Limits:
    """``Limits`` as given, or built from a cluster.toml ClientSettings (duck-typed so the
    server does not pin that class's optional fields)."""
    if isinstance(settings, Limits):
        return settings
    default = Limits()
    return Limits(
        max_frame_bytes=getattr(settings, "max_request_bytes", default.max_frame_bytes),
        max_key_bytes=getattr(settings, "max_key_bytes", default.max_key_bytes),
        max_value_bytes=getattr(settings, "max_value_bytes", default.max_value_bytes),
        max_scan_limit=getattr(settings, "max_scan_limit", default.max_scan_limit),
    )


class ClientServer:
    """Serves the client protocol for one node.

    ``client_addresses`` maps node ids to client addresses (for NOT_LEADER redirects);
    it is read at request time, so the caller may fill it after binding to port 0.
    ``request_timeout`` bounds each engine call; keep it below the clients' attempt
    timeout so they hear TIMEOUT rather than silence. ``clock`` is this node's monotonic
    clock (seconds), the lessor's; ``election_timeout`` (seconds) is what every lease
    gains when this node becomes leader, and 1.5 times it is the shortest TTL granted.
    ``quota_bytes`` is this node's storage quota (kvstore/quota.py)."""

    def __init__(
        self,
        engine: Engine,
        state_machine: ReadableState,
        node_id: NodeId,
        client_addresses: dict[NodeId, str],
        settings: Any = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        election_timeout: float = 1.0,
        request_timeout: float | None = None,
        transfer_timeout: float | None = None,
        connection_limits: ConnectionLimits | None = None,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
    ) -> None:
        if quota_bytes < 1:
            raise ValueError("quota_bytes must be positive")
        self._quota = quota_bytes
        self._engine = engine
        self._sm = state_machine
        self._node_id = node_id
        self._addresses = client_addresses
        self._limits = limits_from_settings(settings if settings is not None else Limits())
        self._timeout = request_timeout or getattr(settings, "request_timeout", None) or 5.0
        # An expiry proposal may take up to the request timeout to apply: re-proposing
        # sooner only adds duplicates when commits are slow (review of issue 9).
        self._lessor = Lessor(clock, election_timeout, retry_s=max(1.0, self._timeout))
        self._min_ttl_ms = math.ceil(MIN_TTL_ELECTION_TIMEOUTS * election_timeout * 1000)
        # Expiry proposals in flight (a dict: cancelled in a deterministic order).
        self._expiring: dict[asyncio.Task[None], None] = {}
        # This node's NOSPACE alarm proposal in flight: concurrent writes past the
        # quota share it rather than each proposing one.
        self._raising: asyncio.Task[None] | None = None
        # How long a transfer_leader waits to see the new leader (capped by the request
        # timeout); the node passes two election timeouts.
        self._transfer_timeout = transfer_timeout or self._timeout
        self._conn_limits = connection_limits or ConnectionLimits.from_settings(settings)
        # Announced in the hello: a client keeps no more requests in flight than this.
        self._limits = dataclasses.replace(
            self._limits, max_in_flight=self._conn_limits.max_in_flight
        )
        self._watch_count = 0
        self._last_transfer = float("-inf")
        self._refusals = RefusalLog(log, f"{node_id}: refused a client connection")
        self._tls_failures = RefusalLog(log, f"{node_id}: a client's TLS handshake failed")
        self._ssl: SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._lingering: set[asyncio.StreamWriter] = set()  # refused, reply on its way
        self._watch_wakeups: set[asyncio.Event] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._login_slots = asyncio.Semaphore(_LOGINS_AT_ONCE)
        state_machine.add_listener(self._wake_watchers)
        state_machine.set_lease_observer(self._lessor)

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def port(self) -> int:
        """The bound port (useful after ``start(host, 0)``)."""
        assert self._server is not None and self._server.sockets, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, ssl: SSLContext | None = None) -> None:
        """Listen on ``host:port``; with ``ssl``, clients speak TLS.

        The listener is plain TCP even then: each connection is counted against
        ``max_connections`` first and upgraded by its own handler, within
        ``frame_timeout``. (With ``ssl=`` on the server, asyncio would run the
        handshake before any handler, so connections that never finish one would
        each hold a file descriptor, uncounted.) Past the limit a TLS connection is
        closed at once: the polite error needs a handshake, which is what it must not
        get."""
        self._ssl = ssl
        self._server = await asyncio.start_server(self._on_connect, host, port)
        self.start_timers()
        log.info("client server %s listening on %s:%d", self._node_id, host, self.port)

    def stats(self) -> dict[str, int]:
        """``connections``: open now (TLS handshakes in progress included);
        ``refused``: over ``max_connections`` since start; ``tls_failed``: TLS
        handshakes that failed or timed out since start."""
        return {
            "connections": len(self._handlers),
            "refused": self._refusals.total,
            "tls_failed": self._tls_failures.total,
        }

    def start_timers(self) -> None:
        """Start the lease ticker (``start`` does; a simulation calls :meth:`handle`
        directly and starts only this)."""
        self._ticker = asyncio.get_running_loop().create_task(self._lease_ticker())

    def stop_timers(self) -> list[asyncio.Task[None]]:
        """Cancel the lease ticker, the expiries it proposed and an alarm being raised;
        returns the tasks."""
        tasks = [t for t in (self._ticker, *self._expiring, self._raising) if t is not None]
        for task in tasks:
            task.cancel()
        self._ticker = None
        return tasks

    async def close(self) -> None:
        """Stop listening, end every connection, and wait until all handlers are gone."""
        await asyncio.gather(*self.stop_timers(), return_exceptions=True)
        self._sm.set_lease_observer(None)
        if self._server is not None:
            self._server.close()
        for writer in list(self._lingering):  # not left open when the loop ends
            self._end_refused(writer)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._handlers) >= self._conn_limits.max_connections:
            self._refuse(writer)
            return
        task = asyncio.get_running_loop().create_task(self._serve_connection(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Over max_connections: one polite error (plain TCP only), then close; logged
        once a minute."""
        msg = f"too many connections (this node serves {self._conn_limits.max_connections})"
        loop = asyncio.get_running_loop()
        self._refusals.note(loop.time(), msg)
        if self._ssl is not None:
            writer.close()
            return
        with contextlib.suppress(Exception):
            writer.write(encode_frame(p.encode_hello_reply(_error(None, Code.UNAVAILABLE, msg))))
            # The reply and then EOF, before closing: closing at once, with the client's
            # hello unread, could reset the connection and lose the reply.
            writer.write_eof()
        self._lingering.add(writer)
        loop.call_later(_REFUSAL_LINGER_S, self._end_refused, writer)

    def _end_refused(self, writer: asyncio.StreamWriter) -> None:
        self._lingering.discard(writer)
        writer.close()

    async def _start_tls(self, writer: asyncio.StreamWriter, peer: object) -> bool:
        """Upgrade a counted connection to TLS within ``frame_timeout``; False (counted,
        logged once a minute) if the handshake fails or does not finish in time."""
        assert self._ssl is not None
        timeout = self._conn_limits.frame_timeout
        try:
            async with asyncio.timeout(timeout):
                await writer.start_tls(self._ssl, ssl_handshake_timeout=timeout)
        except (OSError, EOFError) as exc:  # ssl.SSLError, TimeoutError, resets
            self._tls_failures.note(asyncio.get_running_loop().time(), f"{peer}: {exc!r}")
            return False
        return True

    # ---- one connection ----------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Connection(writer, self._conn_limits)
        # One decoder for the whole stream: bytes pipelined right behind the hello are
        # already the first requests.
        decoder = FrameDecoder(self._limits.max_frame_bytes)
        usable = self._ssl is None  # the stream's protocol will hear of the close
        try:
            # NB: no await before _start_tls: bytes read before the upgrade would be
            # lost to the TLS layer. This task's first step runs before the loop first
            # reads the new socket, and the upgrade pauses reading at once.
            if not usable:
                usable = await self._start_tls(writer, peer)
                if not usable:
                    return
            if await self._handshake(reader, decoder, conn):
                fatal = await self._read_requests(reader, decoder, conn)
                await conn.drain_tasks()
                if fatal is not None:
                    log.info("closing client %s: %s %s", peer, fatal.code, fatal.message)
                    await conn.send(p.encode_response(fatal))
        except (ConnectionError, TimeoutError) as exc:
            log.debug("client %s gone: %r", peer, exc)
        except asyncio.CancelledError:
            conn.cancel_tasks()
            raise
        except Exception:
            log.exception("client handler for %s failed", peer)
        finally:
            conn.cancel_tasks()
            writer.close()
            # NB: after an upgrade that failed or was cancelled mid-handshake, asyncio
            # never tells the stream its transport closed: wait_closed() would hang.
            if usable:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _handshake(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder, conn: _Connection
    ) -> bool:
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                while (frame := decoder.next_frame()) is None:
                    chunk = await reader.read(_READ_CHUNK)
                    if not chunk:
                        return False
                    decoder.feed(chunk)
            hello = p.decode_hello(frame)
        except (ProtocolError, FrameTooLarge) as exc:
            msg = exc.message if isinstance(exc, ProtocolError) else str(exc)
            await conn.send(p.encode_hello_reply(_error(None, Code.BAD_REQUEST, msg)))
            return False
        if hello.version not in p.SUPPORTED_VERSIONS:
            msg = f"version {hello.version} not supported"
            await conn.send(p.encode_hello_reply(_error(None, Code.UNSUPPORTED_VERSION, msg)))
            return False
        conn.token = hello.token  # checked with each request (it may expire meanwhile)
        leader = self._leader_hint()
        reply = p.HelloOk(
            version=hello.version,
            node=self._node_id,
            leader=leader,
            leader_addr=None if leader is None else self._addresses.get(leader),
            limits=self._limits,
        )
        await conn.send(p.encode_hello_reply(reply))
        return True

    async def _read_requests(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder, conn: _Connection
    ) -> p.ErrorResponse | None:
        """Read and dispatch until EOF (None) or an unreadable stream (the error)."""
        chunk = b""
        limits = self._conn_limits
        loop = asyncio.get_running_loop()
        frame_started: float | None = None  # when the frame now buffered began
        while True:
            try:
                decoder.feed(chunk)
                for frame in decoder.frames():
                    frame_started = None
                    try:
                        req = p.decode_request(frame, self._limits)
                    except ProtocolError as exc:
                        if exc.request_id is None:
                            return _error(None, exc.code, exc.message)
                        await conn.send(
                            p.encode_response(_error(exc.request_id, exc.code, exc.message))
                        )
                        continue
                    if isinstance(req, p.WatchCancel):  # at once: it frees a watch
                        await self._answer(req, conn)
                        continue
                    await conn.writable()  # no new work while answers wait unread
                    if isinstance(req, p.Watch):
                        # Registered now, in request order (a cancel right behind it
                        # finds it); a stream takes no request slot, its own limits
                        # bound it, so open watches never block a cancel.
                        opened = self._open_watch(req, conn)
                        if isinstance(opened, p.ErrorResponse):
                            await conn.send(p.encode_response(opened))
                            continue
                        watcher = self._watch(req, conn, opened, self._watch_user(conn))
                        task = await conn.spawn(watcher, slot=False)
                        # Closed when the task ends, even one cancelled before it ran.
                        task.add_done_callback(
                            lambda _, rid=req.id, wake=opened: self._close_watch(conn, rid, wake)
                        )
                        continue
                    await conn.spawn(self._answer(req, conn))
            except FrameTooLarge as exc:
                return _error(None, Code.TOO_LARGE, str(exc))
            # A client that does not read its responses gets no more of its requests
            # read: TCP pushes back on it, and its queue stops growing.
            await conn.writable()
            # Every read has a deadline: the frame begun must complete in time (however
            # slowly its bytes trickle in), and a connection that stays idle -- nothing
            # in flight, no watch -- closes; one that is busy is simply read again.
            now = loop.time()
            if decoder.buffered_bytes:
                frame_started = now if frame_started is None else frame_started
                deadline = frame_started + limits.frame_timeout
            else:
                frame_started = None
                deadline = now + limits.idle_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await reader.read(_READ_CHUNK)
            except TimeoutError:
                if decoder.buffered_bytes:
                    msg = f"a request frame was not completed in {limits.frame_timeout:g} s"
                    return _error(None, Code.TIMEOUT, msg + ": closing")
                if conn.idle():
                    msg = f"idle (no request and no watch) for {limits.idle_timeout:g} s"
                    return _error(None, Code.TIMEOUT, msg + ": closing")
                chunk = b""
                continue
            if not chunk:
                return None

    async def _answer(self, req: p.Request, conn: _Connection) -> None:
        if isinstance(req, p.WatchCancel):
            resp: p.Response = p.OkResponse(id=req.id)
            if not conn.cancel_watch(req.watch):
                resp = _error(req.id, Code.NOT_FOUND, f"no watch {req.watch} on this connection")
            await conn.send(p.encode_response(resp))
            return
        if isinstance(req, p.AuthToken):
            resp = p.OkResponse(id=req.id)
            if self._sm.auth.enabled:  # while auth is off any token is kept, unchecked
                who = self._user_of(req.id, req.token)
                resp = who if isinstance(who, p.ErrorResponse) else resp
            if isinstance(resp, p.OkResponse):
                conn.token = req.token
            await conn.send(p.encode_response(resp))
            return
        resp = await self.handle(req, conn.token)
        if isinstance(resp, p.TokenResponse):
            conn.token = resp.token  # a login binds its token to its connection
        await conn.send(p.encode_response(resp))

    # ---- watches -------------------------------------------------------------------------

    def _wake_watchers(self) -> None:
        for wake in self._watch_wakeups:
            wake.set()

    def _watch_user(self, conn: _Connection) -> str | None:
        """The user a watch opened on ``conn`` now runs as (None: auth off)."""
        if not self._sm.auth.enabled:
            return None
        user = self._user_of(0, conn.token)
        return None if isinstance(user, p.ErrorResponse) else user

    def _watch_refusal(self, req: p.Watch, user: str | None) -> p.ErrorResponse | None:
        auth = self._sm.auth
        if auth.permits(user, Permission.READ, [_watch_range(req)]):
            return None
        who = "an anonymous client" if user is None else f"user {user!r}"
        return _error(req.id, Code.PERMISSION_DENIED, f"{who} may not read the watched keys")

    def _open_watch(self, req: p.Watch, conn: _Connection) -> asyncio.Event | p.ErrorResponse:
        """Register watch ``req`` on ``conn`` (its wake-up event), or the refusal: no
        read permission on its range (auth on), an id already open, or a watch limit
        reached."""
        if self._sm.auth.enabled:
            user = self._user_of(req.id, conn.token)
            if isinstance(user, p.ErrorResponse):
                return user
            refusal = self._watch_refusal(req, user)
            if refusal is not None:
                return refusal
        limits = self._conn_limits
        if req.id in conn.watches:
            msg = f"watch id {req.id} is already open on this connection"
            return _error(req.id, Code.BAD_REQUEST, msg)
        if len(conn.watches) >= limits.max_watches_per_connection:
            most = limits.max_watches_per_connection
            msg = f"too many watches on this connection (at most {most})"
            return _error(req.id, Code.UNAVAILABLE, msg)
        if self._watch_count >= limits.max_watches:
            msg = f"too many watches on this node (at most {limits.max_watches})"
            return _error(req.id, Code.UNAVAILABLE, msg)
        wake = asyncio.Event()
        self._watch_wakeups.add(wake)
        self._watch_count += 1
        conn.watches[req.id] = wake
        return wake

    def _close_watch(self, conn: _Connection, rid: int, wake: asyncio.Event) -> None:
        if conn.watches.get(rid) is wake:
            del conn.watches[rid]
        self._watch_wakeups.discard(wake)
        self._watch_count -= 1

    async def _watch(
        self, req: p.Watch, conn: _Connection, wake: asyncio.Event, user: str | None
    ) -> None:
        """Stream events to ``conn`` until cancelled, compacted away, or the connection
        ends. Frames hold at most ``max_scan_limit`` events and fit the frame limit. A
        watch whose next frame would pass the connection's ``max_queued_bytes`` (its
        client is not reading) is cancelled: etcd's slow-watcher treatment. Whenever
        the auth state changes, ``user``'s permission is checked again: a watcher whose
        read permission was revoked (or auth came on) gets PERMISSION_DENIED and the
        stream ends, before any event it may no longer read."""
        next_rev = req.start_revision or self._sm.revision + 1
        first = True
        checked_at = self._sm.auth.revision
        while conn.watches.get(req.id) is wake:
            wake.clear()
            if self._sm.auth.revision != checked_at:
                checked_at = self._sm.auth.revision
                refusal = self._watch_refusal(req, user)
                if refusal is not None:
                    await conn.send(p.encode_response(refusal))
                    return
            try:
                events, through = self._sm.events_since(next_rev, req.key, req.end)
            except Compacted as exc:
                msg = f"revision {next_rev} is compacted (history starts after "
                msg += f"{exc.compacted_revision})"
                err = p.ErrorResponse(
                    id=req.id,
                    code=Code.COMPACTED,
                    message=msg,
                    compact_revision=exc.compacted_revision,
                )
                await conn.send(p.encode_response(err))
                return
            if events or first:
                for frame in self._event_frames(req.id, events, through):
                    payload = p.encode_response(frame)
                    if conn.would_overflow(len(payload)):
                        msg = "watch cancelled: the client is not reading its events "
                        msg += f"({conn.queued} bytes waiting)"
                        log.info("%s: slow watcher: %s", self._node_id, msg)
                        await conn.send(p.encode_response(_error(req.id, Code.CANCELED, msg)))
                        return
                    await conn.send(payload)
            first = False
            next_rev = through + 1
            if next_rev <= self._sm.revision:
                await asyncio.sleep(0)  # more history behind: keep sending, fairly
                continue
            await wake.wait()
        cancel = _error(req.id, Code.CANCELED, "watch cancelled")
        await conn.send(p.encode_response(cancel))

    def _event_frames(self, rid: int, events: list[Event], through: int) -> list[p.WatchEvents]:
        """Chunk ``events`` into frames; every frame but the last says it is complete
        only through the revision before its last event's (a revision may span frames)."""
        frames: list[p.WatchEvents] = []
        chunk: list[p.WatchEvent] = []
        cap = min(self._limits.max_frame_bytes - _RESPONSE_SLACK, _WATCH_FRAME_BYTES)
        budget = cap
        for ev in events:
            size = len(ev.kv.key) + len(ev.kv.value) + _KV_OVERHEAD + 16
            if chunk and (len(chunk) >= self._limits.max_scan_limit or size > budget):
                frames.append(p.WatchEvents(id=rid, events=tuple(chunk), revision=ev.revision - 1))
                chunk, budget = [], cap
            chunk.append(_event(ev))
            budget -= size
        frames.append(p.WatchEvents(id=rid, events=tuple(chunk), revision=through))
        return frames

    # ---- leases --------------------------------------------------------------------------

    @property
    def lessor(self) -> Lessor:
        return self._lessor

    def _follow_leadership(self) -> None:
        """Promote the lessor once in each term this node leads; demote it otherwise.
        Noticing late only makes the deadlines of the promotion later (safe)."""
        st = self._engine.status()
        if st.role == "leader":
            if self._lessor.promoted_term != st.term:
                self._lessor.promote(st.term)
                log.info("%s: lessor promoted in term %d", self._node_id, st.term)
        elif self._lessor.primary:
            self._lessor.demote()

    async def _lease_ticker(self) -> None:
        """Follow leadership, and propose the expiry of every lease run out."""
        while True:
            await asyncio.sleep(_LEASE_TICK_S)
            try:
                self._follow_leadership()
                for lease in self._lessor.due():
                    task = asyncio.get_running_loop().create_task(self._expire(lease))
                    self._expiring[task] = None
                    task.add_done_callback(self._expiring.pop)
            except Exception:
                log.exception("lease ticker failed")

    async def _expire(self, lease: int) -> None:
        """Propose the expiry of ``lease``; a lost proposal is retried by the lessor."""
        try:
            await self._engine.propose(
                encode_command(_SESSIONLESS, ExpireLease(lease)), self._timeout
            )
            log.info("%s: lease %d expired", self._node_id, lease)
        except (NotLeader, ProposalDropped, TimeoutError) as exc:
            log.debug("expiry of lease %d not applied: %r", lease, exc)

    async def _leader_confirmed(self) -> bool:
        """True once a ReadIndex round in this node's current term has confirmed it
        leads and it has applied everything committed before (raises NotLeader or
        TimeoutError); False if its term changed meanwhile."""
        st = self._engine.status()
        if st.role != "leader":
            raise NotLeader(st.leader)
        await self._engine.read_barrier(self._timeout)
        after = self._engine.status()
        if after.role != "leader" or after.term != st.term:
            return False
        self._follow_leadership()
        return True

    async def _lease_keepalive(self, req: p.LeaseKeepAlive) -> p.Response:
        if not await self._leader_confirmed():
            return _error(req.id, Code.UNAVAILABLE, "leadership changed during keep-alive")
        ttl_ms = self._lessor.renew(req.lease)
        if ttl_ms is None:
            return _error(req.id, Code.NOT_FOUND, f"lease {req.lease} not found or expired")
        return p.LeaseResponse(id=req.id, lease=req.lease, ttl_ms=ttl_ms)

    async def _lease_ttl(self, req: p.LeaseTimeToLive) -> p.Response:
        if not await self._leader_confirmed():
            return _error(req.id, Code.UNAVAILABLE, "leadership changed during the query")
        left = self._lessor.remaining_ms(req.lease)
        if left is None:
            return _error(req.id, Code.NOT_FOUND, f"lease {req.lease} not found")
        return p.LeaseResponse(id=req.id, lease=req.lease, ttl_ms=left)

    # ---- requests ------------------------------------------------------------------------

    async def handle(self, req: p.Request, token: bytes | None = None) -> p.Response:
        """One validated request → its response, as the user of ``token`` (the one
        bound to the request's connection). Never raises (bar cancellation)."""
        user: str | None = None
        auth = self._sm.auth
        if auth.enabled and not _open_to_all(req):
            who = self._user_of(req.id, token)
            if isinstance(who, p.ErrorResponse):
                return who
            user = who
        try:
            match req:
                case p.Get() | p.Scan():
                    if req.consistency is Consistency.LINEARIZABLE:
                        await self._engine.read_barrier(self._timeout)
                    # Checked after the barrier, against an auth state at least as new
                    # as every change committed before the read began.
                    if self._sm.auth.enabled and not self._sm.auth.permits(
                        user, Permission.READ, [_range(req)]
                    ):
                        return _denied(req.id, user)
                    return self._read(req)
                case p.Txn() if req.read_only:
                    txn = self._bounded_txn(req)
                    await self._engine.read_barrier(self._timeout)
                    why = self._sm.auth.denial(user, txn, self._sm.keys_of_lease)
                    if why is not None:
                        return _error(req.id, Code.PERMISSION_DENIED, why)
                    return self._fit(_txn_response(req.id, self._sm.read_txn(txn)), True)
                case (
                    p.Put()
                    | p.Delete()
                    | p.Cas()
                    | p.Txn()
                    | p.LeaseGrant()
                    | p.LeaseRevoke()
                    | p.SessionOpen()
                    | p.SessionClose()
                    | p.AuthChange()
                ):
                    return await self._write(req, user)
                case p.LeaseKeepAlive():
                    return await self._lease_keepalive(req)
                case p.LeaseTimeToLive():
                    return await self._lease_ttl(req)
                case p.Status():
                    return self._status(req)
                case p.Authenticate():
                    # Linearizable, as a read: a user added (or a password changed)
                    # before the login began is seen, whichever node the client found.
                    await self._engine.read_barrier(self._timeout)
                    return await self._authenticate(req)
                case p.AuthQuery():
                    if req.op is not p.Op.AUTH_STATUS:  # auth_status: local, like status
                        await self._engine.read_barrier(self._timeout)
                    return self._auth_query(req, user)
                case p.AlarmList():  # any logged-in user: status shows the alarms too
                    await self._engine.read_barrier(self._timeout)
                    return self._alarms(req.id)
                case _ if user is not None and not auth.is_root(user):
                    return _error(req.id, Code.PERMISSION_DENIED, "admin operations need role root")
                case p.TransferLeader():
                    return await self._transfer_leader(req)
                case p.MemberAdd() | p.MemberRemove():
                    return await self._member_change(req)
                case p.MemberList():
                    if req.consistency is Consistency.LINEARIZABLE:
                        await self._engine.read_barrier(self._timeout)
                    return self._members(req.id)
                case p.AlarmDisarm():
                    return await self._alarm_disarm(req)
                case p.Watch() | p.WatchCancel() | p.AuthToken():  # served by _answer
                    return _error(req.id, Code.BAD_REQUEST, "this op needs a connection")
        except NotLeader as exc:
            return self._not_leader(req.id, exc.leader)
        except ProposalDropped as exc:
            return _error(req.id, Code.UNAVAILABLE, f"proposal dropped: {exc}")
        except TimeoutError:
            return _error(req.id, Code.TIMEOUT, f"no outcome within {self._timeout}s")
        except CommandError as exc:
            return _error(req.id, Code.BAD_REQUEST, str(exc))
        except Exception as exc:
            log.exception("request %r failed", req)
            return _error(req.id, Code.INTERNAL, f"{type(exc).__name__}: {exc}")

    # ---- auth ------------------------------------------------------------------------

    def _user_of(self, rid: int, token: bytes | None) -> str | p.ErrorResponse:
        """The user ``token`` authenticates (auth is on), or the refusal."""
        if token is None:
            return _error(rid, Code.AUTH_REQUIRED, "authentication is on: authenticate first")
        now_ms = time.time_ns() // 1_000_000  # tokens are issued by the wall clock too
        try:
            return self._sm.auth.check_token(token, now_ms, int(self._conn_limits.token_ttl * 1000))
        except AuthBehind as exc:  # a lagging node: definite, retry (another node)
            return _error(rid, Code.UNAVAILABLE, str(exc))
        except AuthError as exc:
            return _error(rid, Code.AUTH_FAILED, str(exc))

    async def _authenticate(self, req: p.Authenticate) -> p.Response:
        """Check the password (scrypt, off the event loop, a few at a time) and issue
        a token. A wrong user name costs the same as a wrong password, and both get the
        same answer."""
        if not self._sm.auth.enabled:
            return _error(req.id, Code.FAILED_PRECONDITION, "authentication is not enabled")
        found = self._sm.auth.users.get(req.user)
        async with self._login_slots:
            h = _DUMMY_HASH if found is None else found.password
            ok = await asyncio.to_thread(verify_password, req.password, h)
        auth = self._sm.auth  # it may have changed while the hash was computed
        if not ok or found is None or auth.users.get(req.user) is not found or not auth.enabled:
            return _error(req.id, Code.AUTH_FAILED, "wrong user name or password")
        token = auth.issue_token(req.user, time.time_ns() // 1_000_000)
        return p.TokenResponse(id=req.id, token=token)

    def _auth_query(self, req: p.AuthQuery, user: str | None) -> p.Response:
        """Users and roles as this node has applied them; root only once auth is on."""
        auth = self._sm.auth
        if auth.enabled and req.op is not p.Op.AUTH_STATUS and not auth.is_root(user):
            return _error(req.id, Code.PERMISSION_DENIED, "reading users and roles needs role root")
        match req.op:
            case p.Op.AUTH_STATUS:
                return p.AuthStatusResponse(id=req.id, enabled=auth.enabled, revision=auth.revision)
            case p.Op.USER_LIST:
                return p.NamesResponse(id=req.id, names=tuple(sorted(auth.users)))
            case p.Op.ROLE_LIST:
                return p.NamesResponse(id=req.id, names=tuple(sorted({*auth.roles, ROOT})))
            case p.Op.USER_GET:
                assert req.name is not None
                u = auth.users.get(req.name)
                if u is None:
                    return _error(req.id, Code.NOT_FOUND, f"user {req.name!r} not found")
                return p.UserResponse(id=req.id, name=req.name, roles=tuple(sorted(u.roles)))
        assert req.name is not None
        if req.name == ROOT:  # it grants everything, with no permissions of its own
            return p.RoleResponse(id=req.id, name=ROOT, permissions=(("readwrite", b""),))
        r = auth.roles.get(req.name)
        if r is None:
            return _error(req.id, Code.NOT_FOUND, f"role {req.name!r} not found")
        perms = tuple((p.PERMISSION_OF[perm], prefix) for prefix, perm in r.perms)
        return p.RoleResponse(id=req.id, name=req.name, permissions=perms)

    def _read(self, req: p.Get | p.Scan) -> p.Response:
        revision = self._sm.revision
        if isinstance(req, p.Get):
            kv = self._sm.get(req.key)
            if kv is None:
                return _error(req.id, Code.NOT_FOUND, "key not found")
            return p.GetResponse(id=req.id, kv=_kv(kv), revision=revision)
        limit = min(req.limit or self._limits.max_scan_limit, self._limits.max_scan_limit)
        # Wire ``end=nil`` is "no upper bound" (mvcc's END_OF_KEYSPACE); a literal end of
        # b"\x00" bounds an empty range, since every key is non-empty.
        if req.end == END_OF_KEYSPACE:
            return p.ScanResponse(id=req.id, kvs=(), more=False, revision=revision)
        end = END_OF_KEYSPACE if req.end is None else req.end
        kvs, more = self._sm.range(req.start, end, limit)
        budget = self._limits.max_frame_bytes - _RESPONSE_SLACK
        out: list[p.KeyValue] = []
        for kv in kvs:
            budget -= len(kv.key) + len(kv.value) + _KV_OVERHEAD
            if budget < 0 and out:
                more = True  # cut to fit one frame; the client continues from the last key
                break
            out.append(_kv(kv))
        return p.ScanResponse(id=req.id, kvs=tuple(out), more=more, revision=revision)

    async def _write(
        self,
        req: p.Put
        | p.Delete
        | p.Cas
        | p.Txn
        | p.LeaseGrant
        | p.LeaseRevoke
        | p.SessionOpen
        | p.SessionClose
        | p.AuthChange,
        user: str | None,
    ) -> p.Response:
        s = req.session
        assert s is not None, "the protocol gives every writing request a session"
        auth = self._sm.auth
        # The revision the checks below are made at (the state machine re-checks the
        # command if the auth state has moved on by the time it applies).
        header = Header(s.client, s.seq, s.ack, user=user, auth_revision=auth.revision)
        cmd: Command
        match req:
            case p.Put():
                cmd = Put(req.key, req.value)
            case p.Delete():
                cmd = Delete(req.key)
            case p.Cas():
                cmd = Cas(req.key, req.expected_value, req.expected_version, req.new_value)
            case p.Txn():
                cmd = self._bounded_txn(req)
            case p.LeaseGrant():
                cmd = LeaseGrant(max(req.ttl_ms, self._min_ttl_ms))
            case p.LeaseRevoke():
                cmd = LeaseRevoke(req.lease)
            case p.SessionOpen():
                cmd = OpenSession()
            case p.SessionClose():
                cmd = CloseSession()
            case p.AuthChange():
                cmd = await _auth_command(req)
        if self._sm.auth.enabled:
            # Against the state now (a password hash may have taken a while); if that is
            # newer than the header's revision, the state machine re-checks at apply.
            refused = self._refusal(req, user, cmd)
            if refused is not None:
                return refused
        growth = write_growth(cmd)
        if growth and self._sm.data_bytes + growth > self._quota:
            await self._raise_nospace()
            msg = (
                f"NOSPACE: the write would take the data past this node's quota of "
                f"{self._quota} bytes ({self._sm.data_bytes} used); delete keys, then "
                "`kv alarm disarm` (docs/OPERATIONS.md)"
            )
            return _error(req.id, Code.NOSPACE, msg)
        result = await self._engine.propose(encode_command(header, cmd), self._timeout)
        if not isinstance(result, Result):
            raise TypeError(f"engine returned {type(result).__name__}, not a Result")
        if result.code is ResultCode.OK:
            if isinstance(req, p.Txn):
                return self._fit(_txn_response(req.id, result), False)
            if isinstance(req, p.LeaseGrant):
                lease, ttl_ms = result.data
                return p.LeaseResponse(id=req.id, lease=lease, ttl_ms=ttl_ms)
        return _write_response(req.id, result)

    async def _raise_nospace(self) -> None:
        """Propose this node's NOSPACE alarm unless it is raised already. NotLeader
        propagates (the client retries at the leader, which checks its own quota); any
        other failure is only logged: the write is refused either way, and the next
        one tries again."""
        me = self._node_id.encode()
        if (AlarmType.NOSPACE, me) in self._sm.alarms():
            return
        if self._raising is None or self._raising.done():
            self._raising = asyncio.ensure_future(self._propose_nospace(me))
        await asyncio.shield(self._raising)

    async def _propose_nospace(self, me: bytes) -> None:
        alarm = encode_command(_SESSIONLESS, RaiseAlarm(AlarmType.NOSPACE, me))
        try:
            await self._engine.propose(alarm, self._timeout)
            log.warning("%s: NOSPACE alarm raised (quota %d bytes)", self._node_id, self._quota)
        except (ProposalDropped, TimeoutError) as exc:
            log.warning("%s: NOSPACE alarm not raised yet: %r", self._node_id, exc)

    async def _alarm_disarm(self, req: p.AlarmDisarm) -> p.Response:
        """Clear the alarm asked for (all of them by default), through the log. A write
        still past a quota raises it again (etcd does the same)."""
        for kind in (req.alarm,) if req.alarm is not None else tuple(AlarmType):
            await self._engine.propose(
                encode_command(_SESSIONLESS, DisarmAlarm(kind)), self._timeout
            )
        log.info("%s: alarms disarmed (%s)", self._node_id, req.alarm.name if req.alarm else "all")
        return self._alarms(req.id)

    def _alarms(self, rid: int) -> p.AlarmsResponse:
        return p.AlarmsResponse(id=rid, alarms=_alarm_infos(self._sm.alarms()))

    def _refusal(self, req: p.Request, user: str | None, cmd: Command) -> p.ErrorResponse | None:
        """PERMISSION_DENIED if ``user`` may not send ``cmd`` (the state machine's own
        rule, kvstore/auth.py), or the session is another user's (issue 11)."""
        why = self._sm.auth.denial(user, cmd, self._sm.keys_of_lease)
        if why is None:
            session = getattr(req, "session", None)
            is_open, owner = self._sm.session_user(session.client) if session else (False, None)
            if is_open and owner != user:
                why = "the session belongs to another user"
        return None if why is None else _error(req.id, Code.PERMISSION_DENIED, why)

    def _bounded_txn(self, req: p.Txn) -> Txn:
        """The txn with every range limited to ``max_scan_limit`` keys (as a scan is), so
        no answer, and no cached result in a session, grows without bound."""
        cap = self._limits.max_scan_limit

        def bound(ops: tuple[TxnOp, ...]) -> tuple[TxnOp, ...]:
            return tuple(
                RangeOp(op.key, op.end, min(op.limit or cap, cap))
                if isinstance(op, RangeOp)
                else op
                for op in ops
            )

        return Txn(req.compares, bound(req.success), bound(req.failure))

    def _fit(self, resp: p.Response, read_only: bool) -> p.Response:
        """A txn answer that fits one frame. A read-only txn that does not is refused
        (TOO_LARGE, definite: nothing changed). A writing txn has been applied, so its
        answer must still arrive: its range results are cut, last keys first, and
        marked ``more`` (as a scan cut to fit a frame is)."""
        if not isinstance(resp, p.TxnResponse):
            return resp
        budget = self._limits.max_frame_bytes - _RESPONSE_SLACK
        size = sum(_result_size(r) for r in resp.responses)
        if size <= budget:
            return resp
        if read_only:
            msg = f"the txn's ranges return ~{size} bytes, over the frame limit; use limits"
            return _error(resp.id, Code.TOO_LARGE, msg)
        out: list[p.RangeResult | p.WriteOpResult] = []
        for r in resp.responses:
            if isinstance(r, p.RangeResult):
                kept: list[p.KeyValue] = []
                share = budget // max(1, len(resp.responses))
                for kv in r.kvs:
                    share -= len(kv.key) + len(kv.value) + _KV_OVERHEAD
                    if share < 0:
                        break
                    kept.append(kv)
                more = r.more or len(kept) < len(r.kvs)
                r = p.RangeResult(kvs=tuple(kept), more=more)
            out.append(r)
        return p.TxnResponse(
            id=resp.id, succeeded=resp.succeeded, responses=tuple(out), revision=resp.revision
        )

    def _status(self, req: p.Status) -> p.Response:
        st = self._engine.status()
        return p.StatusResponse(
            id=req.id,
            node=st.id,
            role=st.role,
            term=st.term,
            leader=st.leader,
            leader_addr=None if st.leader is None else self._addresses.get(st.leader),
            commit=st.commit,
            applied=st.applied,
            # Read back by the fault harness's clock nemesis; never used for a decision.
            wall_ms=time.time_ns() // 1_000_000,
            mono_ms=time.monotonic_ns() // 1_000_000,
            pid=os.getpid(),
            alarms=_alarm_infos(self._sm.alarms()),
            data_bytes=self._sm.data_bytes,
            quota_bytes=self._quota,
        )

    async def _transfer_leader(self, req: p.TransferLeader) -> p.Response:
        """Ask the engine to hand leadership to ``req.to``, then wait until this node
        sees another leader. The core abandons a transfer after one election timeout,
        so a bounded wait either sees the move or answers TIMEOUT (outcome unknown: the
        target may have started its election just before we gave up)."""
        st = self._engine.status()
        if st.role != "leader":
            return self._not_leader(req.id, st.leader)
        if req.to == st.id:
            return self._transfer_ok(req.id, st.id, st.term)
        if req.to not in st.voters:
            return _error(req.id, Code.BAD_REQUEST, f"{req.to!r} is not a voter of the cluster")
        loop = asyncio.get_running_loop()
        interval = self._conn_limits.transfer_interval
        if loop.time() - self._last_transfer < interval:
            msg = f"leadership transfers are limited to one per {interval:g} s; retry later"
            return _error(req.id, Code.UNAVAILABLE, msg)
        self._last_transfer = loop.time()
        self._engine.transfer_leader(req.to)
        deadline = loop.time() + min(self._transfer_timeout, self._timeout)
        while loop.time() < deadline:
            await asyncio.sleep(_TRANSFER_POLL_S)
            st = self._engine.status()
            if st.leader is not None and st.leader != self._node_id:
                return self._transfer_ok(req.id, st.leader, st.term)
        return _error(req.id, Code.TIMEOUT, f"leadership did not move to {req.to} in time")

    async def _member_change(self, req: p.MemberAdd | p.MemberRemove) -> p.Response:
        """One single-server membership change, through the log. Asking for the
        membership the cluster already has is OK at once, so a retry is harmless. The
        core refuses a change while another is pending (and in a few other states):
        that is CONFLICT, definite, since nothing entered the log."""
        st = self._engine.status()
        if st.role != "leader":
            return self._not_leader(req.id, st.leader)
        if req.node not in self._addresses:
            msg = f"no node {req.node!r} in this node's config: its address is unknown"
            return _error(req.id, Code.BAD_REQUEST, msg)
        if isinstance(req, p.MemberRemove):
            kind = ConfChangeKind.REMOVE_NODE
            done = req.node not in st.voters and req.node not in st.learners
        elif req.learner:
            kind, done = ConfChangeKind.ADD_LEARNER, req.node in st.learners
        else:
            kind, done = ConfChangeKind.ADD_VOTER, req.node in st.voters
        if not done:
            try:
                await self._engine.propose_conf_change(ConfChange(kind, req.node), self._timeout)
            except NotLeader:
                raise
            except ProposalDropped as exc:
                return _error(req.id, Code.CONFLICT, f"membership change refused: {exc}")
        return self._members(req.id)

    def _members(self, rid: int) -> p.Response:
        st = self._engine.status()
        return p.MembersResponse(id=rid, voters=st.voters, learners=st.learners, leader=st.leader)

    def _transfer_ok(self, rid: int, leader: NodeId, term: int) -> p.Response:
        addr = self._addresses.get(leader)
        return p.TransferLeaderResponse(id=rid, leader=leader, leader_addr=addr, term=term)

    def _not_leader(self, rid: int, leader: NodeId | None) -> p.ErrorResponse:
        if leader is None or leader == self._node_id:
            return _error(rid, Code.UNAVAILABLE, "no leader known")
        return p.ErrorResponse(
            id=rid,
            code=Code.NOT_LEADER,
            message=f"not the leader; try {leader}",
            leader=leader,
            leader_addr=self._addresses.get(leader),
        )

    def _leader_hint(self) -> NodeId | None:
        try:
            return self._engine.status().leader
        except Exception:  # an engine still starting must not fail the handshake
            log.debug("engine status unavailable", exc_info=True)
            return None


def _error(rid: int | None, code: Code, message: str) -> p.ErrorResponse:
    return p.ErrorResponse(id=rid, code=code, message=message)


def _alarm_infos(alarms: list[Alarm]) -> tuple[p.AlarmInfo, ...]:
    return tuple(
        p.AlarmInfo(alarm=kind.name, node=member.decode("utf-8", "replace"))
        for kind, member in alarms
    )


def _denied(rid: int, user: str | None) -> p.ErrorResponse:
    who = "an anonymous client" if user is None else f"user {user!r}"
    return _error(rid, Code.PERMISSION_DENIED, f"{who} may not read every key asked for")


def _range(req: p.Get | p.Scan) -> tuple[bytes, bytes | None]:
    if isinstance(req, p.Get):
        return key_range(req.key)
    return key_range(req.start, req.end, unbounded=req.end is None)


def _watch_range(req: p.Watch) -> tuple[bytes, bytes | None]:
    return key_range(req.key, req.end)


async def _auth_command(req: p.AuthChange) -> Command:
    """The command for an auth change: a password is hashed here, off the event loop,
    with a fresh salt; ``auth_enable`` draws the token key. Neither is in the digest
    (commands.command_digest), so a retry is the same request."""
    match req.op:
        case p.Op.AUTH_ENABLE:
            return AuthEnable(os.urandom(TOKEN_KEY_BYTES))
        case p.Op.AUTH_DISABLE:
            return AuthDisable()
        case p.Op.USER_ADD | p.Op.USER_PASSWD:
            assert req.name is not None and req.password is not None
            h = await asyncio.to_thread(hash_password, req.password)
            cls = UserAdd if req.op is p.Op.USER_ADD else UserChangePassword
            return cls(req.name, h)
    assert req.name is not None
    match req.op:
        case p.Op.USER_DELETE:
            return UserDelete(req.name)
        case p.Op.USER_GRANT_ROLE | p.Op.USER_REVOKE_ROLE:
            assert req.role is not None
            role_cls = UserGrantRole if req.op is p.Op.USER_GRANT_ROLE else UserRevokeRole
            return role_cls(req.name, req.role)
        case p.Op.ROLE_ADD:
            return RoleAdd(req.name)
        case p.Op.ROLE_DELETE:
            return RoleDelete(req.name)
        case p.Op.ROLE_GRANT_PERMISSION:
            assert req.perm is not None and req.prefix is not None
            return RoleGrantPermission(req.name, req.perm, req.prefix)
    assert req.prefix is not None
    return RoleRevokePermission(req.name, req.prefix)


def _opt_kv(kv: StoredKV | None) -> p.KeyValue | None:
    return None if kv is None else _kv(kv)


def _kv(kv: StoredKV) -> p.KeyValue:
    return p.KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _result_size(r: p.RangeResult | p.WriteOpResult) -> int:
    if isinstance(r, p.RangeResult):
        return sum(len(kv.key) + len(kv.value) + _KV_OVERHEAD for kv in r.kvs) + 16
    prev = r.prev
    return 16 if prev is None else len(prev.key) + len(prev.value) + _KV_OVERHEAD


def _event(ev: Event) -> p.WatchEvent:
    kind = "put" if ev.type is EventType.PUT else "delete"
    return p.WatchEvent(type=kind, kv=_kv(ev.kv))


def _txn_response(rid: int, r: Result) -> p.Response:
    if r.code is not ResultCode.OK:
        return _write_response(rid, r)
    succeeded, rows = r.data
    out: list[p.RangeResult | p.WriteOpResult] = []
    for row in rows:
        if row[0] == 0:
            kvs = tuple(_kv(StoredKV.from_obj(kv)) for kv in row[1])
            out.append(p.RangeResult(kvs=kvs, more=row[2]))
        else:
            prev = None if row[1] is None else _kv(StoredKV.from_obj(row[1]))
            out.append(p.WriteOpResult(prev=prev))
    return p.TxnResponse(id=rid, succeeded=succeeded, responses=tuple(out), revision=r.revision)


def _write_response(rid: int, r: Result) -> p.Response:
    match r.code:
        case ResultCode.OK:
            return p.WriteResponse(id=rid, revision=r.revision, prev=_opt_kv(r.prev))
        case ResultCode.COMPARE_FAILED:
            return p.CompareFailedResponse(id=rid, revision=r.revision, current=_opt_kv(r.kv))
        case ResultCode.NOT_FOUND:
            return _error(rid, Code.NOT_FOUND, r.message or "key not found")
        case ResultCode.SESSION_EXPIRED:
            return _error(rid, Code.SESSION_EXPIRED, r.message or "session expired")
        case ResultCode.STALE_SEQ:
            return _error(rid, Code.STALE_SEQ, r.message or "seq below the session floor")
        case ResultCode.LEASE_NOT_FOUND:
            return _error(rid, Code.LEASE_NOT_FOUND, r.message or "lease not found")
        case ResultCode.SEQ_REUSED:
            return _error(rid, Code.SEQ_REUSED, r.message or "seq reused by another command")
        case ResultCode.NOSPACE:
            return _error(rid, Code.NOSPACE, r.message or "NOSPACE alarm raised")
        case ResultCode.PERMISSION_DENIED:
            return _error(rid, Code.PERMISSION_DENIED, r.message or "permission denied")
        case ResultCode.FAILED_PRECONDITION:
            return _error(rid, Code.FAILED_PRECONDITION, r.message)
    # BAD_COMMAND: we proposed bytes the state machine could not decode: our bug.
    log.error("state machine rejected our command: %s %s", r.code.name, r.message)
    return _error(rid, Code.INTERNAL, f"{r.code.name}: {r.message}")


class _Connection:
    """Per-connection write lock, in-flight request tasks, and the bytes waiting for the
    client to read them."""

    def __init__(self, writer: asyncio.StreamWriter, limits: ConnectionLimits) -> None:
        self._writer = writer
        self._limits = limits
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self._tasks: dict[asyncio.Task[None], bool] = {}  # task -> holds a slot
        self.watches: dict[int, asyncio.Event] = {}  # watch request id -> its wake-up
        self.queued = 0  # bytes handed to send() and not yet drained
        self._drained = asyncio.Event()
        self._drained.set()

    def idle(self) -> bool:
        return not self._tasks and not self.watches

    def would_overflow(self, n: int) -> bool:
        return self.queued + n > self._limits.max_queued_bytes

    async def writable(self) -> None:
        """Wait while more than ``max_queued_bytes`` wait for the client to read them."""
        while self.queued > self._limits.max_queued_bytes:
            self._drained.clear()
            await self._drained.wait()

    def cancel_watch(self, rid: int) -> bool:
        """Ask watch ``rid`` to end (it answers CANCELED); False if there is none."""
        wake = self.watches.pop(rid, None)
        if wake is None:
            return False
        wake.set()
        return True

    async def send(self, payload: bytes) -> None:
        """One frame, whole; drain under the lock so a slow reader back-pressures us. A
        client that reads nothing for the idle timeout is gone: the connection closes."""
        size = len(payload) + 4
        self.queued += size
        try:
            async with self._lock:
                if self._writer.is_closing():
                    raise ConnectionResetError("client connection closed")
                if len(payload) < _SPLIT_WRITE_BYTES:  # one write: one send() call
                    self._writer.write(frame_header(payload) + payload)
                else:  # a large payload is not copied again just to prefix 4 bytes
                    self._writer.write(frame_header(payload))
                    self._writer.write(payload)
                try:
                    async with asyncio.timeout(self._limits.idle_timeout):
                        await self._writer.drain()
                except TimeoutError:
                    self._writer.close()
                    raise ConnectionResetError("the client read nothing: closed") from None
        finally:
            self.queued -= size
            if self.queued <= self._limits.max_queued_bytes:
                self._drained.set()

    async def spawn(self, coro: Any, slot: bool = True) -> asyncio.Task[None]:
        """Run one request; waits (so the caller stops reading) while every slot is
        taken. A stream (``slot=False``) takes none."""
        if slot:
            await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks[task] = slot
        task.add_done_callback(self._done)
        return task

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except OSError as exc:
            log.debug("response not delivered: %r", exc)
        except Exception:
            log.exception("request task failed")

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._tasks.pop(task):
            self._slots.release()

    async def drain_tasks(self) -> None:
        """Let running requests finish (each is bounded by the request timeout); watches
        never finish on their own, so they are told to end first."""
        for rid in list(self.watches):
            self.cancel_watch(rid)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
