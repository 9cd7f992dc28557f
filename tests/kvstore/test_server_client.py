"""The real ClientServer and AsyncClient over 127.0.0.1, with ``LocalEngine`` (a
single-replica test double, no Raft) applying commands to a real KVStateMachine.

Every test body runs under ``asyncio.wait_for`` so none can hang, and every server is
closed in a ``finally``."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs upstream
import pytest

from kvstore import protocol as p
from kvstore.client import (
    AsyncClient,
    BadRequest,
    Client,
    CompareFailed,
    Indeterminate,
    NotFound,
    TooLarge,
    Unavailable,
)
from kvstore.protocol import Limits
from kvstore.server import ClientServer, ConnectionLimits
from kvstore.state_machine import KVStateMachine
from raft.framing import encode_frame
from tests.kvstore.local_engine import LocalEngine

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits(max_frame_bytes=64 << 10, max_key_bytes=256, max_value_bytes=16 << 10)
TEST_TIMEOUT = 30.0
ELECTION_TIMEOUT = 0.5  # the servers' (seconds): leases gain it on promotion


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), TEST_TIMEOUT)

    asyncio.run(bounded())


class Node:
    def __init__(
        self,
        node_id: str,
        addresses: dict[str, str],
        conn_limits: ConnectionLimits | None = None,
        **sm_args: Any,
    ) -> None:
        self.clock = [1000.0]  # the node's monotonic clock, seconds: the lessor's
        self.sm = KVStateMachine(**sm_args)
        self.engine = LocalEngine(self.sm, node_id)
        self.server = ClientServer(
            self.engine,
            self.sm,
            node_id,
            addresses,
            LIMITS,
            clock=lambda: self.clock[0],
            election_timeout=ELECTION_TIMEOUT,
            connection_limits=conn_limits,
        )
        self.addr = ""


@asynccontextmanager
async def cluster(
    *ids: str, conn_limits: ConnectionLimits | None = None, **sm_args: Any
) -> AsyncIterator[list[Node]]:
    """Servers on ephemeral ports, each its own LocalEngine; all closed on exit."""
    addresses: dict[str, str] = {}
    nodes = [Node(i, addresses, conn_limits, **sm_args) for i in ids]
    try:
        for n in nodes:
            await n.server.start("127.0.0.1", 0)
            n.addr = addresses[n.engine.id] = f"127.0.0.1:{n.server.port}"
        for n in nodes:
            await lessor_promoted(n)
        yield nodes
    finally:
        for n in nodes:
            await n.server.close()


async def lessor_promoted(n: Node) -> None:
    """Wait until the server's ticker has seen its engine lead (in its current term) and
    promoted the lessor, so lease deadlines follow ``n.clock`` from here on."""
    async with asyncio.timeout(5):
        while n.server.lessor.promoted_term != n.engine.term:
            await asyncio.sleep(0.01)


def client(*nodes: Node, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("deadline", 5.0)
    return AsyncClient([n.addr for n in nodes], **kwargs)


# ---- raw-socket helpers (for what a well-behaved client never sends) ---------------------


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame as a map, or None at EOF."""
    try:
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        return msgpack.unpackb(await reader.readexactly(n))  # type: ignore[no-any-return]
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def raw_connect(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = node.addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode_frame(p.encode_hello(p.Hello())))
    reply = await read_frame(reader)
    assert (
        reply is not None
        and reply["version"] == p.PROTOCOL_VERSION
        and reply["node"] == node.engine.id
    )
    return reader, writer


def frame(**fields: Any) -> bytes:
    return encode_frame(msgpack.packb(fields, use_bin_type=True))


# ---- basic operations ----------------------------------------------------------------------


def test_put_get_delete_scan_cas() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = client(n1)
            try:
                w = await c.put(b"a", b"1")
                assert w.revision == 1 and w.prev is None
                kv = await c.get("a")
                assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (
                    b"1",
                    1,
                    1,
                    1,
                )
                w = await c.put("a", "2")
                assert w.prev is not None and w.prev.value == b"1"
                await c.put(b"b/1", b"x")
                await c.put(b"b/2", b"y")
                await c.put(b"c", b"z")

                page = await c.scan(b"b/")
                assert [kv.key for kv in page.kvs] == [b"b/1", b"b/2"] and not page.more
                page = await c.scan(start=b"a", limit=2)
                assert [kv.key for kv in page.kvs] == [b"a", b"b/1"] and page.more
                page = await c.scan(start=b"b/2", end=b"c")
                assert [kv.key for kv in page.kvs] == [b"b/2"]
                page = await c.scan(consistency="serializable")
                assert len(page.kvs) == 4 and page.revision == 5

                with pytest.raises(CompareFailed) as failed:
                    await c.cas(b"a", expected_value=b"1", new_value=b"3")
                assert failed.value.current is not None and failed.value.current.value == b"2"
                w = await c.cas(b"a", expected_version=2, new_value=b"3")
                assert w.prev is not None and w.prev.version == 2
                w = await c.cas(b"new", expected_version=0, new_value=b"created")
                assert w.prev is None
                with pytest.raises(CompareFailed):
                    await c.cas(b"new", expected_version=0, new_value=b"again")

                w = await c.delete(b"a")
                assert w.prev is not None and w.prev.value == b"3"
                with pytest.raises(NotFound):
                    await c.get(b"a")
                with pytest.raises(NotFound):
                    await c.delete(b"a")
                with pytest.raises(NotFound):
                    await c.get(b"a", consistency="serializable")

                status = await c.status()
                assert status.node == "n1" and status.leader == "n1"
                assert status.leader_addr == n1.addr
            finally:
                await c.close()

    run(body)


