"""Peer mutual TLS in raft.runtime.transport, over real sockets on 127.0.0.1.

The certificates come from kvstore.certs and the member-id check from kvstore.tls (the
store's convention; the transport only calls the callback it is given). Each side is
tested alone: the dialer must refuse an acceptor whose certificate names another
member (even one holding the secret), the acceptor a dialer whose certificate does not
name the id it claims or that another CA signed, and neither accepts plain TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kvstore.certs import CertificateAuthority, CertPair, member_uri, write_new
from kvstore.tls import cert_names_member, peer_tls
from raft.framing import encode_frame
from raft.runtime import transport
from raft.runtime.peer_auth import PeerKey, derive_key
from raft.runtime.peer_tls import PeerTLS
from raft.runtime.transport import HELLO_MAGIC
from tests.raft.runtime.test_transport import (
    CLUSTER,
    REFUSED,
    SECRET,
    Node,
    V,
    closed_by_peer,
    hb,
    read_hello,
    run,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)


class Certs:
    """A CA and certificates for n1..n3 and a client in ``root``; ``rogue`` is another
    CA's certificate naming n3; ``n2+n3`` one of this CA's naming both (this tool never
    issues such a certificate, but a CA an operator runs might)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ca = CertificateAuthority.create(CLUSTER)
        self.ca = self._write("ca", ca.pair)
        for node in ("n1", "n2", "n3"):
            self._write(node, ca.issue_node(node, ["127.0.0.1"]))
        self._write("client", ca.issue_client("a client"))
        self._write("rogue", CertificateAuthority.create("other").issue_node("n3", ["127.0.0.1"]))
        self._write("n2+n3", issue_multi(ca, ["n2", "n3"]))

    def _write(self, name: str, pair: object) -> Path:
        cert = self.root / f"{name}.crt"
        write_new(cert, pair.cert_pem, private=False)  # type: ignore[attr-defined]
        write_new(self.root / f"{name}.key", pair.key_pem, private=True)  # type: ignore[attr-defined]
        return cert

    def tls(self, name: str) -> PeerTLS:
        return peer_tls(self.ca, self.root / f"{name}.crt", self.root / f"{name}.key")

    def dialer_context(self, name: str) -> ssl.SSLContext:
        """A hand-made dialer's context presenting ``name``'s certificate."""
        return self.tls(name).client


def issue_multi(ca: CertificateAuthority, members: list[str]) -> CertPair:
    """A node certificate of ``ca`` naming every one of ``members``."""
    names = [x509.UniformResourceIdentifier(member_uri(m)) for m in members]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return ca._issue("several members", names, usages)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def test_peers_with_certificates_exchange_messages(certs: Certs) -> None:
    async def main() -> None:
        n1, n2 = Node("n1", tls=certs.tls("n1")), Node("n2", tls=certs.tls("n2"))
        try:
            await n1.t.start()
            await n2.t.start()
            n1.t.update_peers({"n2": n2.t.address})
            n2.t.update_peers({"n1": n1.t.address})
            for commit in range(3):
                n1.t.send([hb("n1", "n2", commit)])
                assert await n2.recv() == hb("n1", "n2", commit)
            n2.t.send([hb("n2", "n1", 7)])
            assert await n1.recv() == hb("n2", "n1", 7)
            # Plain TCP gets no handshake reply at all: the TLS handshake fails, and
            # is counted as a refusal.
            reader, writer = await asyncio.open_connection(*n2.t.address)
            hello = [HELLO_MAGIC, V, PeerKey.nonce()]
            writer.write(encode_frame(msgpack.packb(hello, use_bin_type=True)))
            assert await reader.read(4096) == b""
            writer.close()
            assert n2.t.stats()["rejected"] == 1
        finally:
            await n1.t.close()
            await n2.t.close()

    run(main())


@pytest.mark.parametrize("presented", ["n3", "n2+n3"])
def test_the_dialer_refuses_an_acceptor_whose_certificate_names_another_member(
    certs: Certs, caplog: pytest.LogCaptureFixture, presented: str
) -> None:
    """n3 (a member, holding the secret) listens where n1 expects n2: n1 sends nothing,
    also when n3's certificate names n2 as well as n3."""

    async def main() -> None:
        impostor = Node("n3", tls=certs.tls(presented))
        await impostor.t.start()
        impostor.t.update_peers({"n1": ("127.0.0.1", 9)})
        n1 = Node("n1", {"n2": impostor.t.address}, tls=certs.tls("n1"))
        try:
            await n1.t.start()
            n1.t.send([hb("n1", "n2")])
            await wait_for(lambda: "n2" in n1.unreachable)
            assert n1.t.stats()["connects"] == 0 and impostor.inbox.empty()
        finally:
            await n1.t.close()
            await impostor.t.close()

    run(main())
    assert "does not bind member n2" in caplog.text


