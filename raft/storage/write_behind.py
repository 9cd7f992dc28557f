"""WriteBehindStorage: a deliberately UNSAFE storage wrapper, for the harness's self-test.

It acknowledges every save at once but hands it to the real storage only every
``delay_s`` seconds, like a disk cache that lies about fsync. A node running on it
answers votes and appends, and acknowledges client writes, for data that a kill -9
erases. The fault-injection harness must catch this ("lost acknowledged writes after
kill-all") before anyone trusts its verdicts; nothing else may use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from raft.core.ready import Restored
from raft.storage.base import Storage
from raft.types import Entry, HardState, Snapshot


class WriteBehindStorage:
    """Buffers saves in memory and flushes them, in order, at most every ``delay_s``."""

    def __init__(
        self, inner: Storage, delay_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self._clock = clock
        self._pending: list[tuple[HardState | None, tuple[Entry, ...], Snapshot | None]] = []
        self._last_flush = clock()

    def load(self) -> Restored:
        self._flush()
        return self._inner.load()

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        self._pending.append((hard_state, tuple(entries), snapshot))
        if self._clock() - self._last_flush >= self._delay_s:
            self._flush()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._flush()
        self._inner.save_snapshot(snapshot)

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for hard_state, entries, snapshot in pending:
            self._inner.save(hard_state, entries, snapshot, sync=True)
        self._last_flush = self._clock()
