"""raft.core.quorum: majority math, by table and against naive oracles (etcd's
quorum/quick_test.go): an off-by-one here silently commits unreplicated entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.core.quorum import VoteResult, committed_index, has_quorum, majority, vote_result


@pytest.mark.parametrize(("n", "want"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(n: int, want: int) -> None:
    assert majority(n) == want


@pytest.mark.parametrize(
    ("voters", "match", "want"),
    [
        ((), {}, 0),
        (("a",), {"a": 5}, 5),
        (("a", "b"), {"a": 5, "b": 3}, 3),
        (("a", "b", "c"), {"a": 5, "b": 3, "c": 1}, 3),
        (("a", "b", "c"), {"a": 5}, 0),  # missing voters count as 0
        (("a", "b", "c"), {"a": 5, "b": 5}, 5),
        (("a", "b", "c", "d"), {"a": 9, "b": 8, "c": 2, "d": 1}, 2),
        (("a", "b", "c"), {"a": 9, "b": 9, "x": 100}, 9),  # non-voters ignored
        (("a", "b", "c"), {"a": 1, "x": 100, "y": 100}, 0),
    ],
)
def test_committed_index(voters: tuple[str, ...], match: dict[str, int], want: int) -> None:
    assert committed_index(voters, match) == want


def _oracle_committed(voters: set[str], match: dict[str, int]) -> int:
    """Max i such that more than half the voters have match >= i (0 if none)."""
    best = 0
    for i in {0, *match.values()}:
        if 2 * sum(1 for v in voters if match.get(v, 0) >= i) > len(voters):
            best = max(best, i)
    return best


NODES = st.sampled_from([f"n{i}" for i in range(1, 8)])


@given(
    voters=st.sets(NODES, min_size=1, max_size=7),
    match=st.dictionaries(NODES, st.integers(0, 20), max_size=7),
)
def test_committed_index_matches_oracle(voters: set[str], match: dict[str, int]) -> None:
    assert committed_index(voters, match) == _oracle_committed(voters, match)


@pytest.mark.parametrize(
    ("voters", "votes", "want"),
    [
        ((), {}, VoteResult.LOST),
        (("a",), {}, VoteResult.PENDING),
        (("a",), {"a": True}, VoteResult.WON),
        (("a",), {"a": False}, VoteResult.LOST),
        (("a", "b"), {"a": True}, VoteResult.PENDING),
        (("a", "b"), {"a": True, "b": False}, VoteResult.LOST),
        (("a", "b", "c"), {"a": True, "b": True}, VoteResult.WON),
        (("a", "b", "c"), {"a": True, "b": False}, VoteResult.PENDING),
        (("a", "b", "c"), {"a": False, "b": False}, VoteResult.LOST),
        (("a", "b", "c"), {"a": True, "x": True, "y": True}, VoteResult.PENDING),
        (("a", "b", "c", "d"), {"a": True, "b": True}, VoteResult.PENDING),
        (("a", "b", "c", "d"), {"a": True, "b": True, "c": False, "d": False}, VoteResult.LOST),
    ],
)
def test_vote_result(voters: tuple[str, ...], votes: dict[str, bool], want: VoteResult) -> None:
    assert vote_result(voters, votes) == want


def _oracle_vote(voters: set[str], votes: dict[str, bool]) -> VoteResult:
    """WON iff yes > n/2; LOST iff even all missing voters saying yes cannot win."""
    yes = sum(1 for v in voters if votes.get(v) is True)
    possible = sum(1 for v in voters if votes.get(v) is not False)
    if 2 * yes > len(voters):
        return VoteResult.WON
    if 2 * possible > len(voters):
        return VoteResult.PENDING
    return VoteResult.LOST


@given(
    voters=st.sets(NODES, min_size=1, max_size=7),
    votes=st.dictionaries(NODES, st.booleans(), max_size=7),
)
def test_vote_result_matches_oracle(voters: set[str], votes: dict[str, bool]) -> None:
    assert vote_result(voters, votes) == _oracle_vote(voters, votes)


@given(voters=st.sets(NODES, max_size=7), alive=st.sets(NODES, max_size=7))
def test_has_quorum_matches_oracle(voters: set[str], alive: set[str]) -> None:
    want = bool(voters) and 2 * len(voters & alive) > len(voters)
    assert has_quorum(voters, alive) == want
