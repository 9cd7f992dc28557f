"""Durable storage of one Raft node: a WAL, atomically replaced hard-state and snapshot
files (:class:`DiskStorage`), and an in-memory twin with a crash model
(:class:`MemoryStorage`) for the simulator and tests."""

from raft.storage.base import CorruptStorage, Storage, StorageError
from raft.storage.disk import DiskStorage
from raft.storage.files import atomic_write, read_checked, write_checked
from raft.storage.memory import MemoryStorage

__all__ = [
    "CorruptStorage",
    "DiskStorage",
    "MemoryStorage",
    "Storage",
    "StorageError",
    "atomic_write",
    "read_checked",
    "write_checked",
]
