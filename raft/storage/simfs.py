"""A simulated filesystem with the crash models the storage code must survive.

The simulator runs the real :class:`~raft.storage.disk.DiskStorage` over this, so what a
crash keeps is decided by what that code actually fsynced, not by a storage twin that is
more durable than a disk (FoundationDB's approach: swap only the lowest I/O layer).

Crash models (docs/ARCHITECTURE.md, "Durability"):

* **Process crash** (kill -9, OOM): the page cache survives, so nothing here changes;
  the caller just drops its storage object without closing it.
* **Power loss** (:meth:`SimFileSystem.power_loss`): a file keeps what a completed fsync
  covered; of what it received since, a prefix survives at page granularity (a random
  number of pages, in offset order, which for append-only files is write order), the
  first lost page possibly torn (garbage or zeros), a file that grew may keep its new
  length with the lost pages read back as zeros, one later page may have been written
  back while the ones before it were not (zeros between), and a truncation not followed
  by an fsync may be undone. A created, renamed or removed name is certain to survive
  only if its directory was fsynced afterwards; of the name operations not yet made
  durable, a random prefix (in the order they were made) survives, as a journal that
  commits in order, at any time, would keep.
* **Media corruption** (:meth:`SimFileSystem.corrupt`): a sector of durable data zeroed
  or bit-flipped, a separate fault that the storage must detect, never absorb.
* **Failing fsync** (:attr:`SimFileSystem.fail_fsync`): the next fsync raises EIO; the
  storage must stop (the page cache state after a failed fsync is unknown).
* **Crash points** (:attr:`SimFileSystem.crash_p`): after any write, fsync, rename or unlink,
  with that probability, :class:`SimulatedCrash` is raised out of the storage code, so
  crashes land *inside* storage operations (between a snapshot file's rename and the
  next log write, in the middle of recovery...), FoundationDB's buggify applied to
  the clock of the disk.

Paths are compared as strings; only absolute or consistently relative paths are used.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

from raft.storage.fs import FileHandle

PAGE = 4096
SECTOR = 512


class SimulatedCrash(Exception):
    """The machine dies at this point of a storage operation (a crash point)."""


_NameOp = tuple[str, str, str, "_Inode | None"]  # (kind, path, rename target, inode)


def _parent(p: str) -> str:
    return str(Path(p).parent)


class _Inode:
    """A file's content as processes see it (``data``) and as the medium holds it."""

    __slots__ = ("data", "dirty_from", "durable")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = bytearray()
        # Lowest offset changed since the last fsync, or None when data == durable.
        self.dirty_from: int | None = None

    def touch(self, offset: int) -> None:
        self.dirty_from = offset if self.dirty_from is None else min(self.dirty_from, offset)

    def fsync(self) -> None:
        lo = self.dirty_from
        if lo is None:
            return
        del self.durable[lo:]
        self.durable += self.data[lo:]
        self.dirty_from = None

    def lose_unsynced(self, rng: random.Random) -> None:
        lo = self.dirty_from
        if lo is None:
            return
        data = self.data
        if len(data) <= lo:  # only a truncation since the fsync: it may be lost
            if rng.random() < 0.5:
                self.durable = bytearray(data)
        else:
            page0 = lo - lo % PAGE
            pages = -(-(len(data) - page0) // PAGE)
            keep = rng.randint(0, pages)
            if keep == pages:  # every write since the fsync reached the medium
                self.durable = bytearray(data)
            else:
                self.durable = self._survivors(rng, lo, page0 + keep * PAGE if keep else lo)
        self.data = bytearray(self.durable)
        self.dirty_from = None

    def _survivors(self, rng: random.Random, lo: int, end: int) -> bytearray:
        """The medium after losing the writes past ``end`` (``lo`` <= ``end`` <
        len(data)): the first lost page may be torn, a grown file may keep its length
        with zeros, and (write-back is unordered) one later page may have made it."""
        data = self.data
        out = bytearray(self.durable)
        if len(out) < end:
            out.extend(bytes(end - len(out)))
        out[lo:end] = data[lo:end]
        roll = rng.random()
        if roll < 0.4:  # the first lost page is torn: part garbage or zeros
            n = rng.randint(1, min(PAGE, len(data) - end))
            junk = rng.randbytes(n) if rng.random() < 0.5 else bytes(n)
            if len(out) < end + n:
                out.extend(bytes(end + n - len(out)))
            out[end : end + n] = junk
        elif roll < 0.6 and len(out) < len(data):  # size updated, pages never written
            out.extend(bytes(len(data) - len(out)))
        elif roll < 0.75:  # a later page written back, the ones before it never were
            first = end - end % PAGE + PAGE
            if first < len(data):
                at = first + PAGE * rng.randrange(-(-(len(data) - first) // PAGE))
                stop = min(at + PAGE, len(data))
                if len(out) < stop:
                    out.extend(bytes(stop - len(out)))
                out[end:at] = bytes(at - end)
                out[at:stop] = data[at:stop]
        return out


class _SimFile:
    __slots__ = ("_fs", "_inode", "_open")

    def __init__(self, fs: SimFileSystem, inode: _Inode) -> None:
        self._fs = fs
        self._inode = inode
        self._open = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._open, "write to a closed file"
        ino = self._inode
        ino.touch(len(ino.data))
        ino.data += data
        self._fs.bytes_written += len(data)
        self._fs.crash_point()

    def fsync(self) -> None:
        assert self._open, "fsync of a closed file"
        self._fs.check_fsync()
        self._inode.fsync()
        self._fs.crash_point()

    def truncate(self, size: int) -> None:
        ino = self._inode
        if size < len(ino.data):
            ino.touch(size)
            del ino.data[size:]
        elif size > len(ino.data):
            ino.touch(len(ino.data))
            ino.data.extend(bytes(size - len(ino.data)))

    def close(self) -> None:
        self._open = False


class SimFileSystem:
    """One machine's disk. See the module docstring for the crash models."""

    def __init__(self, rng: random.Random | None = None, crash_p: float = 0.0) -> None:
        self.rng = rng or random.Random(0)
        self.crash_p = crash_p  # chance of a crash point after each fsync/rename/unlink
        # Crash at exactly the n-th coming crash point (scripted tests), if set.
        self.crash_countdown: int | None = None
        # name -> inode as processes see them, and as the directories' last fsync saw.
        self._files: dict[str, _Inode] = {}
        self._durable_files: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/", "."}
        self._durable_dirs: set[str] = {"/", "."}
        # Name operations not yet made durable by a directory fsync, in order: a power
        # loss keeps a random prefix of them (a journal commits in order, at any time).
        self._pending: list[_NameOp] = []
        self.fail_fsync = False  # the next fsync (file or directory) raises EIO
        self.fsyncs = 0
        self.bytes_written = 0

    # ---- FileSystem ----------------------------------------------------------------

    def exists(self, path: Path) -> bool:
        p = str(path)
        return p in self._files or p in self._dirs

    def is_dir(self, path: Path) -> bool:
        return str(path) in self._dirs

    def mkdir(self, path: Path) -> None:
        p = str(path)
        if p in self._dirs or p in self._files:
            raise FileExistsError(errno.EEXIST, "exists", p)
        if str(path.parent) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no parent directory", p)
        self._dirs.add(p)
        self._pending.append(("mkdir", p, "", None))

    def listdir(self, path: Path) -> list[str]:
        d = str(path)
        if d not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", d)
        names = [Path(p).name for p in self._files if _parent(p) == d]
        names += [Path(p).name for p in self._dirs if p != d and _parent(p) == d]
        return sorted(names)

    def read_bytes(self, path: Path) -> bytes:
        return bytes(self._inode(path).data)

    def open_append(self, path: Path, *, create: bool = False) -> FileHandle:
        p = str(path)
        if create:
            if p in self._files:
                raise FileExistsError(errno.EEXIST, "exists", p)
            self._check_parent(path)
            ino = self._files[p] = _Inode()
            self._pending.append(("create", p, "", ino))
        return _SimFile(self, self._inode(path))

    def open_truncate(self, path: Path) -> FileHandle:
        p = str(path)
        ino = self._files.get(p)
        if ino is None:
            self._check_parent(path)
            ino = self._files[p] = _Inode()
            self._pending.append(("create", p, "", ino))
        f = _SimFile(self, ino)
        f.truncate(0)
        return f

    def rename(self, src: Path, dst: Path) -> None:
        ino = self._inode(src)
        del self._files[str(src)]
        self._files[str(dst)] = ino
        self._pending.append(("rename", str(src), str(dst), ino))
        self.crash_point()

    def unlink(self, path: Path) -> None:
        self._inode(path)
        del self._files[str(path)]
        self._pending.append(("unlink", str(path), "", None))
        self.crash_point()

    def fsync_dir(self, path: Path) -> None:
        d = str(path)
        if d not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", d)
        self.check_fsync()
        keep = []
        for op in self._pending:
            if _parent(op[1]) == d or (op[2] and _parent(op[2]) == d):
                self._commit(op)
            else:
                keep.append(op)
        self._pending = keep
        self.crash_point()

    # ---- faults ------------------------------------------------------------------------

    def crash_point(self) -> None:
        if self.crash_countdown is not None:
            self.crash_countdown -= 1
            if self.crash_countdown <= 0:
                self.crash_countdown = None
                raise SimulatedCrash("scripted crash point")
        if self.crash_p and self.rng.random() < self.crash_p:
            raise SimulatedCrash("crash point")

    def check_fsync(self) -> None:
        self.fsyncs += 1
        if self.fail_fsync:
            self.fail_fsync = False
            raise OSError(errno.EIO, "injected fsync failure")

    def _commit(self, op: _NameOp) -> None:
        """Make one name operation durable."""
        kind, a, b, ino = op
        if kind == "mkdir":
            self._durable_dirs.add(a)
        elif kind == "create":
            assert ino is not None
            self._durable_files[a] = ino
        elif kind == "rename":
            assert ino is not None
            self._durable_files.pop(a, None)
            self._durable_files[b] = ino
        else:
            self._durable_files.pop(a, None)

    def power_loss(self, rng: random.Random) -> None:
        """The machine loses power: keep only what the crash model says survives."""
        for op in self._pending[: rng.randint(0, len(self._pending))]:
            self._commit(op)
        self._pending = []
        dirs = {d for d in self._durable_dirs if self._reachable(d, self._durable_dirs)}
        files = {p: ino for p, ino in sorted(self._durable_files.items()) if _parent(p) in dirs}
        seen: set[int] = set()
        for _, ino in sorted(files.items()):
            if id(ino) not in seen:
                seen.add(id(ino))
                ino.lose_unsynced(rng)
        self._files = dict(files)
        self._durable_files = dict(files)
        self._dirs = set(dirs)
        self._durable_dirs = set(dirs)

    def corrupt(self, path: Path, rng: random.Random, lo: int = 0, hi: int | None = None) -> int:
        """Damage durable data in ``[lo, hi)``: zero a whole sector inside it, or flip
        one bit. Returns the damaged offset, or -1 if nothing was damaged."""
        ino = self._inode(path)
        end = min(len(ino.durable), len(ino.data), hi if hi is not None else len(ino.data))
        if end <= lo:
            return -1
        off = rng.randrange(lo, end)
        start = off - off % SECTOR
        stop = min(start + SECTOR, len(ino.data))
        if rng.random() < 0.5 and start >= lo and stop <= end:  # a whole sector zeroed
            if not any(ino.data[start:stop]):
                return -1  # already zeros: nothing to damage
            for buf in (ino.data, ino.durable):
                buf[start:stop] = bytes(stop - start)
            return start
        bit = 1 << rng.randrange(8)
        for buf in (ino.data, ino.durable):
            buf[off] ^= bit
        return off

    def restore(self, path: Path, content: bytes) -> None:
        """Put durable ``content`` back (a repaired sector, for the simulator)."""
        ino = self._inode(path)
        ino.data = bytearray(content)
        ino.durable = bytearray(content)
        ino.dirty_from = None

    def size(self, path: Path) -> int:
        return len(self._inode(path).data)

    def durable_size(self, path: Path) -> int:
        """Bytes of ``path`` that a completed fsync covers (ignoring its directory)."""
        ino = self._inode(path)
        lo = ino.dirty_from
        return len(ino.data) if lo is None else min(lo, len(ino.durable))

    def files(self) -> list[str]:
        return sorted(self._files)

    # ---- helpers ---------------------------------------------------------------------

    def _inode(self, path: Path) -> _Inode:
        ino = self._files.get(str(path))
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        return ino

    def _check_parent(self, path: Path) -> None:
        if str(path.parent) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no parent directory", str(path))

    @staticmethod
    def _reachable(d: str, dirs: set[str]) -> bool:
        p = Path(d)
        while str(p) not in ("/", "."):
            if str(p) not in dirs:
                return False
            p = p.parent
        return True
