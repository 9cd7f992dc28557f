"""Small builders shared by the storage tests."""

from __future__ import annotations

from raft.types import ConfState, Entry, Snapshot, SnapshotMeta


def ents(first: int, last: int, term: int) -> list[Entry]:
    """Entries ``first..last`` inclusive, in ``term``, with data naming both."""
    return [Entry(term, i, data=f"{term}/{i}".encode()) for i in range(first, last + 1)]


def snap(index: int, term: int, data: bytes = b"state") -> Snapshot:
    conf = ConfState(frozenset({"n1", "n2", "n3"}))
    return Snapshot(SnapshotMeta(index, term, conf), data)


def flip(path: object, offset: int) -> None:
    """Invert one byte of a file in place, as bit rot would."""
    with open(str(path), "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
