"""Write-ahead log: append-only segment files of checksummed records.

Theory of operation
-------------------
A segment is ``wal-<seq:016x>-<first_index:016x>.log``. The sequence number orders
segments; the first index (of the entry that opened the segment) is for operators. The
first index alone cannot order them: after a conflict a later segment may start below an
earlier one, or at the same index.

A record is ``crc32(type + payload) u32 | len(payload) u32 | type u8 | payload`` (little
endian), of four types:

* ``ENTRY``: an encoded :class:`Entry`. Replaying in order, an entry with index ``i``
  drops every earlier entry with index >= i (Raft's conflict truncation, as in etcd),
  and an entry after a hole starts the log anew (the hole is covered by a snapshot the
  caller stored first). Files are never rewritten in place.
* ``TRUNCATE``: an index; drops every entry at or after it.
* ``STATE``: the hard state (term, vote, commit), written in the same batch as the
  entries it covers, so one fsync makes both durable (etcd's HardState record) and a
  restarted node applies -- and adopts the membership of -- everything it had
  committed. The last one replayed wins.
* ``SYNCED``: an offset in this segment below which every byte was fsynced. It is
  written right after each fsync (without one of its own: the next batch's fsync covers
  it), so the disk itself records which region is known durable.

Every segment opens with a ``SYNCED`` mark of 0 (it claims nothing, but says that this
segment's marks are authoritative) and, once one exists, a ``STATE``, so compaction,
which deletes only older segments, never deletes the newest hard state.

Recovery: a power loss can only damage what was written after the last fsync, which is
the end of the last segment (a segment is fsynced before the next one is created). A
bad record in the last segment at or after its highest mark is a torn write and is cut
away, with whatever follows it (write-back is unordered, so valid records may follow a
lost page; none of it was acknowledged as durable). Any other bad record -- in
particular one below a mark, i.e. in fsynced data -- is corruption and raises
:class:`CorruptStorage`: truncating it would silently lose entries this node may have
acknowledged. Segments without marks (format 1) keep the older rule: a tear is a bad
record that no valid record follows, unless an all-zero 512-byte sector lies between
(a page the kernel never wrote back; etcd's heuristic). Known limit: the batch fsynced
last before a power loss may have lost its mark, and media corruption there looks like a
tear (docs/ARCHITECTURE.md).

Opening fsyncs the last segment even when nothing was cut: after a process crash the
unsynced tail is still in the page cache, and the restarted node treats everything it
reads as durable (it will acknowledge those entries), so it must become durable first.

Compaction deletes the oldest segments while every entry in them is covered by the
snapshot; deleting only a prefix keeps replay of the rest unchanged above that index.
The deletions are made durable by the next directory fsync (a segment rotation): one
that a power loss undoes brings back a segment wholly under the durable snapshot, which
replay skips, and the next compaction deletes again.
"""

from __future__ import annotations

import itertools
import logging
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raft.codec import decode_entry, decode_hard_state, encode_entry, encode_hard_state
from raft.errors import CodecError
from raft.storage.base import CorruptStorage
from raft.storage.fs import OS_FS, FileHandle, FileSystem
from raft.types import Entry, HardState, Index

_log = logging.getLogger(__name__)

ENTRY = 1
TRUNCATE = 2
STATE = 3
SYNCED = 4
_TYPES = (ENTRY, TRUNCATE, STATE, SYNCED)
_HEADER = struct.Struct("<IIB")
_U64 = struct.Struct("<Q")
_SEGMENT = re.compile(r"wal-([0-9a-f]{16})-([0-9a-f]{16})\.log")
_TYPE_BYTE = re.compile(rb"[\x01-\x04]")
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
    # Holds a STATE record (the newest hard state must always be in the last segment,
    # so that compaction, which deletes only older segments, cannot lose it).
    has_state: bool = False
    # Bytes of the records a segment opens with (its first mark and hard state).
    opening: int = 0


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
    if rtype not in _TYPES or body + length > len(data):
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


def _mark(rtype: int, payload: bytes, off: int) -> int:
    """The offset a valid SYNCED record at ``off`` proves durable; -1 for any other."""
    if rtype != SYNCED or len(payload) != _U64.size:
        return -1
    (mark,) = _U64.unpack(payload)
    return mark if mark <= off else -1


def _mark_after(data: bytes, off: int) -> int:
    """The highest SYNCED mark among the valid records after a bad one at ``off``."""
    best = -1
    nxt = _next_valid(data, off + 1)
    while nxt is not None:
        rec = _parse(data, nxt)
        if rec is None:  # another bad record: resync past it
            nxt = _next_valid(data, nxt + 1)
            continue
        rtype, payload, end = rec
        best = max(best, _mark(rtype, payload, nxt))
        nxt = end if end < len(data) else None
    return best


