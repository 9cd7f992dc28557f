"""Hypothesis strategies for every Raft value that crosses the codec.

Shared by the codec, describe and simulator tests. Every strategy draws values the
codec accepts (non-empty node ids of at most 255 UTF-8 bytes, terms and indexes in
[0, 2**48), other integers in [0, 2**63), disjoint voters and learners, an append's
entries contiguous with non-decreasing terms), so ``decode(encode(x)) == x`` holds for
all of them.
"""

from __future__ import annotations

from hypothesis import strategies as st

from raft.codec import MAX_INT, MAX_NODE_ID_BYTES, MAX_TERM
from raft.messages import (
    AppendEntries,
    AppendResp,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    Message,
    ReadIndex,
    ReadIndexResp,
    RequestVote,
    SnapshotResp,
    TimeoutNow,
    VoteResp,
)
from raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    NodeId,
    SnapshotMeta,
)

__all__ = [
    "conf_changes",
    "conf_states",
    "entries",
    "hard_states",
    "indexes",
    "message_strategies",
    "messages",
    "node_ids",
    "payloads",
    "snapshot_metas",
    "terms",
]

# Mostly small values, as a real cluster has, with the full range mixed in.
terms = indexes = st.one_of(st.integers(0, 20), st.integers(0, MAX_TERM - 1))
offsets = st.one_of(st.integers(0, 20), st.integers(0, MAX_INT - 1))
payloads = st.binary(max_size=64)

node_ids: st.SearchStrategy[NodeId] = st.one_of(
    st.sampled_from(["n1", "n2", "n3", "n4", "n5", "n10"]),
    # st.text never draws lone surrogates, so every id encodes to UTF-8.
    st.text(min_size=1, max_size=80).filter(lambda s: len(s.encode()) <= MAX_NODE_ID_BYTES),
    st.text("xyz", min_size=MAX_NODE_ID_BYTES - 2, max_size=MAX_NODE_ID_BYTES),
)
"""Ids the codec accepts: non-empty and at most 255 UTF-8 bytes."""

conf_changes: st.SearchStrategy[ConfChange] = st.builds(
    ConfChange, st.sampled_from(ConfChangeKind), node_ids
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    """Normal entries carry opaque bytes; conf-change entries a valid ConfChange."""
    kind = draw(st.sampled_from(EntryKind))
    data = draw(conf_changes).encode() if kind is EntryKind.CONF_CHANGE else draw(payloads)
    return Entry(draw(terms), draw(indexes), kind, data)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    members = draw(st.frozensets(node_ids, max_size=7))
    learners = draw(st.frozensets(st.sampled_from(sorted(members)))) if members else frozenset()
    return ConfState(members - learners, learners)


snapshot_metas: st.SearchStrategy[SnapshotMeta] = st.builds(
    SnapshotMeta, index=indexes, term=terms, conf=conf_states()
)
hard_states: st.SearchStrategy[HardState] = st.builds(
    HardState, term=terms, vote=st.none() | node_ids, commit=indexes
)

_common = {"src": node_ids, "dst": node_ids, "term": terms}


@st.composite
def appends(draw: st.DrawFn) -> AppendEntries:
    """Entries a leader could send: contiguous from prev_index + 1, terms never
    decreasing, from prev_term up to the message's term."""
    term = draw(terms)
    prev_term = draw(st.integers(0, term))
    n = draw(st.integers(0, 5))
    prev_index = draw(st.integers(0, MAX_TERM - 1 - n) | st.integers(0, 20))
    ents: list[Entry] = []
    t = prev_term
    for i in range(n):
        t = draw(st.integers(t, term))
        e = draw(entries())
        ents.append(Entry(t, prev_index + 1 + i, e.kind, e.data))
    return AppendEntries(
        src=draw(node_ids),
        dst=draw(node_ids),
        term=term,
        prev_index=prev_index,
        prev_term=prev_term,
        entries=tuple(ents),
        commit=draw(indexes),
    )


message_strategies: dict[type, st.SearchStrategy[Message]] = {
    AppendEntries: appends(),
    AppendResp: st.builds(
        AppendResp,
        **_common,
        index=indexes,
        reject=st.booleans(),
        hint_index=indexes,
        hint_term=terms,
    ),
    RequestVote: st.builds(
        RequestVote,
        **_common,
        last_index=indexes,
        last_term=terms,
        pre_vote=st.booleans(),
        transfer=st.booleans(),
    ),
    VoteResp: st.builds(VoteResp, **_common, granted=st.booleans(), pre_vote=st.booleans()),
    Heartbeat: st.builds(Heartbeat, **_common, commit=indexes, ctx=payloads),
    HeartbeatResp: st.builds(HeartbeatResp, **_common, ctx=payloads),
    InstallSnapshot: st.builds(
        InstallSnapshot,
        **_common,
        meta=snapshot_metas,
        offset=offsets,
        data=payloads,
        done=st.booleans(),
        checksum=st.integers(0, (1 << 32) - 1),
    ),
    SnapshotResp: st.builds(
        SnapshotResp, **_common, index=indexes, offset=offsets, reject=st.booleans()
    ),
    TimeoutNow: st.builds(TimeoutNow, **_common),
    ReadIndex: st.builds(ReadIndex, **_common, ctx=payloads),
    ReadIndexResp: st.builds(
        ReadIndexResp, **_common, ctx=payloads, index=indexes, reject=st.booleans()
    ),
}
"""One strategy per message class, keyed by class (tests assert every class is here)."""

messages: st.SearchStrategy[Message] = st.one_of(*message_strategies.values())
