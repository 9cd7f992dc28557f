"""raft.describe: exact text for a table of values (golden files depend on it), and
output that depends only on the value."""

from __future__ import annotations

import pytest
from hypothesis import given

from raft.core.ready import Ready
from raft.describe import (
    describe_bytes,
    describe_conf_state,
    describe_entry,
    describe_hard_state,
    describe_message,
    describe_ready,
    describe_snapshot_meta,
)
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
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from tests.raft import strategies as rs

ADD_N4 = ConfChange(ConfChangeKind.ADD_VOTER, "n4").encode()
CONF = ConfState(frozenset({"n10", "n2", "n1"}), frozenset({"n4"}))
META = SnapshotMeta(index=100, term=2, conf=CONF)

ENTRIES: list[tuple[Entry, str]] = [
    (Entry(2, 6, EntryKind.NORMAL, b"put"), "2/6 normal b'put'"),
    (Entry(2, 6, EntryKind.NORMAL, b""), "2/6 normal b''"),
    (Entry(2, 6, EntryKind.NORMAL, b"\x00\x01\x02"), "2/6 normal 3B"),
    (Entry(2, 6, EntryKind.NORMAL, b"x" * 17), "2/6 normal 17B"),
    (Entry(2, 6, EntryKind.NORMAL, b"x" * 16), "2/6 normal b'xxxxxxxxxxxxxxxx'"),
    (Entry(2, 7, EntryKind.CONF_CHANGE, ADD_N4), "2/7 conf add-voter n4"),
    (
        Entry(3, 8, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.ADD_LEARNER, "n5").encode()),
        "3/8 conf add-learner n5",
    ),
    (
        Entry(3, 9, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.REMOVE_NODE, "n2").encode()),
        "3/9 conf remove-node n2",
    ),
    (Entry(3, 9, EntryKind.CONF_CHANGE, b"\x09"), "3/9 conf <undecodable 1B>"),
]


@pytest.mark.parametrize(("entry", "text"), ENTRIES, ids=[t for _, t in ENTRIES])
def test_describe_entry(entry: Entry, text: str) -> None:
    assert describe_entry(entry) == text


MESSAGES: list[tuple[Message, str]] = [
    (
        AppendEntries(
            src="n1",
            dst="n2",
            term=2,
            prev_index=5,
            prev_term=1,
            entries=(Entry(2, 6, data=b"\xff\xfe\xfd"), Entry(2, 7, EntryKind.CONF_CHANGE, ADD_N4)),
            commit=5,
        ),
        "n1->n2 AppendEntries term=2 prev=1/5 commit=5"
        " entries=[2/6 normal 3B, 2/7 conf add-voter n4]",
    ),
    (
        AppendEntries(src="n1", dst="n2", term=2, prev_index=7, prev_term=2, entries=(), commit=7),
        "n1->n2 AppendEntries term=2 prev=2/7 commit=7",
    ),
    (AppendResp(src="n2", dst="n1", term=2, index=7), "n2->n1 AppendResp term=2 index=7"),
    (
        AppendResp(src="n2", dst="n1", term=2, index=5, reject=True, hint_index=1, hint_term=3),
        "n2->n1 AppendResp term=2 index=5 reject hint=3/1",
    ),
    (
        RequestVote(src="n1", dst="n2", term=3, last_index=7, last_term=2, pre_vote=True),
        "n1->n2 RequestVote term=3 last=2/7 pre-vote",
    ),
    (
        RequestVote(src="n1", dst="n2", term=3, last_index=7, last_term=2, transfer=True),
        "n1->n2 RequestVote term=3 last=2/7 transfer",
    ),
    (VoteResp(src="n2", dst="n1", term=3, granted=True), "n2->n1 VoteResp term=3 granted"),
    (
        VoteResp(src="n2", dst="n1", term=3, granted=False, pre_vote=True),
        "n2->n1 VoteResp term=3 reject pre-vote",
    ),
    (Heartbeat(src="n1", dst="n2", term=2, commit=5), "n1->n2 Heartbeat term=2 commit=5"),
    (
        Heartbeat(src="n1", dst="n2", term=2, commit=5, ctx=b"r1"),
        "n1->n2 Heartbeat term=2 commit=5 ctx=b'r1'",
    ),
    (
        HeartbeatResp(src="n2", dst="n1", term=2, ctx=b"r1"),
        "n2->n1 HeartbeatResp term=2 ctx=b'r1'",
    ),
    (HeartbeatResp(src="n2", dst="n1", term=2), "n2->n1 HeartbeatResp term=2"),
    (
        InstallSnapshot(
            src="n1", dst="n2", term=2, meta=META, offset=0, data=b"x" * 1024, done=True
        ),
        "n1->n2 InstallSnapshot term=2 snap=2/100 voters=[n1 n2 n10] learners=[n4]"
        " offset=0 len=1024 done",
    ),
    (
        SnapshotResp(src="n2", dst="n1", term=2, index=100, offset=1024),
        "n2->n1 SnapshotResp term=2 index=100 offset=1024",
    ),
    (
        SnapshotResp(src="n2", dst="n1", term=2, index=100, offset=0, reject=True),
        "n2->n1 SnapshotResp term=2 index=100 offset=0 reject",
    ),
    (TimeoutNow(src="n1", dst="n3", term=4), "n1->n3 TimeoutNow term=4"),
    (ReadIndex(src="n2", dst="n1", term=2, ctx=b"r1"), "n2->n1 ReadIndex term=2 ctx=b'r1'"),
    (
        ReadIndexResp(src="n1", dst="n2", term=2, ctx=b"r1", index=7),
        "n1->n2 ReadIndexResp term=2 index=7 ctx=b'r1'",
    ),
    (
        ReadIndexResp(src="n1", dst="n2", term=2, ctx=b"\x00" * 20, index=0, reject=True),
        "n1->n2 ReadIndexResp term=2 index=0 ctx=20B reject",
    ),
]