async def dial_tls(
    address: tuple[str, int], context: ssl.SSLContext, claim: str, target: str
) -> object:
    """A hand-made dialer over TLS: the whole handshake (with the secret) as ``claim``;
    the acceptor's verdict, or the exception the connection ended with."""
    try:
        reader, writer = await asyncio.open_connection(*address, ssl=context)
    except (OSError, EOFError) as exc:
        return exc
    try:
        key = PeerKey(derive_key(SECRET, CLUSTER))
        nonce_d = PeerKey.nonce()
        writer.write(encode_frame(msgpack.packb([HELLO_MAGIC, V, nonce_d], use_bin_type=True)))
        _, _, nonce_a, _ = await read_hello(reader)
        auth = [HELLO_MAGIC, V, claim, key.dialer_mac(nonce_a, nonce_d, claim, target)]
        writer.write(encode_frame(msgpack.packb(auth, use_bin_type=True)))
        verdict = await read_hello(reader)
        if verdict == REFUSED:
            await closed_by_peer(reader)
        return verdict
    except (OSError, EOFError) as exc:  # ssl.SSLError, IncompleteReadError
        return exc
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("presented", "refusal"),
    [
        ("n2", "it claims 'n3', which its certificate does not bind"),
        ("client", "it claims 'n3', which its certificate does not bind"),
        ("n2+n3", "it claims 'n3', which its certificate does not bind"),
        ("rogue", None),  # another CA: the TLS handshake fails, the handshake never runs
    ],
)
def test_the_acceptor_refuses_a_certificate_that_does_not_bind_the_claimed_id(
    certs: Certs, caplog: pytest.LogCaptureFixture, presented: str, refusal: str | None
) -> None:
    async def main() -> None:
        n1, n3 = Node("n1", tls=certs.tls("n1")), Node("n3", tls=certs.tls("n3"))
        try:
            for n in (n1, n3):
                await n.t.start()
            n1.t.update_peers({"n3": n3.t.address, "n2": ("127.0.0.1", 9)})
            n3.t.update_peers({"n1": n1.t.address})
            result = await dial_tls(n1.t.address, certs.dialer_context(presented), "n3", "n1")
            if refusal is None:  # the TLS handshake fails: no hello is exchanged
                assert isinstance(result, OSError | EOFError), result
            else:
                assert result == REFUSED
            assert n1.t.stats()["rejected"] == 1
            # The genuine n3 is still served.
            n3.t.send([hb("n3", "n1", 5)])
            assert await n1.recv() == hb("n3", "n1", 5)
            assert n1.inbox.empty()
        finally:
            await n1.t.close()
            await n3.t.close()

    run(main())
    assert (refusal or "TLS handshake failed") in caplog.text


def test_the_genuine_certificate_passes_the_acceptor(certs: Certs) -> None:
    """The control for the test above: the same hand-made dialer with n3's own
    certificate is accepted, so the refusals are the certificate's doing."""

    async def main() -> None:
        n1 = Node("n1", tls=certs.tls("n1"))
        try:
            await n1.t.start()
            n1.t.update_peers({"n3": ("127.0.0.1", 9)})
            result = await dial_tls(n1.t.address, certs.dialer_context("n3"), "n3", "n1")
            assert result == [HELLO_MAGIC, V, "ok"]
        finally:
            await n1.t.close()

    run(main())


def test_a_peer_tls_context_must_verify_both_ways(certs: Certs) -> None:
    good = certs.tls("n1")
    lax = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ValueError, match="require client certificates"):
        PeerTLS(lax, good.client, good.names)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_idle_connections_are_bounded_by_the_handshake_limit(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tls: bool
) -> None:
    """Connections that never start TLS (or never say hello) hold at most
    MAX_HANDSHAKES slots; the rest are closed at once, with TLS as without. Then a
    genuine peer still gets in, and close() ends handshakes in progress (the connect
    timeout is far longer than the test)."""
    monkeypatch.setattr(transport, "MAX_HANDSHAKES", 4)

    def node(node_id: str, peers: dict[str, tuple[str, int]] | None = None) -> Node:
        return Node(node_id, peers, tls=certs.tls(node_id) if tls else None, connect_timeout=60)

    async def main() -> None:
        n1 = node("n1")
        n3: Node | None = None
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            await n1.t.start()
            n1.t.update_peers({"n3": ("127.0.0.1", 9)})
            idle = [await asyncio.open_connection(*n1.t.address) for _ in range(10)]
            await wait_for(lambda: sum(r.at_eof() for r, _ in idle) == 6)
            assert n1.t.stats()["handshaking"] == 4
            assert n1.t.stats()["rejected"] == 6
            for _, w in idle:
                w.close()
            await wait_for(lambda: n1.t.stats()["handshaking"] == 0)
            assert n1.t.stats()["rejected"] == 10  # 4 handshakes that failed, counted
            n3 = node("n3", {"n1": n1.t.address})
            await n3.t.start()
            n3.t.send([hb("n3", "n1", 1)])
            assert await n1.recv() == hb("n3", "n1", 1)
            idle = [await asyncio.open_connection(*n1.t.address) for _ in range(2)]
            await wait_for(lambda: n1.t.stats()["handshaking"] == 2)
            await n1.t.close()  # within the test's bound, not after connect_timeout
            await wait_for(lambda: all(r.at_eof() for r, _ in idle))
        finally:
            for _, w in idle:
                w.close()
            await n1.t.close()
            if n3 is not None:
                await n3.t.close()

    run(main())
    assert ("TLS handshake failed" if tls else "no valid handshake") in caplog.text


def test_a_certificate_naming_several_members_binds_none(certs: Certs) -> None:
    """The store's callback, on what ``getpeercert()`` returns for each certificate."""

    async def peercert(name: str) -> dict[str, object]:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(certs.root / f"{name}.crt", certs.root / f"{name}.key")
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server)
        try:
            client = ssl.create_default_context(cafile=certs.ca)
            client.check_hostname = False
            _, w = await asyncio.open_connection(*listener.sockets[0].getsockname(), ssl=client)
            cert: dict[str, object] = w.get_extra_info("peercert")
            w.close()
            return cert
        finally:
            listener.close()
            await listener.wait_closed()

    async def main() -> None:
        both = await peercert("n2+n3")
        assert not cert_names_member(both, "n2") and not cert_names_member(both, "n3")
        n3 = await peercert("n3")
        assert cert_names_member(n3, "n3") and not cert_names_member(n3, "n2")

    run(main())
