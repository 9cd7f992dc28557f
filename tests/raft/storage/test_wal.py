from __future__ import annotations

from pathlib import Path

import pytest

from raft.storage import CorruptStorage
from raft.storage.wal import WAL, segment_name

from .helpers import ents, flip


def reopen(directory: Path, segment_bytes: int = 64 << 20) -> tuple[WAL, list[object]]:
    wal, log = WAL.open(directory, segment_bytes)
    return wal, list(log)


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def test_empty_directory_opens_empty(tmp_path: Path) -> None:
    wal, log = reopen(tmp_path)
    assert log == [] and wal.is_empty()
    wal.close()


def test_append_read_and_reopen(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.append(ents(1, 5, 1))
    wal.sync()
    assert wal.read() == ents(1, 5, 1)
    wal.close()
    assert reopen(tmp_path)[1] == ents(1, 5, 1)
    assert [p.name for p in segment_files(tmp_path)] == [segment_name(1, 1)]


def test_conflicting_append_replaces_suffix_on_replay(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.append(ents(1, 10, 1))
    wal.append(ents(6, 8, 2))
    assert wal.read() == ents(1, 5, 1) + ents(6, 8, 2)
    wal.close()
    assert reopen(tmp_path)[1] == ents(1, 5, 1) + ents(6, 8, 2)


def test_truncate_record_drops_suffix(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.append(ents(1, 10, 1))
    wal.truncate_from(4)
    wal.close()
    assert reopen(tmp_path)[1] == ents(1, 3, 1)


def test_rotation_orders_segments_by_sequence_not_index(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.append(ents(1, 20, 1))
    wal.append(ents(3, 6, 2))  # a later segment may start below an earlier one
    wal.close()
    files = segment_files(tmp_path)
    assert len(files) > 3
    assert all(p.stat().st_size <= 100 for p in files)
    wal, log = reopen(tmp_path, segment_bytes=100)
    assert log == ents(1, 2, 1) + ents(3, 6, 2)
    wal.append(ents(7, 30, 3))
    wal.close()
    assert reopen(tmp_path)[1] == ents(1, 2, 1) + ents(3, 6, 2) + ents(7, 30, 3)


def _written(tmp_path: Path, n: int = 10) -> Path:
    wal, _ = reopen(tmp_path)
    wal.append(ents(1, n, 1))
    wal.close()
    [path] = segment_files(tmp_path)
    return path


@pytest.mark.parametrize(
    "tear",
    [
        lambda data: data[:-3],  # partial payload
        lambda data: data[:-20],  # a whole record and part of the one before
        lambda data: data[:-3] + b"\xde\xad\xbe\xef garbage",
        lambda data: data + b"\x00" * 4096,  # size extended, data never written
        lambda data: data + b"\x07\x00\x00\x00\x05",  # half a header
    ],
)
def test_torn_tail_is_truncated_and_appends_continue(tmp_path: Path, tear: object) -> None:
    path = _written(tmp_path)
    good = path.read_bytes()
    path.write_bytes(tear(good))  # type: ignore[operator]
    wal, log = reopen(tmp_path)
    assert len(log) >= 8 and log == ents(1, len(log), 1)
    assert wal.truncated_tail is not None and wal.truncated_tail[0] == path
    wal.append(ents(len(log) + 1, 12, 2))
    wal.close()
    assert reopen(tmp_path)[1] == log + ents(len(log) + 1, 12, 2)


def test_unwritten_page_inside_unsynced_batch_is_a_tear(tmp_path: Path) -> None:
    """Page write-back is unordered: a zero sector followed by valid records is what a
    crash before fsync leaves, not corruption."""
    wal, _ = reopen(tmp_path)
    wal.append(ents(1, 200, 1))
    wal.close()
    [path] = segment_files(tmp_path)
    data = bytearray(path.read_bytes())
    data[1024:1536] = bytes(512)
    path.write_bytes(bytes(data))
    wal, log = reopen(tmp_path)
    assert 0 < len(log) < 200 and log == ents(1, len(log), 1)
    wal.close()


def test_bit_rot_before_valid_records_raises(tmp_path: Path) -> None:
    path = _written(tmp_path)
    flip(path, 12)  # payload of the first record
    with pytest.raises(CorruptStorage) as info:
        reopen(tmp_path)
    assert info.value.path == str(path) and info.value.offset == 0
    assert path.name in str(info.value)


def test_bit_rot_in_length_field_raises(tmp_path: Path) -> None:
    path = _written(tmp_path)
    flip(path, 5)  # the first record's length now points past the end of the file
    with pytest.raises(CorruptStorage):
        reopen(tmp_path)


def test_damage_in_non_last_segment_raises_even_at_its_end(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.append(ents(1, 20, 1))
    wal.close()
    first = segment_files(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(CorruptStorage) as info:
        reopen(tmp_path)
    assert info.value.path == str(first)


def test_missing_middle_segment_raises(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.append(ents(1, 20, 1))
    wal.close()
    segment_files(tmp_path)[1].unlink()
    with pytest.raises(CorruptStorage, match="missing"):
        reopen(tmp_path)


def test_compact_deletes_only_a_covered_prefix(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.append(ents(1, 20, 1))
    before = [s.max_index for s in wal.segments]
    wal.compact(10)
    after = wal.segments
    assert after[0].max_index > 10
    assert len(before) - len(after) == sum(1 for m in before if m <= 10)
    assert wal.read()[-1] == ents(20, 20, 1)[0]
    wal.compact(1000)
    assert len(wal.segments) == 1  # the segment being appended to stays
    wal.close()