@pytest.mark.parametrize(("msg", "text"), MESSAGES, ids=[t for _, t in MESSAGES])
def test_describe_message(msg: Message, text: str) -> None:
    assert describe_message(msg) == text


def test_describe_message_table_covers_every_kind() -> None:
    assert {type(m) for m, _ in MESSAGES} == set(rs.message_strategies)


def test_describe_message_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        describe_message(Entry(1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hs", "text"),
    [
        (HardState(), "term=0 commit=0"),
        (HardState(term=2, vote="n1", commit=5), "term=2 vote=n1 commit=5"),
    ],
)
def test_describe_hard_state(hs: HardState, text: str) -> None:
    assert describe_hard_state(hs) == text


def test_describe_snapshot_meta_and_conf_state() -> None:
    assert describe_snapshot_meta(META) == "2/100 voters=[n1 n2 n10] learners=[n4]"
    assert describe_snapshot_meta(SnapshotMeta()) == "0/0 voters=[]"
    assert describe_conf_state(ConfState(frozenset({"n01", "n1", "a", "b2"}))) == (
        "voters=[a b2 n01 n1]"
    )


@pytest.mark.parametrize(
    ("data", "text"),
    [(b"", "b''"), (b"it's", 'b"it\'s"'), (b"a\nb", "3B"), (b"\x7f", "1B"), (b"~ ", "b'~ '")],
)
def test_describe_bytes(data: bytes, text: str) -> None:
    assert describe_bytes(data) == text


def test_describe_ready_full() -> None:
    rd = Ready(
        soft_state=SoftState(leader="n1", role=Role.LEADER),
        hard_state=HardState(term=2, vote="n1", commit=5),
        entries=(Entry(2, 6, data=b"put"),),
        snapshot=Snapshot(meta=META, data=b"s" * 10),
        messages=(
            AppendResp(src="n1", dst="n2", term=2, index=7),
            TimeoutNow(src="n1", dst="n3", term=2),
        ),
        committed_entries=(Entry(2, 5),),
        read_states=(ReadState(index=5, ctx=b"r1"),),
        must_sync=True,
    )
    assert describe_ready(rd) == "\n".join(
        [
            "SoftState role=leader leader=n1",
            "HardState term=2 vote=n1 commit=5",
            "Entries:",
            "  2/6 normal b'put'",
            "Snapshot 2/100 voters=[n1 n2 n10] learners=[n4] len=10",
            "Messages:",
            "  n1->n2 AppendResp term=2 index=7",
            "  n1->n3 TimeoutNow term=2",
            "CommittedEntries:",
            "  2/5 normal b''",
            "ReadStates:",
            "  index=5 ctx=b'r1'",
            "MustSync",
        ]
    )


def test_describe_ready_only_non_empty_fields() -> None:
    assert describe_ready(Ready()) == "<empty Ready>"
    rd = Ready(soft_state=SoftState(leader=None, role=Role.PRE_CANDIDATE))
    assert describe_ready(rd) == "SoftState role=pre-candidate"


@given(rs.messages)
def test_describe_message_is_one_deterministic_line(m: Message) -> None:
    """Same value, same text; rebuilding memberships in another order changes nothing."""
    text = describe_message(m)
    assert text == describe_message(m)
    assert text.startswith(f"{m.src}->{m.dst} {type(m).__name__} term={m.term}")
    if isinstance(m, InstallSnapshot):
        conf = ConfState(
            frozenset(sorted(m.meta.conf.voters, reverse=True)), frozenset(m.meta.conf.learners)
        )
        assert describe_snapshot_meta(SnapshotMeta(m.meta.index, m.meta.term, conf)) in text


@given(rs.entries())
def test_describe_entry_is_deterministic(e: Entry) -> None:
    assert describe_entry(e) == describe_entry(Entry(e.term, e.index, e.kind, bytes(e.data)))
    assert describe_entry(e).startswith(f"{e.term}/{e.index} ")
