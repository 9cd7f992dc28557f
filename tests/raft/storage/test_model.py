"""Model-based test: DiskStorage must behave like MemoryStorage (the reference model)
under any sequence of saves, local snapshots, clean restarts and kill -9 (which, with
the page cache surviving, must lose nothing, synced or not)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from raft.storage import DiskStorage, MemoryStorage
from raft.types import Entry, HardState, Snapshot

from .helpers import snap

hard_states = st.none() | st.builds(
    HardState, st.integers(0, 5), st.sampled_from([None, "n1", "n2"]), st.integers(0, 50)
)


class StorageModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="raft-storage-model-"))
        self.segment_bytes = 120
        self.disk = DiskStorage(self.dir, self.segment_bytes)
        self.model = MemoryStorage()
        self.counter = 0

    def _entries(self, start: int, n: int, term: int) -> list[Entry]:
        self.counter += 1  # distinct data, so a resurrected stale entry is visible
        return [
            Entry(term, i, data=f"{self.counter}:{i}".encode()) for i in range(start, start + n)
        ]

    def _both(self, hs: HardState | None, es: list[Entry], sn: Snapshot | None, sync: bool) -> None:
        self.disk.save(hs, es, sn, sync)
        self.model.save(hs, es, sn, sync)

    @rule(
        hs=hard_states,
        at=st.integers(0, 10**6),
        n=st.integers(0, 8),
        term=st.integers(1, 5),
        sync=st.booleans(),
    )
    def save(self, hs: HardState | None, at: int, n: int, term: int, sync: bool) -> None:
        lo = self.model.load().snapshot.meta.index + 1
        start = lo + at % (self.model.last_index + 2 - lo)
        self._both(hs, self._entries(start, n, term), None, sync)

    @rule(
        at=st.integers(0, 10**6),
        match=st.booleans(),
        term=st.integers(1, 5),
        n=st.integers(0, 3),
        sync=st.booleans(),
    )
    def install_snapshot(self, at: int, match: bool, term: int, n: int, sync: bool) -> None:
        lo = self.model.load().snapshot.meta.index
        index = lo + at % (self.model.last_index + 4 - lo)
        stored = self.model.term(index)
        if match and stored is not None:
            term = stored
        sn = snap(index, term, f"image@{index}".encode())
        last = self.model.last_index if self.model.term(index) == term else index
        es = self._entries(index + 1 + at % (last - index + 1), n, term) if n else []
        self._both(None, es, sn, sync)

    @precondition(lambda self: self.model.last_index > self.model.load().snapshot.meta.index)
    @rule(at=st.integers(0, 10**6))
    def save_snapshot(self, at: int) -> None:
        lo = self.model.load().snapshot.meta.index
        index = lo + at % (self.model.last_index - lo + 1)
        term = self.model.term(index)
        assert term is not None
        sn = snap(index, term, f"local@{index}".encode())
        self.disk.save_snapshot(sn)
        self.model.save_snapshot(sn)

    @rule()
    def reopen(self) -> None:
        self.disk.close()
        self.model.close()
        self.disk = DiskStorage(self.dir, self.segment_bytes)

    @rule()
    def kill(self) -> None:
        self.disk.wal.close()  # the process dies: its descriptors close, nothing syncs
        self.disk = DiskStorage(self.dir, self.segment_bytes)

    @invariant()
    def same_state(self) -> None:
        assert self.disk.load() == self.model.load()
        assert self.disk.last_index == self.model.last_index

    def teardown(self) -> None:
        self.disk.close()
        reopened = DiskStorage(self.dir, self.segment_bytes)
        assert reopened.load() == self.model.load()
        reopened.close()
        shutil.rmtree(self.dir)


TestStorageModel = StorageModel.TestCase
TestStorageModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