def _durable_mark(replayed: int, data: bytes, off: int) -> int:
    """Where the region known durable ends, for a bad record at ``off``: the highest
    SYNCED mark before it (``replayed``) or after it; -1 if the segment has no mark at
    all (format 1, or a segment torn before its opening mark)."""
    return max(replayed, _mark_after(data, off))


def proven_durable(data: bytes) -> int:
    """How much of a segment its own SYNCED marks prove fsynced (for fault injection:
    damage below it must be reported as corruption)."""
    off = best = 0
    while (rec := _parse(data, off)) is not None:
        rtype, payload, end = rec
        best = max(best, _mark(rtype, payload, off))
        off = end
    return best


class _Replay:
    """The log as replay has rebuilt it so far: contiguous, possibly empty."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.state: HardState | None = None

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

    @property
    def last_index(self) -> Index:
        return self.entries[-1].index if self.entries else 0


def _apply_record(seg: Segment, log: _Replay, rtype: int, payload: bytes, off: int) -> None:
    if rtype == ENTRY:
        e = decode_entry(payload)
        if e.index < 1:
            raise CodecError(f"entry index {e.index}")
        log.append(e)
        seg.max_index = max(seg.max_index, e.index)
    elif rtype == TRUNCATE:
        (index,) = _U64.unpack(payload)
        log.truncate(index)
    elif rtype == STATE:
        log.state = decode_hard_state(payload)
        seg.has_state = True
    else:
        (mark,) = _U64.unpack(payload)
        if mark > off:
            raise CodecError(f"SYNCED mark {mark} past its own offset {off}")


def _scan(seg: Segment, data: bytes, log: _Replay, tail_may_tear: bool) -> int:
    """Replay one segment into ``log``; return the length of its valid prefix."""
    off = 0
    durable = -1  # the highest SYNCED mark replayed so far (-1: none yet)
    while off < len(data):
        rec = _parse(data, off)
        if rec is None:
            if tail_may_tear:
                mark = _durable_mark(durable, data, off)
                # With marks, everything after the highest one may tear; without any
                # (format 1), only what no valid record follows (or a zero sector).
                if off >= mark >= 0 or (mark < 0 and _is_torn(data, off)):
                    return off
                if off < mark:
                    raise CorruptStorage(
                        seg.path, off, f"bad record in data fsynced before (durable to {mark})"
                    )
            raise CorruptStorage(seg.path, off, "bad record (checksum, length or type)")
        rtype, payload, nxt = rec
        try:
            _apply_record(seg, log, rtype, payload, off)
        except (CodecError, struct.error) as exc:
            raise CorruptStorage(seg.path, off, f"undecodable record: {exc}") from exc
        durable = max(durable, _mark(rtype, payload, off))
        off = nxt
    return off


def _list_segments(fs: FileSystem, directory: Path) -> list[Segment]:
    segments = []
    for name in fs.listdir(directory):
        m = _SEGMENT.fullmatch(name)
        if m:
            segments.append(Segment(int(m[1], 16), int(m[2], 16), directory / name))
    segments.sort(key=lambda s: s.seq)
    for prev, seg in itertools.pairwise(segments):
        if seg.seq != prev.seq + 1:
            raise CorruptStorage(seg.path, 0, f"segment {prev.seq + 1:016x} is missing")
    return segments


class WAL:
    """The log files of one node. Writes go straight to the OS; :meth:`sync` fsyncs."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        segments: list[Segment],
        fs: FileSystem = OS_FS,
        state: HardState | None = None,
        last_index: Index = 0,
    ) -> None:
        self._fs = fs
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._segments = segments
        self._file: FileHandle | None = None
        self._dirty = False
        # The newest hard state written (or replayed): it opens every new segment.
        self.state = state
        self._last_index = last_index
        # (path, offset, bytes removed) if open() cut a torn tail; for operators' logs.
        self.truncated_tail: tuple[Path, int, int] | None = None
        if segments:
            self._file = fs.open_append(segments[-1].path)

    @classmethod
    def open(
        cls, directory: Path, segment_bytes: int = 64 << 20, fs: FileSystem = OS_FS
    ) -> tuple[WAL, list[Entry]]:
        """Recover the log in ``directory`` (cutting a torn tail), make what it holds
        durable, and open it for appends. The replayed hard state is ``wal.state``."""
        segments = _list_segments(fs, directory)
        log = _Replay()
        torn: tuple[Path, int, int] | None = None
        for seg in segments:
            data = fs.read_bytes(seg.path)
            seg.size = _scan(seg, data, log, tail_may_tear=seg is segments[-1])
            if seg.size < len(data):
                torn = (seg.path, seg.size, len(data) - seg.size)
        wal = cls(directory, segment_bytes, segments, fs, log.state, log.last_index)
        if torn is not None:
            # Expected after a crash mid-write (the record was never acknowledged), but
            # an operator should be able to see that it happened and how much was cut.
            _log.warning("%s: cut a torn tail of %d bytes at offset %d", torn[0], torn[2], torn[1])
            assert wal._file is not None
            wal._file.truncate(torn[1])
        wal.truncated_tail = torn
        if log.state is not None and segments and not segments[-1].has_state:
            # A segment rotated in just before a crash may have lost its opening STATE
            # record (or been cut to nothing): restore the invariant before compaction
            # can delete the segment that holds it.
            wal.append((), log.state)
        wal._sync_recovered()
        return wal, log.entries

    def _sync_recovered(self) -> None:
        """What replay read is treated as durable from now on, so make it so."""
        if self._file is not None:
            self._dirty = True
            self.sync()

    def read(self) -> list[Entry]:
        """Replay every segment; after :meth:`open` any bad record is corruption."""
        log = _Replay()
        for seg in self._segments:
            _scan(seg, self._fs.read_bytes(seg.path), log, tail_may_tear=False)
        return log.entries

    def is_empty(self) -> bool:
        return all(seg.size == 0 for seg in self._segments)

    def append(self, entries: Sequence[Entry], state: HardState | None = None) -> None:
        """Write ``entries`` (stored entries at or after ``entries[0].index`` are
        replaced), then ``state``, in one write."""
        buf = bytearray()
        for e in entries:
            rec = _record(ENTRY, encode_entry(e))
            self._make_room(buf, len(rec), e.index)
            buf += rec
            seg = self._segments[-1]
            seg.max_index = max(seg.max_index, e.index)
            self._last_index = e.index
        if state is not None:
            rec = _record(STATE, encode_hard_state(state))
            self._make_room(buf, len(rec), self._last_index + 1)
            buf += rec
            self.state = state
        self._write(buf)
        if state is not None:
            self._segments[-1].has_state = True

    def truncate_from(self, index: Index) -> None:
        """Drop every stored entry with index >= ``index``."""
        if not self._segments:
            return
        buf = bytearray()
        rec = _record(TRUNCATE, _U64.pack(index))
        self._make_room(buf, len(rec), index)
        self._write(buf + rec)
        self._last_index = min(self._last_index, index - 1)

    def sync(self) -> None:
        """fsync what was written since the last sync (one fsync per batch), then record
        on disk that it is durable (a SYNCED mark, itself covered by the next fsync)."""
        if not self._dirty or self._file is None:
            return
        self._file.fsync()
        self._dirty = False
        seg = self._segments[-1]
        mark = _record(SYNCED, _U64.pack(seg.size))
        self._file.write(mark)
        seg.size += len(mark)

    def compact(self, index: Index) -> None:
        """Delete the oldest segments whose entries are all at or below ``index``,
        oldest first. The segment being appended to is never deleted. (No directory
        fsync: see the module docstring.)"""
        if self.state is not None and self._segments and not self._segments[-1].has_state:
            self.append((), self.state)  # never delete the only copy of the hard state
        while len(self._segments) > 1 and self._segments[0].max_index <= index:
            self._fs.unlink(self._segments.pop(0).path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    def _make_room(self, buf: bytearray, size: int, first_index: Index) -> None:
        """Start a new segment if ``size`` more bytes would overflow the current one."""
        if self._segments:
            seg = self._segments[-1]
            used = seg.size + len(buf)
            # A segment holding only its opening records takes any record, however big.
            if used <= seg.opening or used + size <= self._segment_bytes:
                return
        self._write(buf)
        buf.clear()
        self._rotate(first_index)
        seg = self._segments[-1]
        if self.state is not None:
            buf += _record(STATE, encode_hard_state(self.state))
            seg.has_state = True  # written with this buffer
        seg.opening = seg.size + len(buf)

    def _write(self, buf: bytes | bytearray) -> None:
        if buf:
            assert self._file is not None
            self._file.write(buf)
            self._segments[-1].size += len(buf)
            self._dirty = True

    def _rotate(self, first_index: Index) -> None:
        # Recovery treats any bad record in a non-last segment as corruption, so the
        # current segment must be complete on disk before a later one can exist (and
        # gets no SYNCED mark, which would be written after that fsync).
        if self._file is not None:
            self._file.fsync()  # also covers the last SYNCED mark
            self._dirty = False
        self.close()
        seq = self._segments[-1].seq + 1 if self._segments else 1
        path = self._dir / segment_name(seq, first_index)
        self._file = self._fs.open_append(path, create=True)
        self._fs.fsync_dir(self._dir)
        seg = Segment(seq, first_index, path)
        self._segments.append(seg)
        # A mark claiming nothing: this segment's marks are authoritative (format 2).
        mark = _record(SYNCED, _U64.pack(0))
        self._file.write(mark)
        seg.size += len(mark)
        self._dirty = True
