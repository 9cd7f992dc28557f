from __future__ import annotations

from pathlib import Path

import pytest

from raft.storage import CorruptStorage, atomic_write, read_checked, write_checked
from raft.storage.files import HEADER_SIZE

from .helpers import flip


def test_checked_round_trip_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_checked(path, b"one")
    write_checked(path, b"two")
    assert read_checked(path) == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"a" * 100)
    atomic_write(path, b"b")
    assert path.read_bytes() == b"b"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _extend(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"x")


@pytest.mark.parametrize(
    ("damage", "offset"),
    [
        (lambda p: flip(p, HEADER_SIZE + 1), HEADER_SIZE),  # payload bit rot
        (lambda p: flip(p, 0), 0),  # magic
        (lambda p: flip(p, 4), 4),  # version
        (lambda p: flip(p, 6), HEADER_SIZE),  # crc
        (_truncate, HEADER_SIZE),
        (_extend, HEADER_SIZE),
        (lambda p: p.write_bytes(b""), 0),
    ],
)
def test_damaged_file_raises_naming_file_and_offset(
    tmp_path: Path, damage: object, offset: int
) -> None:
    path = tmp_path / "f"
    write_checked(path, b"payload bytes")
    damage(path)  # type: ignore[operator]
    with pytest.raises(CorruptStorage) as info:
        read_checked(path)
    assert str(path) in str(info.value)
    assert info.value.offset == offset
