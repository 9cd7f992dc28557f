"""Issue 11's slow-client probes against a real node process: half-sent frames, watches
that never read, a pipelining client that never reads, and more connections than the
node serves. Each raises the node's resident memory by less than 64 MiB, and another
client is served meanwhile. The figures are printed (pytest -s) for docs/SECURITY.md."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from kvstore import cluster
from kvstore import protocol as p
from kvstore.config import generate_config
from raft.framing import encode_frame
from tests.integration.conftest import TICK_MS, LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MiB = 1 << 20
BUDGET = 64 * MiB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def frame(**fields: object) -> bytes:
    return encode_frame(msgpack.packb(fields, use_bin_type=True))


HELLO = encode_frame(p.encode_hello(p.Hello()))


async def read_one(reader: asyncio.StreamReader) -> bytes:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(n)


async def started(reader: asyncio.StreamReader) -> None:
    """Read the hello reply and the first bytes of the next frame, then stop reading:
    proof the node is sending, and from here on the client does not read."""
    await read_one(reader)
    async with asyncio.timeout(10):
        await reader.readexactly(4)


async def open_raw(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(HELLO)
    await writer.drain()
    return reader, writer


@pytest.fixture
def big_cluster(tmp_path: Path) -> LocalCluster:
    config = tmp_path / "cluster.toml"
    text = generate_config(
        3,
        cluster.free_base_port(),
        "./data",
        raft={"tick_ms": TICK_MS},
        client={"max_connections": 300},
    )
    config.write_text(text)
    lc = LocalCluster(config)
    lc.up()
    yield lc  # type: ignore[misc]
    lc.cleanup()


def probe(lc: LocalCluster, name: str, attack: object, settle: float = 2.0) -> int:
    """Run ``attack`` (an async function of the leader's client address) against the
    leader; while it holds its connections, check another client is served and measure
    the leader's RSS growth."""
    leader = lc.leader()
    pid = lc.pid(leader)
    assert pid is not None
    addr = lc.addr(leader)
    c = lc.client()
    c.put("probe", "connected")  # holds its connection before the attack starts
    before = rss(pid)

    async def run() -> int:
        writers = await attack(addr)  # type: ignore[operator]
        try:
            await asyncio.sleep(settle)
            grown = rss(pid) - before
            await asyncio.to_thread(c.put, "probe", name)
            assert (await asyncio.to_thread(c.get, "probe")).value == name.encode()
            return grown
        finally:
            for w in writers:
                w.close()

    grown = asyncio.run(run())
    print(f"{name}: leader RSS {before / MiB:.0f} MiB, +{grown / MiB:.1f} MiB under the probe")
    assert lc.pid(leader) == pid, "the node died"
    assert grown < BUDGET, f"{name}: +{grown / MiB:.0f} MiB"
    return grown


def test_slow_clients_cost_a_node_little(big_cluster: LocalCluster) -> None:
    lc = big_cluster
    c = lc.client()
    value = b"v" * (1000 << 10)
    c.put("big", value)
    for i in range(40):
        c.put(f"h/{i}", b"h" * (200 << 10))  # 8 MB of history for the watchers

    async def half_sent(addr: str) -> list[asyncio.StreamWriter]:
        out = []
        for _ in range(50):
            _, w = await open_raw(addr)
            w.write(struct.pack(">I", 4 << 20) + b"x" * 1000)  # a 4 MiB frame begun
            out.append(w)
        return out

    async def unread_watches(addr: str) -> list[asyncio.StreamWriter]:
        out = []
        for i in range(100):
            r, w = await open_raw(addr)
            w.write(frame(id=i, op="watch", key=b"h/", end=b"h0", start_revision=1))
            await started(r)
            out.append(w)
        return out

    async def unread_pipeline(addr: str) -> list[asyncio.StreamWriter]:
        r, w = await open_raw(addr)
        w.write(b"".join(frame(id=i, op="get", key=b"big", consistency="linearizable")
                         for i in range(1, 301)))  # fmt: skip
        await started(r)
        return [w]

    async def too_many(addr: str) -> list[asyncio.StreamWriter]:
        out, refused = [], 0
        for _ in range(600):
            r, w = await open_raw(addr)
            out.append(w)
            try:
                async with asyncio.timeout(0.05):
                    reply = await r.read(4096)
                refused += b"too many connections" in reply
            except TimeoutError:
                pass
        assert refused >= 250, refused  # 300 served (less the test's own clients)
        return out

    for name, attack in (
        ("50 half-sent 4 MiB frames", half_sent),
        ("100 watches that never read", unread_watches),
        ("300 unread pipelined 1 MB gets", unread_pipeline),
        ("600 connections for 300 slots", too_many),
    ):
        probe(lc, name, attack)
