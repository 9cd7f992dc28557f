"""Write-ahead log: append-only segment files of checksummed records.

Theory of operation
-------------------
A segment is ``wal-<seq:016x>-<first_index:016x>.log``. The sequence number orders
segments; the first index (of the entry that opened the segment) is for operators. The
first index alone cannot order them: after a conflict a later segment may start below an
earlier one, or at the same index.

A record is ``crc32(type + payload) u32 | len(payload) u32 | type u8 | payload`` (little
endian). ``ENTRY`` records carry an encoded :class:`Entry`; ``TRUNCATE`` records carry an
index and drop every entry at or after it. Files are never rewritten in place: replaying
records in order, an entry with index ``i`` drops every earlier entry with index >= i
(Raft's conflict truncation, as in etcd), and an entry after a hole starts the log anew
(the hole is covered by a snapshot the caller stored first).

Recovery: a crash can only damage what was written after the last fsync, which is the
end of the last segment (a segment is fsynced before the next one is created). So a bad
record there is a torn write and is truncated away, unless a valid record follows it,
which a tear cannot explain -- with one exception: an all-zero 512-byte sector in between
is a page the kernel never wrote back, a tear too (etcd's heuristic). Any other bad record
is corruption and raises :class:`CorruptStorage`: truncating it would silently lose
entries this node may have acknowledged.

Compaction deletes the oldest segments while every entry in them is covered by the
snapshot; deleting only a prefix keeps replay of the rest unchanged above that index.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raft.codec import decode_entry, encode_entry
from raft.errors import CodecError
from raft.storage.base import CorruptStorage
from raft.storage.files import fsync_dir, write_all
from raft.types import Entry, Index

_log = logging.getLogger(__name__)

ENTRY = 1
TRUNCATE = 2
_HEADER = struct.Struct("<IIB")
_TRUNCATE = struct.Struct("<Q")
_SEGMENT = re.compile(r"wal-([0-9a-f]{16})-([0-9a-f]{16})\.log")
_TYPE_BYTE = re.compile(rb"[\x01\x02]")
_SECTOR = 512
_ZERO_SECTOR = bytes(_SECTOR)


def segment_name(seq: int, first_index: Index) -> str:
    return f"wal-{seq:016x}-{first_index:016x}.log"


@dataclass(slots=True)
class Segment:
    seq: int
    first_index: Index
    path: Path
    size: int = 0
    # Highest entry index recorded in this segment; 0 when it holds no entry.
    max_index: Index = 0


def _crc(rtype: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((rtype,))))


def _record(rtype: int, payload: bytes) -> bytes:
    return _HEADER.pack(_crc(rtype, payload), len(payload), rtype) + payload


def _parse(data: bytes, off: int) -> tuple[int, bytes, int] | None:
    """``(type, payload, next offset)`` of a valid record at ``off``, else None."""
    body = off + _HEADER.size
    if body > len(data):
        return None
    crc, length, rtype = _HEADER.unpack_from(data, off)
    if rtype not in (ENTRY, TRUNCATE) or body + length > len(data):
        return None
    payload = data[body : body + length]
    if _crc(rtype, payload) != crc:
        return None
    return rtype, payload, body + length


def _next_valid(data: bytes, start: int) -> int | None:
    """Offset of the first valid record at or after ``start`` (a byte-by-byte resync)."""
    for m in _TYPE_BYTE.finditer(data, start + _HEADER.size - 1):
        off = m.start() - (_HEADER.size - 1)
        if _parse(data, off) is not None:
            return off
    return None


def _has_zero_sector(data: bytes, lo: int, hi: int) -> bool:
    off = -(-lo // _SECTOR) * _SECTOR
    while off + _SECTOR <= hi:
        if data[off : off + _SECTOR] == _ZERO_SECTOR:
            return True
        off += _SECTOR
    return False


def _is_torn(data: bytes, off: int) -> bool:
    nxt = _next_valid(data, off + 1)
    return nxt is None or _has_zero_sector(data, off, nxt)


class _Replay:
    """The log as replay has rebuilt it so far: contiguous, possibly empty."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def truncate(self, index: Index) -> None:
        if self.entries:
            del self.entries[max(0, index - self.entries[0].index) :]

    def append(self, e: Entry) -> None:
        if self.entries:
            first, last = self.entries[0].index, self.entries[-1].index
            if e.index <= last:
                del self.entries[max(0, e.index - first) :]
            elif e.index > last + 1:
                self.entries.clear()
        self.entries.append(e)


def _scan(seg: Segment, data: bytes, log: _Replay, tail_may_tear: bool) -> int:
    """Replay one segment into ``log``; return the length of its valid prefix."""
    off = 0
    while off < len(data):
        rec = _parse(data, off)
        if rec is None:
            if tail_may_tear and _is_torn(data, off):
                return off
            raise CorruptStorage(seg.path, off, "bad record (checksum, length or type)")
        rtype, payload, nxt = rec
        try:
            if rtype == ENTRY:
                e = decode_entry(payload)
                if e.index < 1:
                    raise CodecError(f"entry index {e.index}")
                log.append(e)
                seg.max_index = max(seg.max_index, e.index)
            else:
                (index,) = _TRUNCATE.unpack(payload)
                log.truncate(index)
        except (CodecError, struct.error) as exc:
            raise CorruptStorage(seg.path, off, f"undecodable record: {exc}") from exc
        off = nxt
    return off