def test_limits_are_checked_by_the_client_and_the_server() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = client(n1)
            try:
                with pytest.raises(TooLarge):
                    await c.put(b"k" * 257, b"v")
                with pytest.raises(TooLarge):
                    await c.put(b"k", b"v" * (16 << 10 + 1))
                with pytest.raises(BadRequest):
                    await c.get(b"")
                # Only the session's open reached the log, never an oversized write.
                assert n1.engine.proposals == 1
            finally:
                await c.close()

    run(body)


# ---- pipelining ---------------------------------------------------------------------------


def test_500_concurrent_requests_on_one_connection() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = client(n1, timeout=10.0, deadline=20.0)  # generous: slow CI machines
            try:
                await c.put(b"warm", b"up")
                writes = [c.put(f"k{i:03}", str(i)) for i in range(250)]
                reads = [c.get(b"warm", consistency="serializable") for _ in range(250)]
                done, got = await asyncio.gather(asyncio.gather(*writes), asyncio.gather(*reads))
                assert sorted(w.revision for w in done) == list(range(2, 252))
                assert all(kv.value == b"up" for kv in got)
                assert len(c._conns) == 1  # all pipelined over one connection
                page = await c.scan(b"k")
                assert len(page.kvs) == 250 and page.kvs[7].value == b"7"
                assert n1.sm.session_count == 1
            finally:
                await c.close()

    run(body)


def test_responses_may_overtake_each_other() -> None:
    """A slow write does not hold up a read pipelined behind it on the same connection."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            n1.engine.delay = 0.3
            reader, writer = await raw_connect(n1)
            try:
                client_id = b"c" * 16
                writer.write(frame(id=9, op="session_open", client=client_id, seq=1, ack=0))
                opened = await read_frame(reader)
                assert opened is not None and (opened["id"], opened["code"]) == (9, "OK")
                writer.write(
                    frame(id=1, op="put", key=b"k", value=b"v", client=client_id, seq=2, ack=1)
                )
                writer.write(frame(id=2, op="get", key=b"k", consistency="serializable"))
                first, second = await read_frame(reader), await read_frame(reader)
                assert first is not None and second is not None
                assert (first["id"], first["code"]) == (2, "NOT_FOUND")
                assert (second["id"], second["code"], second["revision"]) == (1, "OK", 1)
            finally:
                writer.close()

    run(body)


# ---- redirects --------------------------------------------------------------------------------


def test_follower_redirects_to_the_leader() -> None:
    async def body() -> None:
        async with cluster("n1", "n2") as [n1, n2]:
            n1.engine.leader = "n2"  # n1 is a follower that knows the leader
            c = client(n1)  # the client knows only the follower
            try:
                await c.put(b"k", b"v")
                assert c.leader == n2.addr
                assert (await c.get(b"k")).value == b"v"
                # The leader got the session's open and the put; the follower nothing.
                assert n1.engine.proposals == 0 and n2.engine.proposals == 2

                # Serializable reads are served by any node: n1's replica is (here) empty.
                one = AsyncClient([n1.addr], timeout=2.0, deadline=5.0)
                try:
                    with pytest.raises(NotFound):
                        await one.get(b"k", consistency="serializable")
                    assert (await one.status()).leader_addr == n2.addr
                finally:
                    await one.close()
            finally:
                await c.close()

    run(body)


def test_no_leader_is_unavailable_and_definite() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            n1.engine.leader = None
            c = client(n1, deadline=0.5)
            try:
                with pytest.raises(Unavailable):
                    await c.put(b"k", b"v")
                with pytest.raises(Unavailable):
                    await c.get(b"k")
                assert n1.engine.proposals == 0
            finally:
                await c.close()

    run(body)


def test_member_list_is_linearizable_unless_asked_otherwise() -> None:
    """A node that cannot confirm with a leader that its log is current does not
    answer the membership by default: a lagging follower once told the fault harness
    that a removed voter was still one, and the harness never added it back (the
    cluster ended with two wiped nodes outside it). Serializable answers at once."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            n1.engine.leader = None  # cut off: no leader to confirm with
            c = client(n1, deadline=0.5)
            try:
                with pytest.raises(Unavailable):
                    await c.member_list(endpoint=n1.addr)
                with pytest.raises(Unavailable):
                    await c.member_list()
                members = await c.member_list(endpoint=n1.addr, consistency="serializable")
                assert members.voters == ("n1",)
                n1.engine.leader = "n1"
                assert (await c.member_list()).voters == ("n1",)
            finally:
                await c.close()

    run(body)


