"""Majority math, kept pure so it can be checked against a naive oracle.

Only single (non-joint) configurations exist: membership changes are single-server
changes (docs/ARCHITECTURE.md explains why), so a quorum is a plain majority.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from raft.types import Index, NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """Smallest number of voters that is more than half of ``n``."""
    return n // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, Index]) -> Index:
    """The largest index that a majority of ``voters`` have durably matched.

    An empty voter set commits nothing (0); a voter missing from ``match`` counts as 0.
    """
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(voters)) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    if not voters:
        return VoteResult.LOST
    need = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def has_quorum(voters: Collection[NodeId], alive: Collection[NodeId]) -> bool:
    """True when the voters in ``alive`` form a majority of ``voters``."""
    return bool(voters) and sum(1 for v in voters if v in alive) >= majority(len(voters))
