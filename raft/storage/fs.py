"""The filesystem under the storage code, as a small interface.

Why an interface: the simulator must run the *real* storage code (WAL, hard state,
snapshot files) over a disk whose crash keeps only what was fsynced, as FoundationDB
does by swapping only the lowest I/O layer. :class:`OsFileSystem` is the real one;
:class:`raft.storage.simfs.SimFileSystem` applies the crash models. Every operation the
storage code performs on disk goes through here, so a forgotten ``fsync`` or directory
fsync in that code is visible to the simulator.

Paths are :class:`pathlib.Path`; the simulated filesystem compares them as strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class FileHandle(Protocol):
    """An open file, written at its end (appends) or from offset 0 after a truncate."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write everything (looping over short writes)."""
        ...

    def fsync(self) -> None:
        """Make the file's content durable (not its directory entry)."""
        ...

    def truncate(self, size: int) -> None: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    def exists(self, path: Path) -> bool: ...

    def is_dir(self, path: Path) -> bool: ...

    def mkdir(self, path: Path) -> None:
        """Create one directory (its parent must exist); durable only once the parent
        directory is fsynced."""
        ...

    def listdir(self, path: Path) -> list[str]: ...

    def read_bytes(self, path: Path) -> bytes: ...

    def open_append(self, path: Path, *, create: bool = False) -> FileHandle:
        """Open for appending; ``create`` makes a new file and fails if it exists."""
        ...

    def open_truncate(self, path: Path) -> FileHandle:
        """Create or truncate ``path`` and open it for writing."""
        ...

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically replace ``dst``; durable only once the directory is fsynced."""
        ...

    def unlink(self, path: Path) -> None: ...

    def fsync_dir(self, path: Path) -> None:
        """Make a directory's entries (created, renamed, removed names) durable."""
        ...


class _OsFile:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def fsync(self) -> None:
        os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        os.close(self._fd)


class OsFileSystem:
    """The real filesystem."""

    def exists(self, path: Path) -> bool:
        return path.exists()

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def open_append(self, path: Path, *, create: bool = False) -> FileHandle:
        flags = os.O_WRONLY | os.O_APPEND
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return _OsFile(os.open(path, flags, 0o644))

    def open_truncate(self, path: Path) -> FileHandle:
        return _OsFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink()

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OS_FS = OsFileSystem()


def make_dirs(path: Path, fs: FileSystem = OS_FS) -> None:
    """``mkdir -p`` that makes every directory it creates durable: each new directory's
    parent is fsynced after it is created (else a power loss may forget the directory,
    and with it every file in it that was fsynced)."""
    missing = []
    p = path
    while not fs.exists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        fs.mkdir(d)
        fs.fsync_dir(d.parent)
