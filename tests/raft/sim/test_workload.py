"""The register state machine and its snapshots."""

from __future__ import annotations

import pytest

from raft.errors import InvariantViolation
from raft.sim.workload import Register
from raft.types import ConfChange, ConfChangeKind, Entry, EntryKind


def test_register_applies_only_commands() -> None:
    sm = Register()
    sm.apply(Entry(1, 1))  # a leader's no-op
    sm.apply(
        Entry(1, 2, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.ADD_VOTER, "n4").encode())
    )
    sm.apply(Entry(1, 3, data=b"c0:1:aa"))
    assert sm.applied == 3
    assert sm.commands == [(3, b"c0:1:aa")]


def test_register_snapshot_round_trip_is_msgpack() -> None:
    sm = Register()
    for i in range(1, 6):
        sm.apply(Entry(1, i, data=f"c1:{i}:x".encode()))
    data = sm.snapshot_bytes()
    assert not data.startswith(b"\x80")  # not a pickle
    back = Register.restore(data)
    assert back.applied == 5 and back.commands == sm.commands
    assert Register.restore(b"").applied == 0


def test_register_refuses_gaps() -> None:
    sm = Register()
    sm.apply(Entry(1, 1))
    with pytest.raises(InvariantViolation, match="apply gap"):
        sm.apply(Entry(1, 3))
