"""What one client may hold of a node (issue 11), through the real ClientServer on
127.0.0.1 with hostile raw-socket clients: a half-sent frame and an idle connection are
closed in time, connections and watches past their limits are refused politely, a
watcher that does not read is cancelled, a pipelining client that does not read stops
being read, and leadership transfers are rate-limited. Other clients are served all
along."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from typing import Any

import pytest

from kvstore import protocol as p
from kvstore.protocol import Code
from kvstore.server import ConnectionLimits
from raft.engine import EngineStatus
from tests.kvstore.test_server_client import (
    client,
    cluster,
    frame,
    raw_connect,
    read_frame,
    run,
)

pytestmark = pytest.mark.timeout(60)

FAST = ConnectionLimits(idle_timeout=0.3, frame_timeout=0.3)


async def closed(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    """Every frame until the server closes the connection."""
    out = []
    async with asyncio.timeout(5):
        while (f := await read_frame(reader)) is not None:
            out.append(f)
    return out


def test_a_half_sent_frame_is_closed_in_time() -> None:
    async def body() -> None:
        async with cluster("n1", conn_limits=FAST) as [n1]:
            reader, writer = await raw_connect(n1)
            writer.write(struct.pack(">I", 32 << 10) + b"x" * 100)  # then silence
            await writer.drain()
            frames = await closed(reader)
            assert frames[-1]["id"] is None and frames[-1]["code"] == "TIMEOUT"
            assert "frame was not completed" in frames[-1]["message"]
            writer.close()

    run(body)


def test_an_idle_connection_is_closed_but_not_one_with_a_watch() -> None:
    async def body() -> None:
        async with cluster("n1", conn_limits=FAST) as [n1]:
            reader, writer = await raw_connect(n1)
            frames = await closed(reader)
            assert "idle" in frames[-1]["message"]
            writer.close()
            r2, w2 = await raw_connect(n1)
            w2.write(frame(id=1, op="watch", key=b"k"))
            await w2.drain()
            assert (await read_frame(r2))["id"] == 1  # type: ignore[index]
            await asyncio.sleep(0.9)  # three idle timeouts
            w2.write(frame(id=2, op="get", key=b"k", consistency="serializable"))
            await w2.drain()
            assert (await read_frame(r2))["id"] == 2  # type: ignore[index]
            w2.close()

    run(body)


def test_connections_past_the_limit_are_refused_politely() -> None:
    async def body() -> None:
        limits = dataclasses.replace(FAST, max_connections=3, idle_timeout=30)
        async with cluster("n1", conn_limits=limits) as [n1]:
            held = [await raw_connect(n1) for _ in range(3)]
            reader, writer = await asyncio.open_connection(*n1.addr.split(":"))
            refusal = await read_frame(reader)
            assert refusal is not None and refusal["code"] == "UNAVAILABLE"
            assert "too many connections" in refusal["message"]
            assert await read_frame(reader) is None
            writer.close()
            for _, w in held:
                w.close()
            await asyncio.sleep(0.05)
            c = client(n1)  # a slot is free again: served
            try:
                await c.put("k", "v")
            finally:
                await c.close()

    run(body)


def test_watches_past_the_limits_are_refused() -> None:
    async def body() -> None:
        limits = dataclasses.replace(FAST, max_watches_per_connection=2, max_watches=3)
        async with cluster("n1", conn_limits=limits) as [n1]:
            r, w = await raw_connect(n1)
            for i in (1, 2, 3):
                w.write(frame(id=i, op="watch", key=b"k"))
            await w.drain()
            got = {f["id"]: f for f in [await read_frame(r) for _ in range(3)]}  # type: ignore[index]
            assert got[3]["code"] == "UNAVAILABLE" and "this connection" in got[3]["message"]
            r2, w2 = await raw_connect(n1)
            w2.write(frame(id=1, op="watch", key=b"k") + frame(id=2, op="watch", key=b"k"))
            await w2.drain()
            got = {f["id"]: f for f in [await read_frame(r2) for _ in range(2)]}  # type: ignore[index]
            assert sum(f.get("code") == "UNAVAILABLE" for f in got.values()) == 1
            assert any("this node" in f.get("message", "") for f in got.values())
            w.close()
            w2.close()

    run(body)


def test_a_watcher_that_does_not_read_is_cancelled() -> None:
    """The node's history is far bigger than the connection may queue: a watch from
    revision 1 whose client never reads is cancelled, not buffered."""

    async def body() -> None:
        limits = dataclasses.replace(FAST, max_queued_bytes=256 << 10, idle_timeout=30)
        async with cluster("n1", conn_limits=limits) as [n1]:
            c = client(n1)
            try:
                for i in range(60):
                    await c.put(f"w/{i}", b"v" * 15_000)
                _, w = await raw_connect(n1)
                w.write(frame(id=7, op="watch", key=b"w/", end=b"w0", start_revision=1))
                await w.drain()
                async with asyncio.timeout(10):
                    while n1.server._watch_count:  # the node's own count
                        await asyncio.sleep(0.02)
                assert (await c.get("w/0")).value  # others are served
                w.close()
            finally:
                await c.close()

    run(body)


def test_a_pipelining_client_that_does_not_read_is_not_read() -> None:
    async def body() -> None:
        limits = dataclasses.replace(FAST, max_queued_bytes=256 << 10, idle_timeout=30)
        async with cluster("n1", conn_limits=limits) as [n1]:
            c = client(n1)
            try:
                await c.put("big", b"v" * 10_000)
                served = 0
                real = n1.server.handle

                async def counting(req: p.Request, token: bytes | None = None) -> p.Response:
                    nonlocal served
                    served += 1
                    return await real(req, token)

                n1.server.handle = counting  # type: ignore[method-assign]
                r, w = await raw_connect(n1)
                burst = b"".join(
                    frame(id=i, op="get", key=b"big", consistency="serializable")
                    for i in range(1, 2001)
                )
                w.write(burst)
                await asyncio.sleep(0.5)
                assert served < 2000  # 20 MB of answers were not made to wait in memory
                assert (await c.get("big")).value  # others are served
                got = 0
                async with asyncio.timeout(20):
                    while got < 2000:
                        f = await read_frame(r)
                        assert f is not None and f.get("code", "OK") == "OK"
                        got += 1
                assert served == 2001  # and the other client's get
                w.close()
            finally:
                await c.close()

    run(body)


def test_leadership_transfers_are_rate_limited() -> None:
    async def body() -> None:
        limits = dataclasses.replace(FAST, transfer_interval=60.0)
        async with cluster("n1", conn_limits=limits) as [n1]:
            eng = n1.engine
            status = eng.status

            def two_voters() -> EngineStatus:
                return dataclasses.replace(status(), voters=("n1", "n2"))

            eng.status = two_voters  # type: ignore[method-assign]
            eng.transfer_leader = lambda to: None  # type: ignore[attr-defined]
            first = await n1.server.handle(p.TransferLeader(id=1, to="n2"))
            assert isinstance(first, p.ErrorResponse) and first.code is Code.TIMEOUT
            second = await n1.server.handle(p.TransferLeader(id=2, to="n2"))
            assert isinstance(second, p.ErrorResponse) and second.code is Code.UNAVAILABLE
            assert "one per 60 s" in second.message

    run(body)


def test_a_connection_that_went_silent_after_a_request_is_closed() -> None:
    """Review: the idle timeout was armed only before the first request."""

    async def body() -> None:
        async with cluster("n1", conn_limits=FAST) as [n1]:
            reader, writer = await raw_connect(n1)
            writer.write(frame(id=1, op="get", key=b"k", consistency="serializable"))
            await writer.drain()
            frames = await closed(reader)
            assert frames[0]["id"] == 1 and "idle" in frames[-1]["message"]
            writer.close()

    run(body)


def test_a_frame_that_trickles_in_is_closed_at_its_deadline() -> None:
    """Review: the frame timeout restarted with every chunk."""

    async def body() -> None:
        async with cluster("n1", conn_limits=FAST) as [n1]:
            reader, writer = await raw_connect(n1)
            writer.write(struct.pack(">I", 1000))
            sent = 0
            try:  # a byte every 0.1 s: the 1000-byte frame would take 100 s
                while sent < 100 and not reader.at_eof():
                    writer.write(b"x")
                    await writer.drain()
                    sent += 1
                    await asyncio.sleep(0.1)
            except ConnectionError:
                pass  # closed by the server meanwhile
            assert sent < 100  # closed long before the frame could complete
            writer.close()

    run(body)


def test_open_watches_take_no_request_slot() -> None:
    """Review: with watches holding every slot, the cancel that would free one was never
    read. Watches take none: a cancel and a get are answered."""

    async def body() -> None:
        limits = dataclasses.replace(FAST, max_in_flight=2, idle_timeout=30)
        async with cluster("n1", conn_limits=limits) as [n1]:
            r, w = await raw_connect(n1)
            for i in (1, 2, 3):
                w.write(frame(id=i, op="watch", key=b"k%d" % i))
            w.write(frame(id=9, op="watch_cancel", watch=1))
            w.write(frame(id=10, op="get", key=b"k", consistency="serializable"))
            w.write(frame(id=2, op="watch", key=b"again"))  # an id already open
            await w.drain()
            seen: dict[int, list[dict[str, Any]]] = {}
            async with asyncio.timeout(5):
                canceled = any(f.get("code") == "CANCELED" for f in seen.get(1, []))
                while not ({9, 10} <= set(seen) and canceled and len(seen.get(2, [])) >= 2):
                    f = await read_frame(r)
                    assert f is not None
                    seen.setdefault(f["id"], []).append(f)
                    canceled = any(f.get("code") == "CANCELED" for f in seen.get(1, []))
            assert seen[10][0]["code"] == "NOT_FOUND"  # answered: the get ran
            assert any(f.get("code") == "CANCELED" for f in seen[1])
            assert any("already open" in f.get("message", "") for f in seen[2])
            w.close()

    run(body)
