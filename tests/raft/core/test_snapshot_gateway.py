"""A leader's snapshot is checked before the follower adopts it (issue 11): its
checksum (sent with every chunk), then the application's verdict. A refused snapshot
reaches no Ready (so nothing is written to disk or restored), and the follower asks
for it again from offset 0; a good one is adopted as before."""

from __future__ import annotations

import random
import zlib

from raft.config import Config
from raft.core.raw_node import RawNode
from raft.core.ready import Restored
from raft.messages import InstallSnapshot, SnapshotResp
from raft.types import ConfState, SnapshotMeta

META = SnapshotMeta(index=50, term=2, conf=ConfState(frozenset({"n1", "n2", "n3"})))


def follower(check: object = None) -> RawNode:
    restored = Restored.bootstrap(frozenset({"n1", "n2", "n3"}))
    return RawNode(Config(id="n1"), restored, random.Random(1), snapshot_check=check)  # type: ignore[arg-type]


def install(node: RawNode, data: bytes, checksum: int) -> tuple[object, list[object]]:
    msg = InstallSnapshot(src="n2", dst="n1", term=2, meta=META, offset=0, data=data,
                          done=True, checksum=checksum)  # fmt: skip
    node.step(msg)
    rd = node.ready()
    node.advance(rd)
    return rd.snapshot, list(rd.messages)


def refused(messages: list[object]) -> bool:
    return any(isinstance(m, SnapshotResp) and m.reject and m.offset == 0 for m in messages)


def test_a_snapshot_with_a_bad_checksum_is_refused() -> None:
    snap, msgs = install(follower(), b"state", zlib.crc32(b"other"))
    assert snap is None and refused(msgs)


def test_a_snapshot_the_application_rejects_is_refused() -> None:
    seen: list[bytes] = []

    def check(index: int, data: bytes) -> str | None:
        assert index == META.index
        seen.append(data)
        return "not a snapshot of this store"

    node = follower(check)
    snap, msgs = install(node, b"garbage", zlib.crc32(b"garbage"))
    assert seen == [b"garbage"] and snap is None and refused(msgs)
    assert node.status().commit < META.index


def test_a_good_snapshot_is_adopted() -> None:
    node = follower(lambda index, data: None)
    snap, msgs = install(node, b"state", zlib.crc32(b"state"))
    assert snap is not None and snap.meta == META and snap.data == b"state"  # type: ignore[attr-defined]
    assert not refused(msgs)
