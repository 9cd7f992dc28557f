"""Small files replaced atomically and verified on read.

The hard state and the snapshot are each one file that is replaced whole: a reader sees
the old file or the new one, never a mix (write a temporary, fsync, rename, fsync the
directory). Each carries a checksummed header, so bit rot or a foreign file is reported
as :class:`CorruptStorage` instead of being decoded into nonsense.

Format: magic ``RKVF`` | version u8 | crc32(payload) u32 | length u64 | payload.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from raft.storage.base import CorruptStorage
from raft.storage.fs import OS_FS, FileSystem

MAGIC = b"RKVF"
VERSION = 1
_HEADER = struct.Struct(">4sBIQ")
HEADER_SIZE = _HEADER.size
TMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes, fs: FileSystem = OS_FS) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    The temporary is fsynced before the rename (else the rename may reach the disk before
    the data, leaving an empty file), and the directory after it (else the rename itself
    may be lost).
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    f = fs.open_truncate(tmp)
    try:
        f.write(data)
        f.fsync()
    finally:
        f.close()
    fs.rename(tmp, path)
    fs.fsync_dir(path.parent)


def frame_checked(payload: bytes) -> bytes:
    """``payload`` behind the checksummed header."""
    return _HEADER.pack(MAGIC, VERSION, zlib.crc32(payload), len(payload)) + payload


def write_checked(path: Path, payload: bytes, fs: FileSystem = OS_FS) -> None:
    """Atomically replace ``path`` with a checksummed ``payload``."""
    atomic_write(path, frame_checked(payload), fs)


def unframe_checked(path: Path | str, data: bytes) -> bytes:
    """Inverse of :func:`frame_checked`; ``path`` only names the source in errors."""
    if len(data) < _HEADER.size:
        raise CorruptStorage(path, 0, f"file too short for a header ({len(data)} bytes)")
    magic, version, crc, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptStorage(path, 0, f"bad magic {magic!r}")
    if version != VERSION:
        raise CorruptStorage(path, 4, f"unsupported version {version}")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CorruptStorage(
            path, _HEADER.size, f"payload is {len(payload)} bytes, header says {length}"
        )
    if zlib.crc32(payload) != crc:
        raise CorruptStorage(path, _HEADER.size, "checksum mismatch")
    return payload


def read_checked(path: Path, fs: FileSystem = OS_FS) -> bytes:
    """The payload of a file written by :func:`write_checked`; raises CorruptStorage."""
    return unframe_checked(path, fs.read_bytes(path))
