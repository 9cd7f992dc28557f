"""Issue 11's peer attacks, replayed against a real cluster from a process without
credentials, using the project's own codec: refused at the handshake with a reply that
names nothing, and the cluster's state unchanged (term, data, membership). And a node
without its cluster secret refuses to start."""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from raft.codec import encode_message
from raft.framing import encode_frame
from raft.messages import AppendEntries, Heartbeat, InstallSnapshot, RequestVote
from raft.runtime.peer_auth import PeerKey, derive_key
from raft.runtime.transport import HELLO_MAGIC, PROTOCOL_VERSION
from raft.types import ConfState, Entry, EntryKind, SnapshotMeta
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


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: bytes,
    cluster: str,
    node: str,
    target: str,
) -> Any:
    """The dialer's half of the handshake as ``node`` under ``secret``, to ``target``;
    the acceptor's verdict frame."""
    key = PeerKey(derive_key(secret, cluster))
    nonce_d = PeerKey.nonce()
    writer.write(frame([HELLO_MAGIC, PROTOCOL_VERSION, nonce_d]))
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    _, _, nonce_a, _ = msgpack.unpackb(await reader.readexactly(n), raw=False)
    mac = key.dialer_mac(nonce_a, nonce_d, node, target)
    writer.write(frame([HELLO_MAGIC, PROTOCOL_VERSION, node, mac]))
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return msgpack.unpackb(await reader.readexactly(n), raw=False)


async def dial_with(
    address: tuple[str, int], secret: bytes, cluster: str, node: str, target: str
) -> Any:
    """A whole handshake under ``secret``; the acceptor's verdict."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        return await handshake(reader, writer, secret, cluster, node, target)
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
        reply = asyncio.run(dial_with(addr, b"w" * 64, lc.cfg.id, "n2", node.id))
        assert reply == REFUSED
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


async def as_member(
    address: tuple[str, int], secret: bytes, cluster: str, node: str, target: str, *frames: bytes
) -> bool:
    """Authenticate as ``node`` (a buggy member: Raft trusts its members, so this tests
    the gateway, not Byzantine tolerance), send ``frames``; True if the node then
    closed the connection."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        verdict = await handshake(reader, writer, secret, cluster, node, target)
        assert verdict[2] == "ok", verdict
        writer.write(b"".join(frames))
        await writer.drain()
        try:
            async with asyncio.timeout(2):
                return await reader.read(1) == b""
        except TimeoutError:
            return False
    finally:
        writer.close()


def test_a_buggy_member_is_refused_by_the_gateway(local_cluster: LocalCluster) -> None:
    """From a process holding the secret: a term past the bound and an index gap close
    the connection (the codec refuses them); a snapshot with a bad checksum, or one the
    state machine's validate rejects, is refused before anything is written; the node
    serves on throughout. A second leader in one term stops the node, naming the peer."""
    lc = local_cluster
    c = lc.client()
    c.put("k", "v")
    secret = lc.cfg.security.peer_secret_file.read_text().strip().encode()
    leader = lc.leader()
    target = lc.followers()[0]
    other = next(n for n in lc.ids if n not in (leader, target))
    addr = (lc.cfg.node(target).peer_address.host, lc.cfg.node(target).peer_address.port)
    st = lc.status(target)
    assert st is not None
    term = st.term

    def send(*msgs: Any) -> bool:
        frames = [encode_frame(encode_message(m)) for m in msgs]
        return asyncio.run(as_member(addr, secret, lc.cfg.id, other, target, *frames))

    def raw(obj: Any) -> bytes:
        return frame(obj)

    vote = raw([3, other, target, 1 << 48, 1, 1, False, True])  # term past the bound
    assert asyncio.run(as_member(addr, secret, lc.cfg.id, other, target, vote))
    gap = raw([1, other, target, term, 0, 0, [[term, 2, 0, b"x"]], 0])  # index 1 missing
    assert asyncio.run(as_member(addr, secret, lc.cfg.id, other, target, gap))
    snap_dir = lc.cfg.node(target).data_dir / "raft"
    before = {p.name: p.read_bytes() for p in snap_dir.iterdir() if p.name == "snapshot"}
    meta = SnapshotMeta(index=10_000, term=term, conf=ConfState(frozenset(lc.ids)))
    garbage = b"\x95\x04not a snapshot"
    for checksum in (zlib.crc32(garbage) ^ 1, zlib.crc32(garbage)):  # bad crc; bad state
        m = InstallSnapshot(src=other, dst=target, term=term, meta=meta, offset=0,
                            data=garbage, done=True, checksum=checksum)  # fmt: skip
        assert not send(m)  # well-formed: the connection stays, the snapshot does not
    assert {p.name: p.read_bytes() for p in snap_dir.iterdir() if p.name == "snapshot"} == before
    log = (lc.cfg.node(target).data_dir / "node.log").read_text()
    assert "refusing a snapshot from the leader" in log
    assert lc.pid(target) is not None and lc.status(target) is not None
    assert c.get("k").value == b"v" and c.put("k2", "v2").revision == 2
    lc.wait_applied(target, lc.status(leader).applied)  # type: ignore[union-attr]

    # Two leaders in one term is an invariant violation: the leader stops, naming who.
    lterm = lc.status(leader).term  # type: ignore[union-attr]
    laddr = (lc.cfg.node(leader).peer_address.host, lc.cfg.node(leader).peer_address.port)
    hb = encode_frame(encode_message(Heartbeat(src=target, dst=leader, term=lterm, commit=0)))
    asyncio.run(as_member(laddr, secret, lc.cfg.id, target, leader, hb))
    pid = lc.pid(leader)
    deadline = asyncio.run(_wait_gone(lc, leader))
    assert deadline, f"{leader} (pid {pid}) still runs"
    llog = (lc.cfg.node(leader).data_dir / "node.log").read_text()
    assert f"two leaders in term {lterm}: this node ({leader}) and {target}" in llog
    assert "Heartbeat" in llog


async def _wait_gone(lc: LocalCluster, node: str) -> bool:
    async with asyncio.timeout(10):
        while lc.pid(node) is not None:
            await asyncio.sleep(0.05)
    return True