def test_unreachable_endpoint_is_skipped() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = AsyncClient(["127.0.0.1:1", n1.addr], timeout=1.0, deadline=5.0)
            try:
                await c.put(b"k", b"v")
                assert c.leader == n1.addr
            finally:
                await c.close()

    run(body)


# ---- malformed input -----------------------------------------------------------------------


async def _expect_closed_with(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str
) -> None:
    last = await read_frame(reader)
    assert last is not None and last["id"] is None and last["code"] == code, last
    assert await read_frame(reader) is None  # and then EOF
    writer.close()


def test_malformed_input_never_hurts_other_clients() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            good = client(n1)
            try:
                await good.put(b"k", b"v")

                async def still_fine() -> None:
                    assert (await good.get(b"k")).value == b"v"

                # Garbage payload: the stream is unreadable, so the connection ends.
                r, w = await raw_connect(n1)
                w.write(encode_frame(b"\xc1\xc1 not msgpack"))
                await _expect_closed_with(r, w, "BAD_REQUEST")
                await still_fine()

                # A header declaring more than the frame limit: closed before the body.
                r, w = await raw_connect(n1)
                w.write(struct.pack(">I", LIMITS.max_frame_bytes + 1))
                await _expect_closed_with(r, w, "TOO_LARGE")
                await still_fine()

                # No request id: nothing to answer to, so the connection ends.
                r, w = await raw_connect(n1)
                w.write(frame(op="get", key=b"k"))
                await _expect_closed_with(r, w, "BAD_REQUEST")

                # Readable requests with bad fields are answered; the connection lives on.
                r, w = await raw_connect(n1)
                w.write(frame(id=1, op="get", key="a str, not bin"))
                w.write(frame(id=2, op="explode"))
                w.write(frame(id=3, op="get", key=b"x" * (LIMITS.max_key_bytes + 1)))
                w.write(frame(id=4, op="put", key=b"k", value=b"v"))  # no session
                w.write(frame(id=5, op="get", key=b"k"))
                answers = {}
                for _ in range(5):
                    m = await read_frame(r)
                    assert m is not None
                    answers[m["id"]] = m["code"]
                assert answers == {
                    1: "BAD_REQUEST",
                    2: "UNKNOWN_OP",
                    3: "TOO_LARGE",
                    4: "BAD_REQUEST",
                    5: "OK",
                }
                w.close()
                await still_fine()

                # A wrong protocol version is refused in the hello reply.
                host, port = n1.addr.split(":")
                r, w = await asyncio.open_connection(host, int(port))
                w.write(frame(hello="raftkv", version=99))
                reply = await read_frame(r)
                assert reply is not None and reply["code"] == "UNSUPPORTED_VERSION"
                assert reply["versions"] == [2]
                assert await read_frame(r) is None
                w.close()

                # Not a hello at all.
                r, w = await asyncio.open_connection(host, int(port))
                w.write(b"GET / HTTP/1.1\r\n\r\n")
                reply = await read_frame(r)
                assert reply is None or reply["code"] in ("BAD_REQUEST", "TOO_LARGE")
                assert await read_frame(r) is None
                w.close()
                await still_fine()
                assert n1.engine.proposals == 2  # the good client's open and put
            finally:
                await good.close()

    run(body)


def test_requests_in_flight_are_answered_before_a_fatal_close() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            n1.engine.delay = 0.2
            r, w = await raw_connect(n1)
            w.write(frame(id=9, op="session_open", client=b"c" * 16, seq=1, ack=0))
            opened = await read_frame(r)
            assert opened is not None and (opened["id"], opened["code"]) == (9, "OK")
            w.write(frame(id=1, op="put", key=b"k", value=b"v", client=b"c" * 16, seq=2, ack=1))
            w.write(encode_frame(b"\xc1"))
            first = await read_frame(r)
            assert first is not None and (first["id"], first["code"]) == (1, "OK")
            await _expect_closed_with(r, w, "BAD_REQUEST")

    run(body)


# ---- exactly once ----------------------------------------------------------------------------