def _list_segments(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.iterdir():
        m = _SEGMENT.fullmatch(path.name)
        if m:
            segments.append(Segment(int(m[1], 16), int(m[2], 16), path))
    segments.sort(key=lambda s: s.seq)
    for prev, seg in itertools.pairwise(segments):
        if seg.seq != prev.seq + 1:
            raise CorruptStorage(seg.path, 0, f"segment {prev.seq + 1:016x} is missing")
    return segments


class WAL:
    """The log files of one node. Writes go straight to the OS; :meth:`sync` fsyncs."""

    def __init__(self, directory: Path, segment_bytes: int, segments: list[Segment]) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._segments = segments
        self._fd: int | None = None
        self._dirty = False
        # (path, offset, bytes removed) if open() cut a torn tail; for operators' logs.
        self.truncated_tail: tuple[Path, int, int] | None = None
        if segments:
            self._fd = os.open(segments[-1].path, os.O_WRONLY | os.O_APPEND)

    @classmethod
    def open(cls, directory: Path, segment_bytes: int = 64 << 20) -> tuple[WAL, list[Entry]]:
        """Recover the log in ``directory`` (cutting a torn tail) and open it for appends."""
        segments = _list_segments(directory)
        log = _Replay()
        torn: tuple[Path, int, int] | None = None
        for seg in segments:
            data = seg.path.read_bytes()
            seg.size = _scan(seg, data, log, tail_may_tear=seg is segments[-1])
            if seg.size < len(data):
                torn = (seg.path, seg.size, len(data) - seg.size)
                with open(seg.path, "r+b") as f:
                    f.truncate(seg.size)
                    f.flush()
                    os.fsync(f.fileno())
        if torn is not None:
            # Expected after a crash mid-write (the record was never acknowledged), but
            # an operator should be able to see that it happened and how much was cut.
            _log.warning("%s: cut a torn tail of %d bytes at offset %d", torn[0], torn[2], torn[1])
        wal = cls(directory, segment_bytes, segments)
        wal.truncated_tail = torn
        return wal, log.entries

    def read(self) -> list[Entry]:
        """Replay every segment; after :meth:`open` any bad record is corruption."""
        log = _Replay()
        for seg in self._segments:
            _scan(seg, seg.path.read_bytes(), log, tail_may_tear=False)
        return log.entries

    def is_empty(self) -> bool:
        return all(seg.size == 0 for seg in self._segments)

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries``; stored entries at or after ``entries[0].index`` are replaced."""
        buf = bytearray()
        for e in entries:
            rec = _record(ENTRY, encode_entry(e))
            self._make_room(buf, len(rec), e.index)
            buf += rec
            seg = self._segments[-1]
            seg.max_index = max(seg.max_index, e.index)
        self._write(buf)

    def truncate_from(self, index: Index) -> None:
        """Drop every stored entry with index >= ``index``."""
        if not self._segments:
            return
        buf = bytearray()
        rec = _record(TRUNCATE, _TRUNCATE.pack(index))
        self._make_room(buf, len(rec), index)
        self._write(buf + rec)

    def sync(self) -> None:
        """fsync what was written since the last sync: one fsync per batch."""
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False

    def compact(self, index: Index) -> None:
        """Delete the oldest segments whose entries are all at or below ``index``.

        Oldest first, fsyncing the directory after each, so a crash leaves a contiguous
        run of segments. The segment being appended to is never deleted.
        """
        while len(self._segments) > 1 and self._segments[0].max_index <= index:
            self._segments.pop(0).path.unlink()
            fsync_dir(self._dir)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    def _make_room(self, buf: bytearray, size: int, first_index: Index) -> None:
        """Start a new segment if ``size`` more bytes would overflow the current one."""
        if self._segments:
            used = self._segments[-1].size + len(buf)
            if used == 0 or used + size <= self._segment_bytes:
                return
        self._write(buf)
        buf.clear()
        self._rotate(first_index)

    def _write(self, buf: bytes | bytearray) -> None:
        if buf:
            assert self._fd is not None
            write_all(self._fd, buf)
            self._segments[-1].size += len(buf)
            self._dirty = True

    def _rotate(self, first_index: Index) -> None:
        # Recovery treats any bad record in a non-last segment as corruption, so the
        # current segment must be complete on disk before a later one can exist.
        self.sync()
        self.close()
        seq = self._segments[-1].seq + 1 if self._segments else 1
        path = self._dir / segment_name(seq, first_index)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fsync_dir(self._dir)
        self._segments.append(Segment(seq, first_index, path))
