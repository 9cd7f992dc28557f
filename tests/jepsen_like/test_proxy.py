"""The link proxies on real sockets: relaying, blocking (old and new connections),
healing, latency with seeded jitter, dropped connections, and whole grudges.

Every test is one ``asyncio.run`` under ``asyncio.timeout`` (and pytest-timeout), so a
hang fails rather than stalls the suite.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from jepsen_like.proxy import LinkProxy, ProxyNet

pytestmark = pytest.mark.timeout(30)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(body: Callable[[], Awaitable[None]], limit: float = 15.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await body()

    asyncio.run(bounded())


class Echo:
    """A destination that echoes every byte and counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def connect(proxy: LinkProxy) -> Streams:
    return await asyncio.open_connection(*proxy.address)


async def roundtrip(streams: Streams, payload: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = streams
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(timeout):
        return await reader.readexactly(len(payload))


async def silent(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if nothing (not even EOF) arrives within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


async def eof_or_reset(reader: asyncio.StreamReader) -> bool:
    """True once the connection ends, by EOF or by reset."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def started(echo: Echo) -> LinkProxy:
    target = await echo.start()
    proxy = LinkProxy("n1", "n2", target, rng=random.Random(1))
    await proxy.start()
    return proxy


def test_relays_both_directions() -> None:
    async def body() -> None:
        echo = Echo()
        proxy = await started(echo)
        streams = await connect(proxy)
        assert await roundtrip(streams, b"hello" * 1000) == b"hello" * 1000
        assert echo.connections == 1
        streams[1].close()
        await proxy.close()
        await echo.close()

    run(body)


def test_block_silences_open_and_new_connections_without_closing_them() -> None:
    async def body() -> None:
        echo = Echo()
        proxy = await started(echo)
        old = await connect(proxy)
        assert await roundtrip(old, b"a") == b"a"
        proxy.block()
        old[1].write(b"lost")
        await old[1].drain()
        assert await silent(old[0], 0.3), "a blocked link must neither answer nor close"
        new = await connect(proxy)  # accepted (like a DROP rule, not a refusal) ...
        new[1].write(b"x")
        await new[1].drain()
        assert await silent(new[0], 0.3)  # ... but blackholed
        assert b"lost" not in echo.received and echo.connections == 1
        for s in (old, new):
            s[1].close()
        await proxy.close()
        await echo.close()

    run(body)


def test_heal_closes_tainted_connections_and_relays_new_ones() -> None:
    async def body() -> None:
        echo = Echo()
        proxy = await started(echo)
        old = await connect(proxy)
        assert await roundtrip(old, b"a") == b"a"
        proxy.block()
        old[1].write(b"hole")
        await old[1].drain()
        await asyncio.sleep(0.1)
        proxy.heal()
        # The old stream lost bytes: it is closed rather than resumed with a hole.
        async with asyncio.timeout(2):
            assert await old[0].read() == b""
        new = await connect(proxy)
        assert await roundtrip(new, b"again") == b"again"
        new[1].close()
        await proxy.close()
        await echo.close()

    run(body)


def test_heal_leaves_untouched_connections_open() -> None:
    async def body() -> None:
        echo = Echo()
        proxy = await started(echo)
        streams = await connect(proxy)
        proxy.block()
        proxy.heal()  # nothing was sent meanwhile: the stream has no hole
        assert await roundtrip(streams, b"still here") == b"still here"
        streams[1].close()
        await proxy.close()
        await echo.close()

    run(body)


def test_latency_delays_each_chunk_and_keeps_order() -> None:
    async def body() -> None:
        echo = Echo()
        proxy = await started(echo)
        streams = await connect(proxy)
        assert await roundtrip(streams, b"warm") == b"warm"
        proxy.set_latency(0.15, 0.05)
        began = time.monotonic()
        reader, writer = streams
        for i in range(20):
            writer.write(b"%02d" % i)
            await writer.drain()
            await asyncio.sleep(0.005)
        async with asyncio.timeout(5):
            got = await reader.readexactly(40)
        # Both directions are delayed: at least 2 x (0.15 - 0.05) for the round trip.
        assert time.monotonic() - began >= 0.2
        assert got == b"".join(b"%02d" % i for i in range(20)), "jitter must not reorder"
        proxy.set_latency(0.0)
        began = time.monotonic()
        assert await roundtrip(streams, b"fast") == b"fast"
        assert time.monotonic() - began < 0.1
        writer.close()
        await proxy.close()
        await echo.close()

    run(body)


def test_jitter_is_seeded() -> None:
    a = LinkProxy("n1", "n2", ("127.0.0.1", 1), rng=random.Random("7:n1->n2"))
    b = LinkProxy("n1", "n2", ("127.0.0.1", 1), rng=random.Random("7:n1->n2"))
    assert [a._rng.random() for _ in range(5)] == [b._rng.random() for _ in range(5)]
    with pytest.raises(ValueError):
        a.set_latency(-1.0)


def test_drop_connections_resets_open_connections_only() -> None:
    async def body() -> None:
        echo = Echo()
        proxy = await started(echo)
        streams = await connect(proxy)
        assert await roundtrip(streams, b"a") == b"a"
        assert proxy.drop_connections() == 1
        async with asyncio.timeout(2):
            assert await eof_or_reset(streams[0])
        again = await connect(proxy)
        assert await roundtrip(again, b"b") == b"b"
        again[1].close()
        await proxy.close()
        await echo.close()

    run(body)


def test_unreachable_destination_closes_the_dialer() -> None:
    async def body() -> None:
        echo = Echo()
        target = await echo.start()
        await echo.close()  # nothing listens there now
        proxy = LinkProxy("n1", "n2", target, rng=random.Random(1))
        await proxy.start()
        reader, writer = await connect(proxy)
        async with asyncio.timeout(3):
            assert await eof_or_reset(reader)
        writer.close()
        await proxy.close()

    run(body)


def test_net_partition_blocks_exactly_the_grudge() -> None:
    async def body() -> None:
        echoes = {n: Echo() for n in ("n1", "n2", "n3")}
        targets = {n: await e.start() for n, e in echoes.items()}
        net = ProxyNet(targets, seed=3)
        await net.start()
        assert len(net.links) == 6
        assert len({net.address(s, d) for s, d in net.links}) == 6
        net.partition([("n1", "n2")])  # n2 stops hearing n1; n2 -> n1 still works
        assert net.blocked() == {("n1", "n2")}
        one_two = await asyncio.open_connection(*net.address("n1", "n2"))
        two_one = await asyncio.open_connection(*net.address("n2", "n1"))
        one_two[1].write(b"x")
        await one_two[1].drain()
        assert await silent(one_two[0], 0.3)
        assert await roundtrip(two_one, b"y") == b"y"
        net.partition([("n2", "n1")])  # replaces the old grudge
        assert net.blocked() == {("n2", "n1")}
        with pytest.raises(ValueError):
            net.partition([("n1", "n9")])
        net.set_latency(0.05, 0.0)
        net.heal()
        assert net.blocked() == frozenset()
        assert all(p.latency == (0.0, 0.0) for p in net.links.values())
        fresh = await asyncio.open_connection(*net.address("n1", "n2"))
        assert await roundtrip(fresh, b"z") == b"z"
        for s in (one_two, two_one, fresh):
            s[1].close()
        await net.close()
        for e in echoes.values():
            await e.close()

    run(body)
