"""Client TLS through the real ClientServer and AsyncClient on 127.0.0.1 (LocalEngine, no
Raft): connections that never start (or finish) a TLS handshake count against
``max_connections`` exactly as plain ones do, and close() ends them; a client whose CA
did not sign the node's certificate fails at once, naming the endpoint, instead of
retrying until its deadline (the library and the ``kv`` CLI)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from kvstore.certs import CertificateAuthority, write_new
from kvstore.client import AsyncClient, CertificateError, Unavailable
from kvstore.server import ConnectionLimits
from kvstore.tls import client_context
from tests.kvstore.test_server_client import Node, lessor_promoted, run

pytestmark = pytest.mark.timeout(60)

# Handshake and idle timeouts far longer than any test: nothing here ends by timing out.
SLOW = ConnectionLimits(idle_timeout=60, frame_timeout=60, max_connections=3)


@dataclasses.dataclass
class Files:
    ca: Path
    other_ca: Path  # a CA that signed nothing of this node's
    server: ssl.SSLContext


@pytest.fixture
def files(tmp_path: Path) -> Files:
    ca = CertificateAuthority.create("test")
    pair = ca.issue_node("n1", ["127.0.0.1"])
    for name, data, private in [
        ("ca.crt", ca.pair.cert_pem, False),
        ("other.crt", CertificateAuthority.create("other").pair.cert_pem, False),
        ("n1.crt", pair.cert_pem, False),
        ("n1.key", pair.key_pem, True),
    ]:
        write_new(tmp_path / name, data, private=private)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "n1.crt", tmp_path / "n1.key")
    return Files(tmp_path / "ca.crt", tmp_path / "other.crt", server)


@asynccontextmanager
async def serving(tls: ssl.SSLContext | None, limits: ConnectionLimits) -> AsyncIterator[Node]:
    addresses: dict[str, str] = {}
    node = Node("n1", addresses, limits)
    try:
        await node.server.start("127.0.0.1", 0, ssl=tls)
        node.addr = addresses["n1"] = f"127.0.0.1:{node.server.port}"
        await lessor_promoted(node)
        yield node
    finally:
        await node.server.close()


async def until(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_idle_connections_count_against_max_connections(files: Files, tls: bool) -> None:
    """Eight connections that never say anything (with TLS: never start the handshake):
    three hold the node's connection slots, five are refused, with TLS as without.
    Once they go, a real client is served; close() ends connections still waiting."""

    async def body() -> None:
        async with serving(files.server if tls else None, SLOW) as n1:
            host, port = n1.addr.split(":")
            idle = [await asyncio.open_connection(host, int(port)) for _ in range(8)]
            stats = n1.server.stats
            await until(lambda: stats()["refused"] == 5)
            assert stats()["connections"] == 3
            for _, w in idle:
                w.close()
            await until(lambda: stats()["connections"] == 0)
            assert stats()["tls_failed"] == (3 if tls else 0)  # cut off mid-handshake
            ctx = client_context(files.ca) if tls else None
            async with AsyncClient([n1.addr], timeout=2, deadline=5, tls=ctx) as c:
                await c.put("k", "v")
                assert (await c.get("k")).value == b"v"
            idle = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
            await until(lambda: stats()["connections"] == 2)
            await n1.server.close()  # well within the 60 s handshake timeout
            await until(lambda: all(r.at_eof() for r, _ in idle))
            for _, w in idle:
                w.close()

    run(body)


def test_a_tls_connection_past_the_limit_is_closed_and_the_client_told_unavailable(
    files: Files,
) -> None:
    async def body() -> None:
        async with serving(files.server, dataclasses.replace(SLOW, max_connections=1)) as n1:
            host, port = n1.addr.split(":")
            _, held = await asyncio.open_connection(host, int(port))
            await until(lambda: n1.server.stats()["connections"] == 1)
            ctx = client_context(files.ca)
            async with AsyncClient([n1.addr], timeout=0.5, deadline=1, tls=ctx) as c:
                with pytest.raises(Unavailable, match="cannot connect"):
                    await c.get("k")
            assert n1.server.stats()["refused"] >= 1
            held.close()

    run(body)


def test_a_client_with_the_wrong_ca_fails_at_once_naming_the_endpoint(files: Files) -> None:
    """A deadline of 30 s: the error must come from the first attempt, not the last."""

    async def body() -> None:
        async with serving(files.server, SLOW) as n1:
            wrong = client_context(files.other_ca)
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with AsyncClient([n1.addr], timeout=5, deadline=30, tls=wrong) as c:
                with pytest.raises(CertificateError) as info:
                    await c.get("k")
            assert loop.time() - start < 5
            message = str(info.value)
            assert message.startswith(f"cannot verify the TLS certificate of {n1.addr}: ")
            assert "unable to get local issuer certificate" in message
            await until(lambda: n1.server.stats()["tls_failed"] >= 1)  # the node saw it too
            right = client_context(files.ca)
            async with AsyncClient([n1.addr], timeout=2, deadline=5, tls=right) as c:
                await c.put("k", "v")  # the control: the right CA is served

    run(body)


def test_a_tls_handshake_that_never_starts_times_out_and_frees_its_slot(files: Files) -> None:
    """frame_timeout bounds the handshake; the connection's slot is free afterwards
    (a handler stuck waiting for a stream asyncio never closes would keep it)."""

    async def body() -> None:
        limits = dataclasses.replace(SLOW, frame_timeout=0.2)
        async with serving(files.server, limits) as n1:
            host, port = n1.addr.split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            await until(lambda: n1.server.stats()["tls_failed"] == 1)
            await until(lambda: n1.server.stats()["connections"] == 0)
            await until(reader.at_eof)
            writer.close()

    run(body)


@contextmanager
def served_in_a_thread(files: Files) -> Iterator[str]:
    """A TLS node on its own event loop in a thread (the CLI runs its own loop here)."""
    loop = asyncio.new_event_loop()
    addr: list[str] = []
    ready = threading.Event()
    stop: asyncio.Future[None] = loop.create_future()

    async def serve() -> None:
        async with serving(files.server, SLOW) as n1:
            addr.append(n1.addr)
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10), "the node did not start"
        yield addr[0]
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()


def test_the_cli_reports_a_certificate_it_cannot_verify_at_once(files: Files) -> None:
    """Exit 2 (a configuration error, nothing sent), not 5 (unavailable, retry) after
    the 30 s timeout; the message names the endpoint and the verification error."""
    with served_in_a_thread(files) as addr:
        base = ["--cacert", str(files.other_ca), "get", "k", "--endpoints", addr]
        text = CliRunner().invoke(cli, [*base, "--timeout", "30"])
        assert text.exit_code == 2, text.output
        assert f"kv: cannot verify the TLS certificate of {addr}: " in text.stderr
        assert "unable to get local issuer certificate" in text.stderr
        as_json = CliRunner().invoke(cli, [*base, "--timeout", "30", "--json"])
        assert as_json.exit_code == 2, as_json.output
        got = json.loads(as_json.stdout)
        assert got["ok"] is False and got["error"] == "tls" and addr in got["message"]
        right = ["--cacert", str(files.ca), "put", "k", "v", "--endpoints", addr]
        assert CliRunner().invoke(cli, right).exit_code == 0  # the control


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_close_leaves_no_connection_open_refused_ones_included(files: Files, tls: bool) -> None:
    """A connection refused over the limit lingers a moment for its reply to arrive;
    close() must end it too, not leave it to a timer that a closed loop never runs."""

    async def body() -> None:
        before = open_fds()
        async with serving(files.server if tls else None, SLOW) as n1:
            host, port = n1.addr.split(":")
            conns = [await asyncio.open_connection(host, int(port)) for _ in range(6)]
            await until(lambda: n1.server.stats()["refused"] == 3)
            await n1.server.close()
            for _, w in conns:
                w.close()
            # A few loop turns, well short of the 0.2 s linger: the sockets are closed
            # by close() itself. (A slow machine can only make this pass, never fail.)
            await asyncio.sleep(0.05)
            assert open_fds() <= before

    run(body)
