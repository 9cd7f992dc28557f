"""Exceptions of the Raft layer.

Callers act on ``ProposalDropped`` and ``NotLeader``; ``CodecError`` is the only error
that bytes from a socket or a disk can raise when decoded; ``InvariantViolation`` is a
bug, never a condition to handle.
"""

from __future__ import annotations

from raft.types import NodeId


class RaftError(Exception):
    """Base of every error raised by the raft package."""


class ProposalDropped(RaftError):
    """The proposal was not appended (e.g. a leadership transfer is in progress, or a
    membership change is already pending). It certainly did not happen."""


class NotLeader(ProposalDropped):
    """This node cannot accept the request; ``leader`` is its best guess of who can."""

    def __init__(self, leader: NodeId | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader})")
        self.leader = leader


class ConfigError(RaftError, ValueError):
    """A Config that cannot work (e.g. election timeout not above heartbeat)."""


class CodecError(RaftError, ValueError):
    """Bytes that do not decode to a valid value. Never anything else on bad input."""


class InvariantViolation(AssertionError):
    """A broken safety property: always a bug."""
