"""Issue 11's peer attacks, replayed against a real cluster from a process without
credentials, using the project's own codec: refused at the handshake with a reply that
names nothing, and the cluster's state unchanged (term, data, membership). And a node
without its cluster secret refuses to start."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from raft.codec import encode_message
from raft.framing import encode_frame
from raft.messages import AppendEntries, RequestVote
from raft.runtime.peer_auth import PeerKey, derive_key
from raft.runtime.transport import HELLO_MAGIC, PROTOCOL_VERSION
from raft.types import Entry, EntryKind
from tests.integration.conftest import LocalCluster
from tests.integration.test_kv_cli import kv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MAX_TERM = (1 << 63) - 1


def frame(obj: Any) -> bytes:
    return encode_frame(msgpack.packb(obj, use_bin_type=True))


async def exchange(address: tuple[str, int], *frames: bytes) -> list[Any]:
    """Send ``frames``, then read every frame the node sends until it closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"".join(frames))
        await writer.drain()
        replies: list[Any] = []
        async with asyncio.timeout(10):
            while True:
                try:
                    (n,) = struct.unpack(">I", await reader.readexactly(4))
                    replies.append(msgpack.unpackb(await reader.readexactly(n), raw=False))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return replies
    finally:
        writer.close()


REFUSED = [HELLO_MAGIC, PROTOCOL_VERSION, "refused"]


async def dial_with(address: tuple[str, int], secret: bytes, cluster: str, node: str) -> Any:
    """The dialer's handshake under ``secret``; the acceptor's verdict."""
    key = PeerKey(derive_key(secret, cluster))
    reader, writer = await asyncio.open_connection(*address)
    try:
        nonce_d = PeerKey.nonce()
        writer.write(frame([HELLO_MAGIC, PROTOCOL_VERSION, nonce_d]))
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        _, _, nonce_a, _ = msgpack.unpackb(await reader.readexactly(n), raw=False)
        writer.write(frame([HELLO_MAGIC, PROTOCOL_VERSION, node,
                            key.dialer_mac(nonce_a, nonce_d, node)]))  # fmt: skip
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        return msgpack.unpackb(await reader.readexactly(n), raw=False)
    finally:
        writer.close()


def attacks(lc: LocalCluster) -> list[tuple[str, list[bytes]]]:
    """What the issue's adversary sent, each after the hello it could make."""
    cid = lc.cfg.id
    vote = RequestVote(src="n2", dst="n1", term=MAX_TERM, last_index=1 << 40,
                       last_term=MAX_TERM, transfer=True)  # fmt: skip
    put = Entry(term=MAX_TERM, index=1 << 40, kind=EntryKind.NORMAL, data=b"\x93\x03\x01")
    append = AppendEntries(src="n2", dst="n1", term=MAX_TERM, prev_index=0, prev_term=0,
                           entries=(put,), commit=1 << 40)  # fmt: skip
    forged = [encode_frame(encode_message(m)) for m in (vote, append)]
    old_hello = frame([HELLO_MAGIC, 1, cid, "n2"])  # protocol 1 trusted this
    nonce = frame([HELLO_MAGIC, PROTOCOL_VERSION, PeerKey.nonce()])
    return [("protocol-1 hello", [old_hello, *forged]), ("protocol-2 hello", [nonce, *forged])]


def test_peer_attacks_without_the_secret_change_nothing(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    c = lc.client()
    c.put("before", "1")
    leader = lc.leader()
    term = lc.status(leader).term  # type: ignore[union-attr]
    for node in lc.cfg.nodes:
        addr = (node.peer_address.host, node.peer_address.port)
        for name, frames in attacks(lc):
            replies = asyncio.run(exchange(addr, *frames))
            if name == "protocol-1 hello":
                assert replies == [REFUSED], replies
            else:  # a challenge, then (the forged frames are no MAC) a bare refusal
                assert len(replies) == 2 and replies[1] == REFUSED, replies
            text = repr(replies)
            assert lc.cfg.id not in text and "n1" not in text and "n3" not in text
        # The whole handshake with a guessed secret (and the right cluster id): refused.
        assert asyncio.run(dial_with(addr, b"w" * 64, lc.cfg.id, "n2")) == REFUSED
    assert lc.leader() == leader and lc.status(leader).term == term  # type: ignore[union-attr]
    assert c.get("before").value == b"1" and c.put("after", "2").revision == 2
    for nid in lc.ids:
        log = (lc.cfg.node(nid).data_dir / "node.log").read_text()
        assert "refusing a peer connection" in log


def test_a_node_without_the_secret_refuses_to_start(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    secret = lc.cfg.security.peer_secret_file
    kept = secret.read_bytes()
    secret.unlink()
    try:
        r = kv("node", "--config", str(lc.config), "--id", "n1")
        assert r.returncode == 2
        assert b"refuses to start: no cluster secret at" in r.stderr
    finally:
        secret.write_bytes(kept)
        secret.chmod(0o600)