def test_lost_response_is_retried_and_applied_once() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = client(n1, backoff_base=0.01)
            try:
                await c.open_session()
                assert n1.engine.proposals == 1
                n1.engine.drop_responses = 1  # applied, then the answer is "lost"
                w = await c.put(b"k", b"v")
                assert n1.engine.proposals == 3  # the retry reached the state machine ...
                assert w.revision == 1  # ... which answered from the session table
                kv = await c.get(b"k")
                assert (kv.version, kv.mod_revision, n1.sm.revision) == (1, 1, 1)

                # The same through a client-side attempt timeout: the slow first attempt
                # and its retry both get proposed; one applies.
                slow = client(n1, timeout=0.25, backoff_base=0.01)
                await slow.open_session()
                n1.engine.delays = [0.4]
                try:
                    w = await slow.put(b"k", b"v2")
                finally:
                    await slow.close()
                kv = await c.get(b"k")
                assert (kv.value, kv.version, n1.sm.revision, w.revision) == (b"v2", 2, 2, 2)
            finally:
                await c.close()

    run(body)


def test_write_that_never_gets_an_answer_is_indeterminate() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = client(n1, deadline=0.5, backoff_base=0.01)
            try:
                await c.open_session()
                n1.engine.drop_responses = 10**6
                with pytest.raises(Indeterminate):
                    await c.put(b"k", b"v")
                assert n1.sm.revision == 1  # applied once, however often retried
                n1.engine.drop_responses = 0
                await c.put(b"k", b"again")  # the session carries on
                assert (await c.get(b"k")).version == 2
            finally:
                await c.close()

    run(body)


def test_expired_session_is_renewed_transparently() -> None:
    async def body() -> None:
        async with cluster("n1", max_sessions=1) as [n1]:
            c, other = client(n1), client(n1)
            try:
                await c.put(b"k", b"1")
                old_id = c.client_id
                await other.put(b"o", b"1")  # max_sessions=1: c's session is evicted
                await c.put(b"other", b"x")  # finds its session evicted; resent in a new one
                await c.put(b"k", b"2")
                assert c.client_id != old_id
                assert (await c.get(b"k")).version == 2
            finally:
                await c.close()
                await other.close()

    run(body)


# ---- synchronous client ---------------------------------------------------------------------


def test_sync_client() -> None:
    async def body() -> None:
        async with cluster("n1") as [n1]:

            def script() -> bytes:
                with Client([n1.addr], timeout=2.0, deadline=5.0) as c:
                    c.put(b"k", b"v")
                    c.cas(b"k", expected_value=b"v", new_value=b"w")
                    assert [kv.key for kv in c.scan(b"").kvs] == [b"k"]
                    assert c.status().node == "n1"
                    c.delete(b"k")
                    c.put(b"k", b"x")
                    return c.get(b"k").value

            assert await asyncio.to_thread(script) == b"x"

    run(body)


def test_a_silent_leader_does_not_pin_the_client() -> None:
    """A cached leader that keeps its socket open but stops answering (SIGSTOP, a
    partition that blackholes packets) must not hold the client until its deadline:
    an attempt timeout makes it try the other endpoints (found by jepsen_like under
    the pause-leader nemesis)."""

    async def body() -> None:
        async with cluster("n1", "n2") as [n1, n2]:
            c = client(n1, n2, timeout=0.3, deadline=5.0, backoff_base=0.01)
            try:
                # A linearizable read caches n1 as leader without opening a session
                # of c's (the two test-double replicas share no state).
                seed = client(n1)
                await seed.put(b"k", b"v1")
                await seed.close()
                assert (await c.get(b"k")).value == b"v1"
                assert c.leader == n1.addr
                n1.engine.delay = 60.0  # n1 still believes it leads, but is silent
                n2.engine.leader = "n2"  # ... while n2 has taken over
                loop = asyncio.get_running_loop()
                start = loop.time()
                await c.put(b"other", b"v2")
                assert loop.time() - start < 2.0, "client stayed on the silent node"
                assert c.leader == n2.addr
            finally:
                await c.close()

    run(body)


def test_a_session_is_opened_before_the_first_write_and_closed_on_exit() -> None:
    """Only session_open creates a session (issue 9): the client sends it once, shared
    by concurrent first writes, before any of them; close() ends the session."""

    async def body() -> None:
        async with cluster("n1") as [n1]:
            c = client(n1)
            try:
                await asyncio.gather(*(c.put(b"k%d" % i, b"v") for i in range(5)))
                assert n1.engine.proposals == 6  # one open, five puts
                assert n1.sm.session_count == 1 and n1.sm.revision == 5
            finally:
                await c.close()
            assert n1.sm.session_count == 0 and n1.engine.proposals == 7
            reads = client(n1)
            try:
                await reads.get(b"k0")
            finally:
                await reads.close()
            assert n1.engine.proposals == 7  # a client that never wrote opens nothing

    run(body)
