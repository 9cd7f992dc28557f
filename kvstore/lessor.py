"""When leases run out: decided by the leader alone, on its own monotonic clock.

Theory of operation (etcd's lessor; issue 9). The replicated state holds which leases
exist and their TTLs (kvstore/state_machine.py); *when* a lease runs out is not
replicated, because no clock is shared: wall clocks step and differ between machines,
and monotonic clocks of different processes are unrelated. So:

- Only the leader's lessor is *primary*; it holds a deadline per lease on its own
  monotonic clock. A follower's lessor holds none, and expires nothing.
- On becoming leader (:meth:`promote`) every lease restarts at its full TTL plus one
  election timeout: no lease ends because of an election, however long it took, or
  because the new leader's clock differs from the old one's.
- A keep-alive restarts a lease's TTL from now (:meth:`renew`). The server calls it
  only after a ReadIndex round has confirmed that this node still leads, so a deposed
  leader cannot acknowledge a keep-alive the new leader never sees: any leader elected
  later promotes after that confirmation, so its deadlines are later still.
- When a deadline passes, :meth:`due` hands the lease to the server, which proposes an
  ``ExpireLease`` command; the revocation is applied by the log, at the same index on
  every replica. A lease whose expiry has been proposed is *revoking*: a keep-alive of
  it is refused (etcd does the same), and the proposal is repeated after
  ``retry_s`` if it has not applied (a proposal lost in a leader change).

The bound this gives (and every test and checker uses): a lease is revoked no earlier
than (invoke of its last acknowledged keep-alive + TTL - the drift of the leader's clock,
at most 1% of TTL), and no later than that invoke + TTL + one TTL and one election
timeout per leader change + the time without a leader + one election timeout + the
server's tick and commit latency.

The lessor is told of grants and revocations as they are applied
(:class:`kvstore.state_machine.LeaseObserver`); it never reads the state machine.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

__all__ = ["Lessor"]


class Lessor:
    """Lease deadlines of one node: held while it leads, none otherwise.

    ``clock`` is a monotonic clock in seconds (time.monotonic, or a simulated clock);
    ``extend_s`` is added to every lease on promotion (one election timeout)."""

    def __init__(self, clock: Callable[[], float], extend_s: float, retry_s: float = 1.0) -> None:
        self._clock = clock
        self._extend_s = extend_s
        self._retry_s = retry_s
        self._ttl_ms: dict[int, int] = {}  # every lease the state machine has
        self._deadline: dict[int, float] = {}  # primary only: lease -> clock deadline
        self._heap: list[tuple[float, int]] = []  # (deadline, lease); stale rows skipped
        self._revoking: dict[int, float] = {}  # lease -> when its expiry was proposed
        self.promoted_term: int | None = None  # the leader term it is primary in

    # ---- told by the state machine (LeaseObserver) ----------------------------------

    def lease_granted(self, lease: int, ttl_ms: int) -> None:
        self._ttl_ms[lease] = ttl_ms
        if self.primary:
            self._set(lease, self._clock() + ttl_ms / 1000)

    def lease_revoked(self, lease: int) -> None:
        self._ttl_ms.pop(lease, None)
        self._deadline.pop(lease, None)
        self._revoking.pop(lease, None)

    def leases_restored(self, leases: list[tuple[int, int]]) -> None:
        self._ttl_ms = dict(leases)
        if self.promoted_term is not None:  # a leader restores no snapshot; but if:
            self.promote(self.promoted_term)  # restart them all

    @property
    def primary(self) -> bool:
        return self.promoted_term is not None

    # ---- leadership -------------------------------------------------------------------

    def promote(self, term: int) -> None:
        """This node became leader in ``term``: every lease gets its full TTL plus
        ``extend_s``."""
        self.promoted_term = term
        now = self._clock()
        self._deadline.clear()
        self._revoking.clear()
        self._heap = []
        for lease, ttl_ms in self._ttl_ms.items():
            self._set(lease, now + ttl_ms / 1000 + self._extend_s)

    def demote(self) -> None:
        """This node no longer leads: it expires nothing until promoted again."""
        self.promoted_term = None
        self._deadline.clear()
        self._revoking.clear()
        self._heap = []

    # ---- leader side ------------------------------------------------------------------

    def renew(self, lease: int) -> int | None:
        """Restart ``lease`` at its full TTL from now; its TTL in ms, or None if this
        node is not primary, or the lease is gone, revoking or already run out."""
        ttl_ms = self._ttl_ms.get(lease)
        if not self.primary or ttl_ms is None or lease in self._revoking:
            return None
        now = self._clock()
        if self._deadline[lease] <= now:
            return None  # run out: its expiry is due, not a renewal
        # A later deadline needs no new heap row: the earlier row left behind is
        # re-filed by due() when it comes up (no row per keep-alive, no growth under
        # spam). An earlier one (a renewal soon after a promotion's extension) does.
        deadline = now + ttl_ms / 1000
        if deadline < self._deadline[lease]:
            self._set(lease, deadline)
        else:
            self._deadline[lease] = deadline
        return ttl_ms

    def remaining_ms(self, lease: int) -> int | None:
        """Milliseconds left on ``lease`` by this leader's clock (None: not primary, or
        no such lease)."""
        if not self.primary or lease not in self._ttl_ms:
            return None
        if lease in self._revoking:
            return 0
        return max(0, int((self._deadline[lease] - self._clock()) * 1000))

    def due(self, limit: int = 1000) -> list[int]:
        """Leases run out whose expiry should be proposed now (at most ``limit``,
        earliest first), each marked revoking; a revoking lease is returned again once
        ``retry_s`` has passed without its revocation being applied."""
        if not self.primary:
            return []
        now = self._clock()
        out: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(out) < limit:
            deadline, lease = heapq.heappop(heap)
            current = self._deadline.get(lease)
            if current is None:
                continue  # revoked since
            if current > deadline:  # renewed since: file it at its deadline now
                heapq.heappush(heap, (current, lease))
                continue
            out.append(lease)
            self._revoking[lease] = now
            heapq.heappush(heap, (now + self._retry_s, lease))
            self._deadline[lease] = now + self._retry_s
        return out

    def _set(self, lease: int, deadline: float) -> None:
        self._deadline[lease] = deadline
        heapq.heappush(self._heap, (deadline, lease))
