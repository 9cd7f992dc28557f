"""Asyncio TCP transport between Raft peers.

Theory of operation
-------------------
Raft tolerates lost, duplicated and reordered messages, so the transport promises
nothing beyond "best effort, in order per connection" and spends its care on never
hurting the node: a slow or dead peer must neither block the others nor grow memory.

*Outbound.* Each known peer has a :class:`_Link`: a bounded queue of encoded frames
and one writer task. :meth:`PeerTransport.send` never awaits: it encodes each message
(``encode_frame(encode_message(m))``), appends it to its destination's queue and wakes
the writer. A full queue (``queue_limit`` frames or ``queue_bytes_limit`` bytes) drops
the new message, counts it and reports the peer unreachable, so the core falls back to
probing (``report_unreachable``) instead of pipelining into a void. The writer task
dials, handshakes, then repeatedly takes *everything* queued and writes it with one
``write`` + ``drain`` (batching under load, low latency when idle). When the dial or a
write fails it sleeps per :class:`Backoff` (exponential, jittered by the injected RNG so
nodes that lost the same peer do not redial in lockstep) and dials again. Frames queued
while the peer is down stay queued (bounded) and go out after it returns.

*Handshake* (protocol 2). Every connection starts with a mutual HMAC challenge-response
over the cluster secret (raft/runtime/peer_auth.py): each end proves it holds the
secret (and is in the same cluster) before the other sends anything else, and the
dialer then names its member id under its MAC. Frames are ``[b"raftkv-peer", 2, ...]``
of at most ``HANDSHAKE_MAX_BYTES``, the whole exchange bounded by ``connect_timeout``.
A refusal is the bare word ``"refused"``: it names nothing the other end did not prove
it knows (no cluster id, no member list). Each side logs its own reason locally (a bad
MAC: wrong secret or cluster id; an unknown member; another protocol version), so a
misconfiguration is found from the refusing node's log. An ``insecure`` node uses an
empty secret: the handshake then still checks the cluster id, and authenticates nothing.

*TLS* (optional, :class:`~raft.runtime.peer_tls.PeerTLS`). Both ends verify the other's
certificate against the cluster's CA during the TLS handshake (bounded by
``connect_timeout``), then run the handshake above inside the encrypted channel. The
dialer refuses an acceptor whose certificate does not bind the member it dialled
before sending anything; the acceptor refuses a dialer whose certificate does not bind
the member id it claims (``"refused"``, reason logged here only). The secret proves
membership of the cluster, the certificate binds the member id.

The acceptor listens on plain TCP and upgrades each connection itself
(``StreamWriter.start_tls``) only after it has taken one of the ``MAX_HANDSHAKES``
slots: with ``ssl=`` on the server, asyncio would run the handshake before our handler,
outside every limit, so idle connections that never start TLS would each hold a file
descriptor for ``connect_timeout`` with no cap. A failed TLS handshake is counted as
``rejected`` and goes to the same rate-limited refusal log as a bad hello (no reply:
there is no channel to send one on).

*Inbound.* A connection carries messages from the dialer only (two connections per pair
of nodes, one per direction, as in etcd's streams). Bytes go through a
:class:`~raft.framing.FrameDecoder` bounded by ``max_frame_bytes`` and then
:func:`~raft.codec.decode_message`; any CodecError (garbage, oversize frame) closes
that connection only. A decoded message whose ``dst`` is not this node or whose ``src``
is not the handshake's node is dropped and logged (a misconfigured address must not
deliver n2's traffic to n3). The rest go to ``on_message``, synchronously, in order. A
newer inbound connection from the same node replaces the older one.

*Callbacks* run on the event loop. ``on_unreachable`` is deferred with ``call_soon`` so
it never re-enters the caller of ``send`` (the node is mid-Ready then), and is
debounced per peer to once per ``unreachable_interval`` seconds.

*Shutdown.* :meth:`PeerTransport.close` stops the server, cancels and awaits every task
it ever started (writers and inbound handlers) and closes every socket.

API::

    t = PeerTransport("n1", "local", ("127.0.0.1", 7101), {"n2": ("127.0.0.1", 7102)},
                      on_message, on_unreachable, rng=random.Random(seed))
    await t.start(); t.address            # actual bound (host, port); port 0 works
    t.send(msgs)                          # non-blocking; unknown dst -> dropped
    t.update_peers({...})                 # membership change; self id is ignored
    t.stats()                             # counters, see STAT_KEYS
    await t.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from raft.codec import decode_message, encode_message
from raft.errors import CodecError, RaftError
from raft.framing import HEADER_BYTES, FrameDecoder, encode_frame
from raft.messages import Message
from raft.runtime.peer_auth import NONCE_BYTES, PeerKey, derive_key
from raft.runtime.peer_tls import PeerTLS
from raft.types import NodeId

__all__ = [
    "HELLO_MAGIC",
    "PROTOCOL_VERSION",
    "STAT_KEYS",
    "Address",
    "Backoff",
    "HandshakeError",
    "PeerTransport",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
HELLO_MAGIC = b"raftkv-peer"
PROTOCOL_VERSION = 2
_REFUSED = "refused"
HANDSHAKE_MAX_BYTES = 4096
"""Largest hello or reply frame; read before the real frame limit applies."""
MAX_HANDSHAKES = 64
"""Inbound peer connections authenticating at once (TLS handshake included); more are
closed unanswered."""
REFUSAL_LOG_INTERVAL = 10.0
"""At most one log line per this many seconds about refused inbound connections."""

_READ_CHUNK = 256 << 10
_LENGTH = struct.Struct(">I")

STAT_KEYS = (
    "sent",  # messages written to a socket (drain returned)
    "bytes",  # bytes written, frame headers included
    "dropped",  # messages that never reached a socket: full queue, oversize, unknown
    # destination, removed peer, lost with a failed write, or still queued at close
    "reconnects",  # dial attempts after the first per link (retries)
    "connects",  # successful outbound handshakes
    "received",  # inbound messages handed to on_message
    "bytes_received",
    "misrouted",  # inbound messages dropped for a wrong src or dst
    "rejected",  # inbound connections refused at the handshake
    "bad_streams",  # inbound connections closed for undecodable or oversize frames
)


class HandshakeError(RaftError):
    """The other end is not a compatible member of this cluster (or not a peer at all)."""


class Backoff:
    """Exponential backoff with "equal jitter".

    The n-th delay is uniform in ``[d/2, d]`` with ``d = min(cap, base * 2**n)``: the
    fixed half keeps a flapping peer from being hammered, the random half (from the
    injected RNG, so tests are reproducible) de-synchronises nodes that lost the same
    peer at the same moment."""

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        self._base, self._cap, self._rng = base, cap, rng
        self._attempt = 0

    def next(self) -> float:
        d: float = min(self._cap, self._base * 2.0 ** min(self._attempt, 62))
        self._attempt += 1
        return d / 2 + self._rng.uniform(0, d / 2)

    def reset(self) -> None:
        self._attempt = 0


@dataclass(eq=False)
class _Link:
    """Outbound state for one peer. Invariant: queued_bytes == sum(map(len, queue))."""

    peer: NodeId
    address: Address
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    down: bool = False  # the last dial or connection failed: repeat failures log quietly
    last_report: float = float("-inf")


def _pack_hello(*fields: object) -> bytes:
    return encode_frame(msgpack.packb([HELLO_MAGIC, PROTOCOL_VERSION, *fields], use_bin_type=True))


def _unpack_hello(data: bytes) -> tuple[object, ...] | None:
    """A handshake array, or None for anything that is not ``[HELLO_MAGIC, ...]``."""
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=False, max_map_len=0, max_ext_len=0)
    except Exception:  # msgpack raises a zoo of types on garbage
        return None
    if type(obj) is not tuple or len(obj) < 2 or obj[0] != HELLO_MAGIC:
        return None
    return obj


async def _read_handshake_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _LENGTH.unpack(await reader.readexactly(HEADER_BYTES))
    if n > HANDSHAKE_MAX_BYTES:
        raise HandshakeError(f"handshake frame of {n} bytes (limit {HANDSHAKE_MAX_BYTES})")
    return await reader.readexactly(n)


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Raft messages are small and latency-bound: never wait for Nagle."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PeerTransport:
    """TCP links from this node to its peers and a server for their links to it."""

    def __init__(
        self,
        node_id: NodeId,
        cluster_id: str,
        listen: Address,
        peers: Mapping[NodeId, Address],
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[NodeId], None],
        *,
        rng: random.Random,
        max_frame_bytes: int = 64 << 20,
        queue_limit: int = 4096,
        queue_bytes_limit: int = 64 << 20,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        connect_timeout: float = 2.0,
        write_timeout: float = 10.0,
        unreachable_interval: float = 0.1,
        secret: bytes = b"",
        tls: PeerTLS | None = None,
    ) -> None:
        """``secret``: the cluster secret every peer must prove it holds (b"": an
        insecure node, which authenticates nothing). ``tls``: mutual TLS, each
        certificate naming its member id (module docstring)."""
        if queue_limit < 1 or queue_bytes_limit < 1:
            raise ValueError("queue limits must be >= 1")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._key = PeerKey(derive_key(secret, cluster_id))
        self._tls = tls
        self._listen = listen
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._rng = rng
        self._max_frame = max_frame_bytes
        self._queue_limit = queue_limit
        self._queue_bytes_limit = queue_bytes_limit
        self._backoff = (backoff_base, backoff_cap)
        Backoff(backoff_base, backoff_cap, rng)  # validate now, not in a task
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._unreachable_interval = unreachable_interval
        self._links: dict[NodeId, _Link] = {
            p: _Link(p, a) for p, a in peers.items() if p != node_id
        }
        self._inbound: dict[NodeId, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._handshaking = 0  # inbound connections not yet authenticated
        self._refusal_logged = float("-inf")
        self._refusals_unlogged = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, then start one writer task per peer."""
        if self._loop is not None or self._closed:
            raise RuntimeError("transport already started or closed")
        self._loop = asyncio.get_running_loop()
        host, port = self._listen
        # Plain TCP even with TLS: _accept upgrades, inside the handshake limit.
        self._server = await asyncio.start_server(self._accept, host, port)
        for link in self._links.values():
            self._start_link(link)

    @property
    def address(self) -> Address:
        """The bound listen address (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("transport not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        """Stop listening, cancel and await every task, close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for writer in self._inbound.values():
            writer.close()
        while self._tasks:  # a handler accepted during shutdown may add one more
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        for link in self._links.values():
            self._stats["dropped"] += len(link.queue)
            link.queue.clear()
            link.queued_bytes = 0

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters in :data:`STAT_KEYS`, plus two gauges: ``queued``
        (frames now queued) and ``handshaking`` (inbound connections now holding a
        handshake slot, TLS handshake included; at most ``MAX_HANDSHAKES``)."""
        queued = sum(len(lk.queue) for lk in self._links.values())
        return {**self._stats, "queued": queued, "handshaking": self._handshaking}

    # ---- outbound --------------------------------------------------------------------

    def send(self, msgs: Iterable[Message]) -> None:
        """Queue each message for its ``dst``. Never blocks; drops (counted) when full."""
        if self._loop is None:
            raise RuntimeError("send() before start()")
        for msg in msgs:
            link = self._links.get(msg.dst)
            if self._closed or link is None:
                self._stats["dropped"] += 1
                if not self._closed:
                    log.debug(
                        "%s: dropping %s to unknown peer %r", self.node_id, _kind(msg), msg.dst
                    )
                continue
            frame = encode_frame(encode_message(msg))
            if len(frame) - HEADER_BYTES > self._max_frame:
                self._stats["dropped"] += 1
                log.warning(
                    "%s: dropping %s to %s: %d bytes exceeds max_frame_bytes %d",
                    *(self.node_id, _kind(msg), msg.dst, len(frame), self._max_frame),
                )
                continue
            if link.queue and (
                len(link.queue) >= self._queue_limit
                or link.queued_bytes + len(frame) > self._queue_bytes_limit
            ):
                self._stats["dropped"] += 1
                self._report_unreachable(link)
                continue
            link.queue.append(frame)
            link.queued_bytes += len(frame)
            link.wake.set()

    def update_peers(self, peers: Mapping[NodeId, Address]) -> None:
        """Adopt a new membership: start links to new peers, stop links (and inbound
        connections) of removed ones, redial peers whose address changed. Frames queued
        for a peer that stays are kept."""
        if self._closed:
            return
        wanted = {p: a for p, a in peers.items() if p != self.node_id}
        for peer in [p for p in self._links if p not in wanted]:
            link = self._links.pop(peer)
            self._stats["dropped"] += len(link.queue)
            if link.task is not None:
                link.task.cancel()
            if (writer := self._inbound.pop(peer, None)) is not None:
                writer.close()
            log.info("%s: removed peer %s", self.node_id, peer)
        for peer, address in wanted.items():
            old = self._links.get(peer)
            if old is not None and old.address == address:
                continue
            link = self._links[peer] = _Link(peer, address)
            if old is not None:  # moved: redial from a fresh link, keeping its queue
                if old.task is not None:
                    old.task.cancel()
                link.queue, link.queued_bytes = old.queue, old.queued_bytes
            log.info("%s: peer %s at %s:%d", self.node_id, peer, *address)
            if self._loop is not None:
                self._start_link(link)

    def _start_link(self, link: _Link) -> None:
        link.task = self._spawn(self._run_link(link), f"raft-peer-{self.node_id}->{link.peer}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._track(task)
        return task

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_link(self, link: _Link) -> None:
        """The peer's writer task: dial, handshake, write batches until the connection
        fails, back off, repeat. Only cancellation ends it."""
        backoff = Backoff(*self._backoff, self._rng)
        first = True
        while True:
            if not first:
                self._stats["reconnects"] += 1
            first = False
            try:
                reader, writer = await self._dial(link)
            except (OSError, EOFError, HandshakeError) as exc:  # TimeoutError is an OSError
                self._link_failed(link, f"cannot connect: {exc!r}")
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._stats["connects"] += 1
            log.log(
                logging.INFO if link.down else logging.DEBUG,
                "%s: connected to %s at %s:%d",
                *(self.node_id, link.peer, *link.address),
            )
            link.down = False
            try:
                await self._pump(link, reader, writer)
            except OSError as exc:  # ConnectionError and TimeoutError included
                self._link_failed(link, f"connection lost: {exc!r}")
            finally:
                writer.close()
            await asyncio.sleep(backoff.next())

    async def _dial(self, link: _Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = link.address
        async with asyncio.timeout(self._connect_timeout):
            if self._tls is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._tls.client, ssl_handshake_timeout=self._connect_timeout
                )
            try:
                _set_nodelay(writer)
                if self._tls is not None and not self._tls.names(
                    writer.get_extra_info("peercert") or {}, link.peer
                ):
                    raise HandshakeError(
                        f"the certificate of the node at {host}:{port} does not bind "
                        f"member {link.peer}"
                    )
                await self._authenticate_to(link, reader, writer)
            except BaseException:
                writer.close()
                raise
        return reader, writer

    async def _authenticate_to(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The dialer's half of the handshake (module docstring, raft/runtime/peer_auth.py)."""
        nonce_d = PeerKey.nonce()
        writer.write(_pack_hello(nonce_d))
        await writer.drain()
        reply = _unpack_hello(await _read_handshake_frame(reader))
        if reply is None:
            raise HandshakeError("not a raftkv peer (malformed handshake reply)")
        if reply[1] != PROTOCOL_VERSION or reply[2:] == (_REFUSED,):
            raise HandshakeError(
                f"{link.peer} refused the handshake (protocol version {reply[1]!r}; this "
                f"node speaks {PROTOCOL_VERSION}): see its log"
            )
        if len(reply) != 4 or type(reply[2]) is not bytes or len(reply[2]) != NONCE_BYTES:
            raise HandshakeError("not a raftkv peer (malformed handshake reply)")
        nonce_a = reply[2]
        if not self._key.check_acceptor(nonce_d, nonce_a, link.peer, reply[3]):
            raise HandshakeError(
                f"the node at {link.address[0]}:{link.address[1]} does not prove it holds "
                "this cluster's secret (another secret, or another cluster id)"
            )
        mac = self._key.dialer_mac(nonce_a, nonce_d, self.node_id, link.peer)
        writer.write(_pack_hello(self.node_id, mac))
        await writer.drain()
        verdict = _unpack_hello(await _read_handshake_frame(reader))
        if verdict is None or verdict[1:] != (PROTOCOL_VERSION, "ok"):
            raise HandshakeError(f"{link.peer} refused this node: see its log for why")

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write everything queued, in one write + drain per batch, until an error."""
        while True:
            while not link.queue:
                link.wake.clear()
                await link.wake.wait()
            # The acceptor never writes after "ok": EOF means it closed. Detecting it
            # here, before taking the batch, keeps the batch for the next connection.
            if reader.at_eof() or writer.is_closing():
                raise ConnectionResetError("peer closed the connection")
            batch, link.queue, link.queued_bytes = link.queue, deque(), 0
            data = b"".join(batch)
            try:
                async with asyncio.timeout(self._write_timeout):
                    writer.write(data)
                    await writer.drain()
            except BaseException:
                self._stats["dropped"] += len(batch)
                raise
            self._stats["sent"] += len(batch)
            self._stats["bytes"] += len(data)

    def _link_failed(self, link: _Link, reason: str) -> None:
        """Log once per outage (then quietly) and tell the core if traffic is waiting."""
        level = logging.DEBUG if link.down else logging.WARNING
        log.log(level, "%s: peer %s at %s:%d: %s", self.node_id, link.peer, *link.address, reason)
        link.down = True
        if link.queue:
            self._report_unreachable(link)

    def _report_unreachable(self, link: _Link) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - link.last_report >= self._unreachable_interval:
            link.last_report = now
            self._loop.call_soon(self._call_unreachable, link.peer)

    def _call_unreachable(self, peer: NodeId) -> None:
        if self._closed:
            return
        try:
            self._on_unreachable(peer)
        except Exception:
            log.exception("%s: on_unreachable(%s) raised", self.node_id, peer)

    # ---- inbound ---------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handler of one inbound connection (asyncio runs it as a task; we track it so
        close() can cancel it)."""
        task = asyncio.current_task()
        if task is not None:
            self._track(task)
        if self._closed:
            writer.close()
            return
        _set_nodelay(writer)
        remote = writer.get_extra_info("peername")
        peer = None
        if self._handshaking >= MAX_HANDSHAKES:
            # Unauthenticated callers get no more than this much of the node: beyond,
            # closed at once, no reply, no log line of their own.
            self._stats["rejected"] += 1
            self._refusals_unlogged += 1
            writer.close()
            return
        try:
            self._handshaking += 1
            try:
                # NB: no await before _start_tls. Until the upgrade, bytes that arrive
                # go to this plain stream's reader and would be lost to the TLS layer;
                # asyncio runs this handler's first step before it first reads the
                # socket, so the upgrade (which pauses reading) wins that race.
                if self._tls is None or await self._start_tls(writer, remote):
                    peer = await self._handshake(reader, writer, remote)
            finally:
                self._handshaking -= 1
            if peer is not None:
                await self._read_messages(peer, reader)
        except OSError as exc:
            log.info(
                "%s: inbound connection from %s (%s) failed: %r", self.node_id, peer, remote, exc
            )
        except asyncio.CancelledError:
            # Only close() cancels us. End normally: Python 3.11's stream server logs a
            # cancelled handler task as an unhandled error (fixed in 3.12).
            pass
        finally:
            if peer is not None and self._inbound.get(peer) is writer:
                del self._inbound[peer]
            writer.close()

    async def _start_tls(self, writer: asyncio.StreamWriter, remote: object) -> bool:
        """Upgrade an accepted connection to TLS (the dialer's certificate verified
        against the CA); False after refusing (counted, logged) one that fails."""
        assert self._tls is not None
        try:
            async with asyncio.timeout(self._connect_timeout):
                await writer.start_tls(
                    self._tls.server, ssl_handshake_timeout=self._connect_timeout
                )
        except (OSError, EOFError) as exc:  # ssl.SSLError, TimeoutError, resets
            self._stats["rejected"] += 1
            self._log_refusal(remote, f"TLS handshake failed: {exc!r}")
            return False
        return True

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: object
    ) -> NodeId | None:
        """The dialer's node id, or None after refusing (and logging) the connection."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                node, reason = await self._authenticate_from(reader, writer)
        except (OSError, EOFError, HandshakeError) as exc:
            node, reason = None, f"no valid handshake: {exc!r}"
        if node is not None:
            if (old := self._inbound.get(node)) is not None:
                old.close()  # the peer redialed; its old connection is dead or dying
            self._inbound[node] = writer
            log.debug("%s: accepted %s from %s", self.node_id, node, remote)
            return node
        self._stats["rejected"] += 1
        self._log_refusal(remote, reason)
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(_pack_hello(_REFUSED))  # names nothing: the reason stays here
            async with asyncio.timeout(self._connect_timeout):
                await writer.drain()
        return None

    def _log_refusal(self, remote: object, reason: str) -> None:
        """At most one line per ``REFUSAL_LOG_INTERVAL`` (a flood of bad connections must
        not fill the disk), counting the ones it leaves out."""
        assert self._loop is not None
        now = self._loop.time()
        if now - self._refusal_logged < REFUSAL_LOG_INTERVAL:
            self._refusals_unlogged += 1
            return
        more = self._refusals_unlogged
        also = f" (and {more} more since the last such line)" if more else ""
        log.warning(
            "%s: refusing a peer connection from %s: %s%s", self.node_id, remote, reason, also
        )
        self._refusal_logged, self._refusals_unlogged = now, 0

    async def _authenticate_from(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[NodeId | None, str]:
        """The acceptor's half of the handshake: (the proven member id, "") or (None,
        why it was refused, for this node's log only)."""
        hello = _unpack_hello(await _read_handshake_frame(reader))
        if hello is None:
            return None, "not a raftkv peer (bad hello)"
        if hello[1] != PROTOCOL_VERSION:
            return None, f"protocol version {hello[1]!r} (this node speaks {PROTOCOL_VERSION})"
        if len(hello) != 3 or type(hello[2]) is not bytes or len(hello[2]) != NONCE_BYTES:
            return None, "malformed hello"
        nonce_d, nonce_a = hello[2], PeerKey.nonce()
        writer.write(_pack_hello(nonce_a, self._key.acceptor_mac(nonce_d, nonce_a, self.node_id)))
        await writer.drain()
        auth = _unpack_hello(await _read_handshake_frame(reader))
        if auth is None or len(auth) != 4 or type(auth[2]) is not str:
            return None, "malformed authentication"
        node = auth[2]
        if not self._key.check_dialer(nonce_a, nonce_d, node, self.node_id, auth[3]):
            return None, "bad credentials: another cluster secret, or another cluster id"
        if node not in self._links:
            return None, f"it holds the secret but claims {node!r}, not a member"
        if self._tls is not None and not self._tls.names(
            writer.get_extra_info("peercert") or {}, node
        ):
            return None, f"it claims {node!r}, which its certificate does not bind"
        writer.write(_pack_hello("ok"))
        await writer.drain()
        return node, ""

    async def _read_messages(self, peer: NodeId, reader: asyncio.StreamReader) -> None:
        """Decode frames until EOF or the first bad byte (which ends this connection)."""
        decoder = FrameDecoder(self._max_frame)
        warned = False
        while data := await reader.read(_READ_CHUNK):
            self._stats["bytes_received"] += len(data)
            try:
                decoder.feed(data)
                for frame in decoder.frames():
                    msg = decode_message(frame)
                    if msg.dst == self.node_id and msg.src == peer:
                        self._deliver(msg)
                        continue
                    self._stats["misrouted"] += 1
                    log.log(
                        logging.DEBUG if warned else logging.WARNING,
                        "%s: dropping %s %s->%s on the connection from %s",
                        *(self.node_id, _kind(msg), msg.src, msg.dst, peer),
                    )
                    warned = True
            except CodecError as exc:
                self._stats["bad_streams"] += 1
                log.warning("%s: closing connection from %s: %s", self.node_id, peer, exc)
                return
        if decoder.buffered_bytes:
            log.warning("%s: connection from %s ended mid-frame", self.node_id, peer)

    def _deliver(self, msg: Message) -> None:
        self._stats["received"] += 1
        try:
            self._on_message(msg)
        except Exception:  # a bug in the callback must not cost us the connection
            log.exception("%s: on_message raised for %s", self.node_id, _kind(msg))


def _kind(msg: Message) -> str:
    return type(msg).__name__
