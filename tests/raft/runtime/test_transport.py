"""raft.runtime.transport over real sockets on 127.0.0.1.

Every test runs one ``asyncio.run`` under ``asyncio.timeout`` (and pytest-timeout as
a backstop), waits on events rather than sleeping where it can, and closes every
transport in ``finally``. Bad inbound connections are made with raw sockets, so each
refusal path is checked alongside a valid peer that must keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from raft.codec import encode_message
from raft.framing import encode_frame
from raft.messages import AppendEntries, Heartbeat, Message
from raft.runtime.peer_auth import PeerKey, derive_key
from raft.runtime.transport import (
    HELLO_MAGIC,
    PROTOCOL_VERSION,
    Address,
    Backoff,
    PeerTransport,
)
from raft.types import Entry, NodeId

pytestmark = pytest.mark.timeout(30)
LOCAL = ("127.0.0.1", 0)
CLUSTER = "test-cluster"
SECRET = b"s" * 32
V = PROTOCOL_VERSION
REFUSED = [HELLO_MAGIC, V, "refused"]


def run(coro: Coroutine[Any, Any, None], timeout: float = 15.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro

    asyncio.run(bounded())


def hb(src: NodeId, dst: NodeId, commit: int = 0) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, term=1, commit=commit)


class Node:
    """A transport plus what its callbacks received."""

    def __init__(self, node_id: NodeId, peers: dict[NodeId, Address] | None = None, **kw: Any):
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.unreachable: list[NodeId] = []
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("backoff_cap", 0.05)
        kw.setdefault("secret", SECRET)
        self.t = PeerTransport(
            node_id,
            kw.pop("cluster_id", CLUSTER),
            kw.pop("listen", LOCAL),
            peers or {},
            self.inbox.put_nowait,
            self.unreachable.append,
            rng=random.Random(node_id),
            **kw,
        )

    async def recv(self, timeout: float = 5.0) -> Message:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()


@contextlib.asynccontextmanager
async def cluster(*ids: NodeId, **kw: Any) -> AsyncIterator[dict[NodeId, Node]]:
    """Started transports on ephemeral ports, each knowing all the others."""
    nodes = {i: Node(i, **kw) for i in ids}
    try:
        for n in nodes.values():
            await n.t.start()
        addresses = {i: n.t.address for i, n in nodes.items()}
        for n in nodes.values():
            n.t.update_peers(addresses)
        yield nodes
    finally:
        for n in nodes.values():
            await n.t.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_address() -> Address:
    """An address nothing listens on (a just-released ephemeral port)."""
    return ("127.0.0.1", free_port())


async def raw_connect(
    address: Address, hello: list[Any] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """A hand-made peer: optionally send ``hello`` and return the decoded reply."""
    reader, writer = await asyncio.open_connection(*address)
    reply = None
    if hello is not None:
        writer.write(encode_frame(msgpack.packb(hello, use_bin_type=True)))
        await writer.drain()
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        reply = msgpack.unpackb(await reader.readexactly(n), raw=False)
    return reader, writer, reply


async def read_hello(reader: asyncio.StreamReader) -> Any:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return msgpack.unpackb(await reader.readexactly(n), raw=False)


async def authenticate(
    address: Address,
    node: NodeId,
    *,
    secret: bytes = SECRET,
    cluster: str = CLUSTER,
    target: NodeId = "n2",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """A hand-made dialer that runs the whole handshake as ``node`` (holding ``secret``
    of ``cluster``, right or wrong); returns the acceptor's verdict frame."""
    key = PeerKey(derive_key(secret, cluster))
    reader, writer = await asyncio.open_connection(*address)
    nonce_d = PeerKey.nonce()
    writer.write(encode_frame(msgpack.packb([HELLO_MAGIC, V, nonce_d], use_bin_type=True)))
    await writer.drain()
    _, _, nonce_a, _mac = await read_hello(reader)
    auth = [HELLO_MAGIC, V, node, key.dialer_mac(nonce_a, nonce_d, node, target)]
    writer.write(encode_frame(msgpack.packb(auth, use_bin_type=True)))
    await writer.drain()
    return reader, writer, await read_hello(reader)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True once the other side closes (EOF or reset), reading past any reply."""
    async with asyncio.timeout(timeout):
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
    return True


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def assert_link_works(a: Node, b: Node, commit: int) -> None:
    a.t.send([hb(a.t.node_id, b.t.node_id, commit)])
    assert await b.recv() == hb(a.t.node_id, b.t.node_id, commit)


# ---- backoff -------------------------------------------------------------------------


def test_backoff_grows_with_jitter_caps_and_resets() -> None:
    b = Backoff(0.1, 1.0, random.Random(7))
    delays = [b.next() for _ in range(8)]
    bounds = [min(1.0, 0.1 * 2**i) for i in range(8)]
    assert all(d / 2 <= x <= d for x, d in zip(delays, bounds, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    b.reset()
    assert 0.05 <= b.next() <= 0.1
    again = Backoff(0.1, 1.0, random.Random(7))
    assert [again.next() for _ in range(8)] == delays  # reproducible from the seed


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_rejects_bad_bounds(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap, random.Random(0))


# ---- delivery --------------------------------------------------------------------------


def test_two_transports_exchange_messages_in_order() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            msgs = [hb("n1", "n2", i) for i in range(100)]
            big = AppendEntries(
                src="n1",
                dst="n2",
                term=3,
                prev_index=0,
                prev_term=0,
                entries=(Entry(3, 1, data=b"x" * 100_000),),
                commit=0,
            )
            n1.t.send([*msgs, big])
            got = [await n2.recv() for _ in range(101)]
            assert got == [*msgs, big]
            await assert_link_works(n2, n1, 5)
            await wait_for(lambda: n1.t.stats()["sent"] == 101)
            stats = n1.t.stats()
            assert stats["dropped"] == 0 and stats["queued"] == 0
            assert stats["bytes"] == sum(len(encode_frame(encode_message(m))) for m in got)
            assert n2.t.stats()["received"] == 101

    run(main())


def test_three_transports_all_pairs() -> None:
    async def main() -> None:
        async with cluster("n1", "n2", "n3") as nodes:
            for src in nodes:
                nodes[src].t.send([hb(src, dst, 7) for dst in nodes if dst != src])
            for dst, node in nodes.items():
                got = {(await node.recv()).src for _ in range(2)}
                assert got == set(nodes) - {dst}

    run(main())


def test_unknown_destination_is_dropped_and_counted() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            nodes["n1"].t.send([hb("n1", "n9"), hb("n1", "n1")])
            assert nodes["n1"].t.stats()["dropped"] == 2
            await assert_link_works(nodes["n1"], nodes["n2"], 1)

    run(main())


def test_peer_down_at_first_is_reached_after_it_starts() -> None:
    async def main() -> None:
        port = free_port()
        n1 = Node("n1", {"n2": ("127.0.0.1", port)})
        n2 = Node("n2", listen=("127.0.0.1", port))
        try:
            await n1.t.start()
            n1.t.send([hb("n1", "n2", 1)])  # queued while n2 is down
            await wait_for(lambda: n1.t.stats()["reconnects"] >= 2)
            assert n1.t.stats()["connects"] == 0
            n2.t.update_peers({"n1": n1.t.address})
            await n2.t.start()
            assert await n2.recv() == hb("n1", "n2", 1)
            await assert_link_works(n1, n2, 2)
            await assert_link_works(n2, n1, 3)
        finally:
            await n1.t.close()
            await n2.t.close()

    run(main())


def test_peer_restart_is_redialed() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            await assert_link_works(n1, n2, 1)
            address = n2.t.address
            await n2.t.close()
            n2b = Node("n2", {"n1": n1.t.address}, listen=address)
            await n2b.t.start()
            try:
                # The first sends may die with the old connection; Raft retransmits.
                async with asyncio.timeout(5):
                    while True:
                        n1.t.send([hb("n1", "n2", 2)])
                        with contextlib.suppress(TimeoutError):
                            assert await n2b.recv(timeout=0.2) == hb("n1", "n2", 2)
                            break
                assert n1.t.stats()["connects"] >= 2
            finally:
                await n2b.t.close()

    run(main())


# ---- bounded queues ------------------------------------------------------------------


def test_dead_peer_queue_stays_bounded_drops_counted_unreachable_reported() -> None:
    async def main() -> None:
        limit = 64
        # A long debounce interval makes "one report, not one per drop" exact.
        dead = dead_address()
        n1 = Node("n1", {"n2": dead}, queue_limit=limit, unreachable_interval=60)
        n3 = Node("n3")
        try:
            await n1.t.start()
            await n3.t.start()
            n3.t.update_peers({"n1": n1.t.address})
            n1.t.update_peers({"n2": dead, "n3": n3.t.address})
            n1.t.send([hb("n1", "n2", i) for i in range(10 * limit)])
            stats = n1.t.stats()
            assert stats["queued"] == limit
            assert stats["dropped"] == 9 * limit
            await wait_for(lambda: "n2" in n1.unreachable)
            await assert_link_works(n1, n3, 1)  # the dead peer blocks nobody
            assert n1.unreachable == ["n2"]  # debounced: not one call per drop or redial
            assert n1.t.stats()["queued"] == limit
        finally:
            await n1.t.close()
            await n3.t.close()
        assert n1.t.stats()["queued"] == 0
        assert n1.t.stats()["dropped"] == 10 * limit  # still-queued ones count at close

    run(main())


def test_queue_byte_limit_and_oversize_messages() -> None:
    async def main() -> None:
        n1 = Node("n1", {"n2": dead_address()}, queue_bytes_limit=10_000, max_frame_bytes=50_000)
        try:
            await n1.t.start()

            def append(size: int) -> AppendEntries:
                entries = (Entry(1, 1, data=b"x" * size),)
                return AppendEntries(
                    src="n1", dst="n2", term=1, prev_index=0, prev_term=0, entries=entries, commit=0
                )

            n1.t.send([append(60_000)])  # above max_frame_bytes: the peer would refuse it
            assert (n1.t.stats()["queued"], n1.t.stats()["dropped"]) == (0, 1)
            n1.t.send([append(20_000)])  # over the byte limit, but an empty queue takes one
            n1.t.send([append(10)])
            s = n1.t.stats()
            assert (s["queued"], s["dropped"]) == (1, 2)
        finally:
            await n1.t.close()

    run(main())


# ---- hostile or misconfigured inbound connections --------------------------------------


def bad_inputs() -> list[tuple[str, bool, bytes]]:
    """(name, authenticate first?, bytes sent then)."""
    return [
        ("garbage instead of hello", False, b"GET / HTTP/1.1\r\n\r\n" * 10),
        ("oversize hello", False, struct.pack(">I", 1 << 20) + b"x" * 100),
        ("garbage frame after handshake", True, encode_frame(b"\xc1\xc1\xc1")),
        ("oversize frame after handshake", True, struct.pack(">I", 1 << 30)),
        ("valid msgpack, not a message", True, encode_frame(msgpack.packb([99, "a"]))),
    ]


@pytest.mark.parametrize(("name", "auth", "payload"), bad_inputs(), ids=lambda x: str(x)[:30])
def test_bad_stream_closes_only_that_connection(name: str, auth: bool, payload: bytes) -> None:
    async def main() -> None:
        async with cluster("n1", "n2", max_frame_bytes=1 << 20) as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            await assert_link_works(n1, n2, 1)
            if auth:
                reader, writer, reply = await authenticate(n2.t.address, "n1")
                assert reply == [HELLO_MAGIC, V, "ok"]
            else:
                reader, writer, _ = await raw_connect(n2.t.address)
            writer.write(payload)
            await writer.drain()
            assert await closed_by_peer(reader)
            writer.close()
            await assert_link_works(n1, n2, 2)  # the real n1 link was not disturbed
            await assert_link_works(n2, n1, 3)
            s = n2.t.stats()
            assert s["rejected"] + s["bad_streams"] == 1

    run(main())


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        # Protocol 1's hello, as an old node or an adversary with the old codec sends it.
        ([HELLO_MAGIC, 1, CLUSTER, "n1"], "protocol version 1"),
        ([HELLO_MAGIC, V, "not a nonce"], "malformed hello"),
        ([HELLO_MAGIC, V, b"short"], "malformed hello"),
    ],
)
def test_a_bad_hello_is_refused_naming_nothing(
    hello: list[Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The reply is the bare word "refused" (no cluster id, no member list: issue 11);
    the reason is in the refusing node's log."""

    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            reader, writer, reply = await raw_connect(n2.t.address, hello)
            assert reply == REFUSED
            assert await closed_by_peer(reader)
            writer.close()
            assert n2.t.stats()["rejected"] == 1
            await assert_link_works(n1, n2, 1)

    run(main())
    assert reason in caplog.text


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"secret": b"x" * 32}, "bad credentials"),
        ({"cluster": "other-cluster"}, "bad credentials"),
        ({"secret": b""}, "bad credentials"),  # an insecure node
    ],
)
def test_a_dialer_without_the_secret_is_refused(
    kw: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            reader, writer, reply = await authenticate(n2.t.address, "n1", **kw)
            assert reply == REFUSED
            assert await closed_by_peer(reader)
            writer.close()
            assert n2.t.stats()["rejected"] == 1 and n2.inbox.empty()
            await assert_link_works(n1, n2, 1)

    run(main())
    assert reason in caplog.text and "other-cluster" not in caplog.text


def test_a_holder_of_the_secret_claiming_no_member_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            reader, writer, reply = await authenticate(nodes["n2"].t.address, "n7")
            assert reply == REFUSED
            assert await closed_by_peer(reader)
            writer.close()

    run(main())
    assert "claims 'n7', not a member" in caplog.text


def test_an_acceptor_without_the_secret_gets_nothing_from_the_dialer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dialer checks the acceptor's proof first: an impostor listening on a peer's
    address never learns the dialer's id or receives a message."""

    async def main() -> None:
        impostor = Node("n2", secret=b"y" * 32)
        await impostor.t.start()
        n1 = Node("n1", {"n2": impostor.t.address})
        try:
            await n1.t.start()
            n1.t.send([hb("n1", "n2")])
            await wait_for(lambda: impostor.t.stats()["rejected"] >= 1)
            assert impostor.inbox.empty() and n1.t.stats()["connects"] == 0
        finally:
            await n1.t.close()
            await impostor.t.close()

    run(main())
    assert "does not prove it holds this cluster's secret" in caplog.text


def test_dialer_with_wrong_cluster_id_never_connects(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        n2 = Node("n2")
        await n2.t.start()
        n1 = Node("n1", {"n2": n2.t.address}, cluster_id="other")
        n2.t.update_peers({"n1": dead_address()})
        try:
            await n1.t.start()
            n1.t.send([hb("n1", "n2")])
            await wait_for(lambda: n2.t.stats()["rejected"] >= 2)
            assert n1.t.stats()["connects"] == 0 and n2.inbox.empty()
            await wait_for(lambda: "n2" in n1.unreachable)
        finally:
            await n1.t.close()
            await n2.t.close()

    run(main())
    assert "does not prove it holds this cluster's secret" in caplog.text


def test_misrouted_messages_are_dropped_connection_kept() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n2 = nodes["n2"]
            n2.t.update_peers({"n1": nodes["n1"].t.address, "n4": dead_address()})
            reader, writer, reply = await authenticate(n2.t.address, "n4")  # no real n4
            assert reply == [HELLO_MAGIC, V, "ok"]
            bad_src, bad_dst, good = hb("n1", "n2", 1), hb("n4", "n1", 2), hb("n4", "n2", 3)
            writer.write(b"".join(encode_frame(encode_message(m)) for m in (bad_src, bad_dst)))
            writer.write(encode_frame(encode_message(good)))
            await writer.drain()
            assert await n2.recv() == good
            assert n2.t.stats()["misrouted"] == 2
            assert not reader.at_eof()
            writer.close()

    run(main())


# ---- membership and shutdown ---------------------------------------------------------


def test_update_peers_adds_and_removes() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            n3 = Node("n3")
            await n3.t.start()
            try:
                everyone = {"n1": n1.t.address, "n2": n2.t.address, "n3": n3.t.address}
                for n in (n1, n2, n3):
                    n.t.update_peers(everyone)
                await assert_link_works(n1, n3, 1)
                await assert_link_works(n3, n2, 2)
                n1.t.update_peers({"n2": n2.t.address})  # n3 removed
                n1.t.send([hb("n1", "n3")])
                assert n1.t.stats()["dropped"] == 1
                _, w, reply = await authenticate(n1.t.address, "n3", target="n1")
                w.close()
                assert reply == REFUSED
                await assert_link_works(n1, n2, 3)
            finally:
                await n3.t.close()

    run(main())


def test_moved_peer_is_redialed_and_keeps_its_queue() -> None:
    async def main() -> None:
        n1 = Node("n1", {"n2": dead_address()})
        n2 = Node("n2")
        try:
            await n1.t.start()
            await n2.t.start()
            n2.t.update_peers({"n1": n1.t.address})
            n1.t.send([hb("n1", "n2", 1)])  # queued for the old, dead address
            n1.t.update_peers({"n2": n2.t.address})
            assert await n2.recv() == hb("n1", "n2", 1)
        finally:
            await n1.t.close()
            await n2.t.close()

    run(main())


def test_close_leaves_no_tasks_and_is_idempotent() -> None:
    async def main() -> None:
        async with cluster("n1", "n2", "n3") as nodes:
            await assert_link_works(nodes["n1"], nodes["n2"], 1)
            nodes["n1"].t.update_peers({**{i: n.t.address for i, n in nodes.items()}})
            nodes["n1"].t.update_peers({"n2": nodes["n2"].t.address, "n9": dead_address()})
            # a half-open inbound connection that never says hello
            _, idle_writer, _ = await raw_connect(nodes["n2"].t.address)
        for n in nodes.values():
            await n.t.close()  # second close is a no-op
            n.t.send([hb(n.t.node_id, "n2")])  # after close: dropped, no error
        idle_writer.close()
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())


def test_send_before_start_is_an_error() -> None:
    t = Node("n1").t
    with pytest.raises(RuntimeError):
        t.send([hb("n1", "n2")])


def test_a_proof_names_the_acceptor_so_it_cannot_be_relayed() -> None:
    """A process without the secret on n2's address (n2 down) cannot pass n3's answer
    off as n2's, nor hand n1's proof on to n3 (review of issue 11)."""
    key = PeerKey(derive_key(SECRET, CLUSTER))
    nd, na = PeerKey.nonce(), PeerKey.nonce()
    from_n3 = key.acceptor_mac(nd, na, "n3")
    assert key.check_acceptor(nd, na, "n3", from_n3)
    assert not key.check_acceptor(nd, na, "n2", from_n3)
    meant_for_n2 = key.dialer_mac(na, nd, "n1", "n2")
    assert not key.check_dialer(na, nd, "n1", "n3", meant_for_n2)
