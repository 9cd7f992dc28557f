"""Fault-injecting TCP proxies, one per directed peer link, so faults need no root.

Theory of operation
-------------------
The store's peer transport opens one TCP connection per *direction* between two nodes
and only the dialer sends messages on it (raft/runtime/transport.py: "A connection
carries messages from the dialer only"). So node i's traffic to node j is exactly the
connections i dials to j's peer address, and giving i a config in which j's
``peer_address`` is a proxy P(i→j) puts every byte i sends j through P(i→j), and
nothing else. One proxy per directed link therefore models Jepsen's *grudges*
(asymmetric packet loss: "j drops everything from i") without iptables.

A :class:`LinkProxy` listens on an ephemeral 127.0.0.1 port and relays each accepted
connection to the real destination, chunk by chunk, in both directions (the reverse
direction carries only the handshake reply). When either side ends (EOF, a reset, a
failed write) the proxy ends both, as a direct connection would end: a node that dies
must not leave its peers writing into a relay nobody reads. Its controls:

- :meth:`LinkProxy.block`: a partition. Like an iptables DROP rule, bytes vanish
  silently: relaying stops on every open connection (what arrives is read and
  discarded, so the sender is never blocked by a full buffer and learns nothing), and
  new connections are accepted and blackholed the same way, so a dialer's handshake
  times out. Nothing is closed: the sender must discover the loss as Raft does, by
  silence.
- :meth:`LinkProxy.heal`: relaying resumes for *new* connections; connections that lost
  bytes while blocked are closed, because their byte streams now have holes (a frame
  cut in half would be garbage to the receiver). The dialer sees EOF and redials.
- :meth:`LinkProxy.set_latency`: each chunk is delivered ``delay ± jitter`` seconds
  after it was read (seeded RNG per link), never before an earlier chunk of the same
  stream, so TCP ordering holds.
- :meth:`LinkProxy.drop_connections`: abort every open connection at once (a reset).

:class:`ProxyNet` owns every link of a cluster and applies a whole grudge at once. All
of it runs in the harness's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.observe import probe_link

__all__ = ["Grudge", "LinkProxy", "ProxyNet"]

Address = tuple[str, int]
Link = tuple[str, str]  # (src, dst): src's messages to dst
Grudge = frozenset[Link]  # directed links to block
_CHUNK = 256 << 10
_QUEUE_CHUNKS = 1024  # bound per direction of a delayed stream (back-pressure beyond)
_CONNECT_TIMEOUT_S = 2.0


@dataclass(eq=False)
class _Pipe:
    """One relayed connection: the accepted (from the source node) and dialed (to the
    destination) stream pairs, and whether it lost bytes to a block."""

    down_writer: asyncio.StreamWriter  # towards the dialing node
    up_writer: asyncio.StreamWriter | None = None  # towards the destination node
    tainted: bool = False  # bytes were discarded: the stream can never be trusted again
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for w in (self.down_writer, self.up_writer):
            if w is not None and not w.is_closing():
                w.transport.abort()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()


class LinkProxy:
    """The proxy for one directed link ``src → dst``."""

    def __init__(self, src: str, dst: str, target: Address, *, rng: random.Random) -> None:
        self.src, self.dst, self.target = src, dst, target
        self._rng = rng
        self._blocked = False
        self._delay_s = 0.0
        self._jitter_s = 0.0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        # accepted: connections; bytes: relayed; discarded: lost to a block; dropped:
        # connections reset by drop_connections; delayed: chunks delivered at least 1 ms
        # after they were read (latency in force), delay_ms: their total holding time.
        self.stats = {
            "accepted": 0,
            "bytes": 0,
            "discarded": 0,
            "dropped": 0,
            "delayed": 0,
            "delay_ms": 0,
        }

    @property
    def blocked(self) -> bool:
        return self._blocked

    @property
    def latency(self) -> tuple[float, float]:
        return self._delay_s, self._jitter_s

    @property
    def address(self) -> Address:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("proxy not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        tasks = [t for p in self._pipes for t in p.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # ---- controls ----------------------------------------------------------------

    def block(self) -> None:
        """Silently discard everything on this link, old and new connections alike."""
        self._blocked = True

    def heal(self) -> None:
        """Relay again; close the connections whose streams lost bytes meanwhile."""
        self._blocked = False
        for pipe in [p for p in self._pipes if p.tainted]:
            pipe.abort()

    def set_latency(self, delay_s: float, jitter_s: float = 0.0) -> None:
        if delay_s < 0 or jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        self._delay_s, self._jitter_s = delay_s, jitter_s

    def drop_connections(self) -> int:
        """Abort every open connection; returns how many there were. Not while blocked:
        a cut link lets nothing through, a reset included (and a probe of the cut,
        :mod:`jepsen_like.observe`, must not see one)."""
        if self._blocked:
            return 0
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
        self.stats["dropped"] += len(pipes)
        return len(pipes)

    # ---- relaying ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(writer)
        self._pipes.add(pipe)
        self.stats["accepted"] += 1
        me = asyncio.current_task()
        if me is not None:
            pipe.tasks.append(me)
        try:
            if self._blocked:
                pipe.tainted = True
                await self._discard(reader)  # a blackhole: the handshake never returns
                return
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return  # destination down: the dialer sees EOF, like a refused dial
            pipe.up_writer = up_writer
            loop = asyncio.get_running_loop()
            back = loop.create_task(self._relay(pipe, up_reader, writer))
            forth = loop.create_task(self._relay(pipe, reader, up_writer))
            pipe.tasks += [back, forth]
            # When either side goes (EOF, a reset, a failed write), end the whole pipe,
            # as the kernel would end a direct connection. Waiting for the dialer's side
            # alone left a connection to a SIGKILLed node open: its bytes vanished and
            # the dialer never redialled the restarted node.
            both = {back, forth}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            for t in both:
                t.cancel()
            await asyncio.gather(*both, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass  # a cancelled handler must end quietly (3.11 logs it otherwise)
        finally:
            pipe.abort()
            self._pipes.discard(pipe)

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(_CHUNK):
            self.stats["discarded"] += len(data)

    async def _relay(
        self, pipe: _Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until EOF, honouring block and latency per chunk."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        sender = loop.create_task(self._deliver(queue, writer, pipe))
        pipe.tasks.append(sender)
        last_due = 0.0
        try:
            while data := await reader.read(_CHUNK):
                if self._blocked or pipe.tainted:
                    pipe.tainted = True
                    self.stats["discarded"] += len(data)
                    continue
                delay = self._delay_s
                if self._jitter_s:
                    delay = max(0.0, delay + self._rng.uniform(-self._jitter_s, self._jitter_s))
                last_due = max(last_due, loop.time() + delay)  # never overtake: TCP order
                await queue.put((last_due, loop.time(), data))
            await queue.put(None)
            await sender
        finally:
            sender.cancel()

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, float, bytes] | None],
        writer: asyncio.StreamWriter,
        pipe: _Pipe,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await queue.get()) is not None:
                due, read_at, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if (held := loop.time() - read_at) >= 0.001:
                    self.stats["delayed"] += 1
                    self.stats["delay_ms"] += round(held * 1000)
                writer.write(data)
                self.stats["bytes"] += len(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pipe.abort()  # the receiver is gone: reset the sender too


class ProxyNet:
    """Every directed link of a cluster, each through its own :class:`LinkProxy`."""

    def __init__(self, peer_addresses: Mapping[str, Address], *, seed: int) -> None:
        """``peer_addresses``: each node's real peer listen address."""
        self.nodes = sorted(peer_addresses)
        self.links: dict[Link, LinkProxy] = {
            (s, d): LinkProxy(s, d, peer_addresses[d], rng=random.Random(f"{seed}:{s}->{d}"))
            for s in self.nodes
            for d in self.nodes
            if s != d
        }

    async def start(self) -> None:
        for proxy in self.links.values():
            await proxy.start()

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.links.values()), return_exceptions=True)

    def address(self, src: str, dst: str) -> Address:
        """Where ``src`` must dial to reach ``dst``."""
        return self.links[(src, dst)].address

    def blocked(self) -> Grudge:
        return frozenset(link for link, p in self.links.items() if p.blocked)

    def partition(self, grudge: Iterable[Link]) -> None:
        """Block exactly the links of ``grudge`` (healing every other link)."""
        wanted = frozenset(grudge)
        unknown = wanted - self.links.keys()
        if unknown:
            raise ValueError(f"no such links: {sorted(unknown)}")
        for link, proxy in self.links.items():
            if link in wanted:
                proxy.block()
            elif proxy.blocked:
                proxy.heal()

    def set_latency(
        self, delay_s: float, jitter_s: float, links: Iterable[Link] | None = None
    ) -> None:
        for link in self.links if links is None else links:
            self.links[link].set_latency(delay_s, jitter_s)

    def drop_connections(self) -> int:
        return sum(p.drop_connections() for p in self.links.values())

    # ---- what a verifier reads (jepsen_like.observe) ----------------------------------

    def link_blocked(self, link: Link) -> bool:
        """Whether the proxy of ``link`` is in drop mode right now."""
        return self.links[link].blocked

    def link_latency(self, link: Link) -> tuple[float, float]:
        return self.links[link].latency

    def counters(self) -> dict[str, int]:
        """Every link's counters, summed."""
        total: dict[str, int] = {}
        for proxy in self.links.values():
            for key, value in proxy.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    async def probe(self, src: str, dst: str, address: Address, timeout: float) -> dict[str, Any]:
        """Probe ``src → dst`` at ``address``, where src's config says it dials dst (the
        proxy the harness meant to cut, if harness and node agree)."""
        return await probe_link(address, timeout)

    def heal(self) -> None:
        """Every link open, no latency."""
        for proxy in self.links.values():
            proxy.heal()
            proxy.set_latency(0.0, 0.0)
