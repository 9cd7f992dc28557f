"""A seeded, lossy, partitionable network that carries only bytes.

Every message is encoded with the real codec when sent and decoded when delivered,
so the simulator exercises the exact wire format the runtime uses and a codec bug
shows up as a failed run. Independent random delays reorder messages; drops,
duplicates and occasional long delays model a bad network. Partitions are sets of
directed link cuts, so symmetric splits, an isolated node and a one-way link are all
the same mechanism. A cut is checked both when a message is sent and when it would
be delivered: nothing crosses a link while it is cut.

The network holds no queue: it tells the cluster when (if ever) each copy of a
message arrives, and the cluster's event queue does the rest.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from raft.codec import decode_message, encode_message
from raft.messages import Message
from raft.types import NodeId

Link = tuple[NodeId, NodeId]


@dataclass(slots=True)
class NetConfig:
    """Per-run network behaviour. Delays are virtual milliseconds."""

    min_delay: int = 1
    max_delay: int = 30
    long_delay_p: float = 0.01
    long_delay_max: int = 500
    drop_p: float = 0.0
    dup_p: float = 0.0


class Network:
    """Decides the fate of each message; owns the partition state."""

    def __init__(self, rng: random.Random, config: NetConfig) -> None:
        self._rng = rng
        self.config = config
        self._partitions: dict[int, frozenset[Link]] = {}
        self._next_partition = 1
        self.cut_links: frozenset[Link] = frozenset()
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0
        self.delivered = 0

    # ---- sending and delivering ------------------------------------------------

    def transmit(self, msg: Message) -> tuple[bytes, list[int]]:
        """Encode ``msg`` and pick a delay for each copy that will travel (none if
        the message is dropped or its link is cut)."""
        payload = encode_message(msg)
        self.sent += 1
        cfg = self.config
        rng = self._rng
        if (msg.src, msg.dst) in self.cut_links or (cfg.drop_p and rng.random() < cfg.drop_p):
            self.dropped += 1
            return payload, []
        copies = 1
        if cfg.dup_p and rng.random() < cfg.dup_p:
            copies = 2
            self.duplicated += 1
        delays = []
        for _ in range(copies):
            if rng.random() < cfg.long_delay_p:
                delays.append(rng.randint(cfg.max_delay, cfg.long_delay_max))
            else:
                delays.append(rng.randint(cfg.min_delay, cfg.max_delay))
        return payload, delays

    def receive(self, src: NodeId, dst: NodeId, payload: bytes) -> Message | None:
        """The message arriving at ``dst``, or None if the link is cut right now."""
        if (src, dst) in self.cut_links:
            self.dropped += 1
            return None
        self.delivered += 1
        return decode_message(payload)

    # ---- partitions ----------------------------------------------------------

    def add_partition(self, links: Iterable[Link]) -> int:
        """Cut ``links`` (directed) until :meth:`heal` with the returned id."""
        pid = self._next_partition
        self._next_partition += 1
        self._partitions[pid] = frozenset(links)
        self._recompute()
        return pid

    def split(self, groups: Iterable[Iterable[NodeId]]) -> int:
        """Cut every link between different groups, in both directions."""
        sets = [sorted(g) for g in groups]
        links = [
            (a, b)
            for i, ga in enumerate(sets)
            for j, gb in enumerate(sets)
            if i != j
            for a in ga
            for b in gb
        ]
        return self.add_partition(links)

    def heal(self, pid: int | None = None) -> None:
        """Remove one partition, or all of them."""
        if pid is None:
            self._partitions.clear()
        else:
            self._partitions.pop(pid, None)
        self._recompute()

    def _recompute(self) -> None:
        cut: set[Link] = set()
        for links in self._partitions.values():
            cut |= links
        self.cut_links = frozenset(cut)

    def calm(self) -> None:
        """No more loss, duplication or long delays (the quiet phase)."""
        self.config.drop_p = 0.0
        self.config.dup_p = 0.0
        self.config.long_delay_p = 0.0
