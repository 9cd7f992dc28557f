"""raft.codec: round trips for every value, and the gateway's one promise on bad input:
CodecError and nothing else (h11's fuzz invariant)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft import codec
from raft.codec import (
    MAX_INT,
    MAX_TERM,
    MESSAGE_TAGS,
    decode_conf_state,
    decode_entry,
    decode_hard_state,
    decode_message,
    decode_snapshot_meta,
    encode_conf_state,
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot_meta,
)
from raft.errors import CodecError
from raft.framing import FrameDecoder, FrameTooLarge, encode_frame
from raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResp,
    Heartbeat,
    InstallSnapshot,
    Message,
    ReadIndexResp,
    RequestVote,
    TimeoutNow,
)
from raft.runtime.transport import HELLO_MAGIC, _unpack_hello
from raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from tests.raft import strategies as rs

DECODERS: list[Callable[[bytes], object]] = [
    decode_message,
    decode_entry,
    decode_hard_state,
    decode_snapshot_meta,
    decode_conf_state,
]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def fields(m: Message) -> list[Any]:
    """The wire array of ``m`` as plain msgpack objects, ready to be mutated."""
    return list(msgpack.unpackb(encode_message(m), raw=False))


AE = AppendEntries(
    src="n1",
    dst="n2",
    term=2,
    prev_index=5,
    prev_term=1,
    entries=(Entry(2, 6, EntryKind.NORMAL, b"abc"),),
    commit=5,
)
RV = RequestVote(src="n1", dst="n2", term=3, last_index=7, last_term=2, pre_vote=True)


# ---- tables ---------------------------------------------------------------------------


def test_MESSAGE_TAGS_cover_every_message_once() -> None:
    assert set(MESSAGE_TAGS) == set(MESSAGE_TYPES)
    assert sorted(MESSAGE_TAGS.values()) == list(range(1, len(MESSAGE_TYPES) + 1))


def test_strategies_cover_every_message() -> None:
    assert set(rs.message_strategies) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_encode_message_tag_and_arity(cls: type, data: st.DataObject) -> None:
    m = data.draw(rs.message_strategies[cls])
    wire = fields(m)
    assert wire[0] == MESSAGE_TAGS[cls]
    assert len(wire) == 1 + len(dataclasses.fields(cls))


# ---- round trips ----------------------------------------------------------------------


@given(rs.messages)
def test_message_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@given(rs.entries())
def test_entry_round_trip(e: Entry) -> None:
    decoded = decode_entry(encode_entry(e))
    assert decoded == e
    assert decoded.kind is e.kind


@given(rs.hard_states)
def test_hard_state_round_trip(hs: HardState) -> None:
    assert decode_hard_state(encode_hard_state(hs)) == hs


@given(rs.snapshot_metas)
def test_snapshot_meta_round_trip(m: SnapshotMeta) -> None:
    assert decode_snapshot_meta(encode_snapshot_meta(m)) == m


@given(rs.conf_states())
def test_conf_state_round_trip(cs: ConfState) -> None:
    assert decode_conf_state(encode_conf_state(cs)) == cs


@given(rs.conf_states())
def test_conf_state_encoding_is_canonical(cs: ConfState) -> None:
    """Equal memberships give equal bytes whatever the set iteration order."""
    rebuilt = ConfState(frozenset(sorted(cs.voters, reverse=True)), frozenset(cs.learners))
    assert encode_conf_state(rebuilt) == encode_conf_state(cs)


def test_round_trip_limits() -> None:
    big = MAX_TERM - 1
    m = AppendResp(src="x" * 255, dst="é" * 127, term=big, index=big, hint_index=big, hint_term=big)
    assert decode_message(encode_message(m)) == m
    snap = InstallSnapshot(src="a", dst="b", term=1, meta=SnapshotMeta(), offset=MAX_INT - 1,
                           data=b"", done=True, checksum=(1 << 32) - 1)  # fmt: skip
    assert decode_message(encode_message(snap)) == snap


@pytest.mark.parametrize(
    "msg",
    [
        # Issue 11: one forged RequestVote at 2^63-1 put every node at a term whose
        # successor no longer encodes; terms and indexes stop at 2^48.
        RequestVote(src="a", dst="b", term=MAX_INT - 1, last_index=1, last_term=1),
        RequestVote(src="a", dst="b", term=MAX_TERM, last_index=1, last_term=1),
        Heartbeat(src="a", dst="b", term=1, commit=MAX_TERM),
        AppendResp(src="a", dst="b", term=1, index=MAX_TERM),
        ReadIndexResp(src="a", dst="b", term=1, ctx=b"", index=MAX_TERM),
    ],
    ids=lambda m: type(m).__name__,
)
def test_terms_and_indexes_past_the_bound_are_refused(msg: Message) -> None:
    with pytest.raises(CodecError, match="bad"):
        decode_message(encode_message(msg))


@pytest.mark.parametrize(
    ("prev", "ents", "match"),
    [
        ((5, 2), [(2, 7)], "does not follow 5"),  # a gap (issue 11: IndexError, node exited)
        ((5, 2), [(2, 6), (2, 6)], "does not follow 6"),  # a repeat
        ((5, 2), [(3, 6), (2, 7)], "after term 3"),  # terms go down
        ((5, 2), [(1, 6)], "after term 2"),  # below prev_term
        ((5, 2), [(9, 6)], "in term 4"),  # beyond the message's term
    ],
)
def test_an_append_that_is_no_leaders_log_is_refused(
    prev: tuple[int, int], ents: list[tuple[int, int]], match: str
) -> None:
    m = AppendEntries(src="a", dst="b", term=4, prev_index=prev[0], prev_term=prev[1],
                      entries=tuple(Entry(t, i) for t, i in ents), commit=0)  # fmt: skip
    with pytest.raises(CodecError, match=match):
        decode_message(encode_message(m))


def test_encode_message_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message(Entry(1, 1))  # type: ignore[arg-type]


def test_encode_unrepresentable_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        encode_message(TimeoutNow(src="n1", dst="n2", term=1 << 64))


# ---- fuzz: arbitrary input raises only CodecError -------------------------------------


def decodes_or_codec_error(decode: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_raise_only_codec_error(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    decodes_or_codec_error(decode, data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
@given(value=msgpack_values)
def test_arbitrary_msgpack_raises_only_codec_error(
    decode: Callable[[bytes], object], value: Any
) -> None:
    decodes_or_codec_error(decode, pack(value))


@given(rs.messages, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_field_decodes_or_raises_codec_error(m: Message, data: st.DataObject) -> None:
    """Replace one field of a valid message with any msgpack value: the result is either
    CodecError or a message whose fields all still have their declared types."""
    wire = fields(m)
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] = data.draw(msgpack_values)
    try:
        out = decode_message(pack(wire))
    except CodecError:
        return
    assert decode_message(encode_message(out)) == out


@given(rs.messages, st.data())
def test_truncated_or_extended_message_raises_codec_error(m: Message, data: st.DataObject) -> None:
    raw = encode_message(m)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CodecError):
        decode_message(raw[:cut])
    with pytest.raises(CodecError):
        decode_message(raw + data.draw(st.binary(min_size=1, max_size=4)))


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_well_shaped_arrays_of_any_fields_decode_or_raise_codec_error(
    cls: type, data: st.DataObject
) -> None:
    """Structure-aware: the right tag and arity, every field any msgpack value (random
    arrays rarely get this far). A message that decodes has fields of its declared
    types: it encodes back to itself."""
    arity = len(dataclasses.fields(cls))
    wire = [MESSAGE_TAGS[cls], *(data.draw(msgpack_values) for _ in range(arity))]
    try:
        out = decode_message(pack(wire))
    except CodecError:
        return
    assert type(out) is cls and decode_message(encode_message(out)) == out


@settings(max_examples=200)
@given(
    stream=st.lists(
        st.binary(max_size=64) | rs.messages.map(encode_message).map(encode_frame), max_size=8
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 4096), max_size=8),
    limit=st.integers(0, 4096),
)
def test_any_peer_byte_stream_yields_messages_or_codec_error(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    """The path a peer connection's bytes take (raft/runtime/transport.py,
    ``_read_messages``): the frame layer, then decode_message on every frame. Whatever
    the bytes and however they are split, the only error is CodecError (FrameTooLarge
    is one), and once the framing is lost every later call fails the same way."""
    dec = FrameDecoder(limit)
    try:
        for chunk in _split(stream, cuts):
            dec.feed(chunk)
            for frame in dec.frames():
                assert len(frame) <= limit
                decodes_or_codec_error(decode_message, frame)
    except FrameTooLarge:
        with pytest.raises(FrameTooLarge):
            dec.feed(b"")
        with pytest.raises(FrameTooLarge):
            dec.next_frame()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({min(c, len(data)) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


hello_like = st.lists(
    st.just(HELLO_MAGIC) | st.just(2) | msgpack_values, min_size=0, max_size=5
).map(pack)


@settings(max_examples=300)
@given(data=st.binary(max_size=128) | hello_like)
def test_peer_hello_parser_never_raises(data: bytes) -> None:
    """The handshake's frames are read before any authentication: any bytes are a
    handshake array starting with the magic, or None."""
    hello = _unpack_hello(data)
    assert hello is None or (type(hello) is tuple and hello[0] == HELLO_MAGIC)


# ---- wrong shapes, table-driven -------------------------------------------------------


def ae_with(i: int, value: Any) -> bytes:
    wire = fields(AE)
    wire[i] = value
    return pack(wire)


def rv_with(i: int, value: Any) -> bytes:
    wire = fields(RV)
    wire[i] = value
    return pack(wire)


BAD_MESSAGES: dict[str, bytes] = {
    "nil": pack(None),
    "int": pack(1),
    "empty array": pack([]),
    "map": pack({"tag": 1}),
    "tag 0": pack([0, "n1", "n2", 1]),
    "tag 12": pack([12, "n1", "n2", 1]),
    "tag -1": pack([-1, "n1", "n2", 1]),
    "tag as str": pack(["9", "n1", "n2", 1]),
    "tag as bool": pack([True, "n1", "n2", 1]),
    "too few fields": pack([9, "n1", "n2"]),
    "too many fields": pack([9, "n1", "n2", 1, 0]),
    "bool for int": pack([9, "n1", "n2", True]),
    "float for int": pack([9, "n1", "n2", 1.0]),
    "negative int": pack([9, "n1", "n2", -1]),
    "2**63": pack([9, "n1", "n2", 1 << 63]),
    "2**64-1": pack([9, "n1", "n2", (1 << 64) - 1]),
    "empty node id": pack([9, "", "n2", 1]),
    "bytes node id": pack([9, b"n1", "n2", 1]),
    "nil node id": pack([9, None, "n2", 1]),
    "256-byte node id": pack([9, "x" * 256, "n2", 1]),
    "256-byte multibyte node id": pack([9, "é" * 128, "n2", 1]),
    "str for bytes": pack([10, "n1", "n2", 1, "ctx"]),
    "nil for bytes": pack([10, "n1", "n2", 1, None]),
    "int for bool": rv_with(6, 1),
    "nil for bool": rv_with(7, None),
    "entries not array": ae_with(6, b""),
    "entries nil": ae_with(6, None),
    "entry not array": ae_with(6, [b"x"]),
    "entry short": ae_with(6, [[2, 6, 0]]),
    "entry long": ae_with(6, [[2, 6, 0, b"", 0]]),
    "entry kind 2": ae_with(6, [[2, 6, 2, b""]]),
    "entry kind bool": ae_with(6, [[2, 6, False, b""]]),
    "entry kind -1": ae_with(6, [[2, 6, -1, b""]]),
    "entry data str": ae_with(6, [[2, 6, 0, "x"]]),
    "entry term negative": ae_with(6, [[-2, 6, 0, b""]]),
    "ext type": pack([10, "n1", "n2", 1, msgpack.ExtType(5, b"xx")]),
    "timestamp": pack([10, "n1", "n2", 1, msgpack.Timestamp(1, 0)]),
    "trailing data": encode_message(AE) + b"\x00",
    "invalid utf-8": b"\x94\x09\xa2\xff\xfe\xa2n2\x01",
    "non-str map key": b"\x81\x01\x02",
    "deep nesting": b"\x91" * 100_000,
    "huge declared array": b"\xdd\xff\xff\xff\xff",
    "huge declared bin": b"\xc6\xff\xff\xff\xff",
    "huge declared str": b"\xdb\xff\xff\xff\xff",
    "reserved byte": b"\xc1",
    "not bytes at all": "a string",  # type: ignore[dict-item]
}


@pytest.mark.parametrize("data", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_decode_message_rejects(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(data)


def test_decode_message_huge_entry_array_is_refused() -> None:
    raw = pack(
        [1, "n1", "n2", 1, 0, 0, [[1, i, 0, b""] for i in range(codec.MAX_ARRAY_LEN + 1)], 0]
    )
    with pytest.raises(CodecError):
        decode_message(raw)


BAD_VALUES: list[tuple[Callable[[bytes], object], bytes]] = [
    (decode_entry, pack([1, 1, 0])),
    (decode_entry, pack([1, 1, 0, b"", 0])),
    (decode_entry, pack([1, 1, 7, b""])),
    (decode_entry, pack([1, 1, True, b""])),
    (decode_entry, pack([1, -1, 0, b""])),
    (decode_entry, pack([1, 1, 0, "data"])),
    (decode_hard_state, pack([1, None])),
    (decode_hard_state, pack([1, "", 0])),
    (decode_hard_state, pack([1, b"n1", 0])),
    (decode_hard_state, pack([1, "n1", False])),
    (decode_hard_state, pack([1 << 63, "n1", 0])),
    (decode_conf_state, pack([["n1"]])),
    (decode_conf_state, pack([["n1", "n1"], []])),
    (decode_conf_state, pack([["n1"], ["n1"]])),
    (decode_conf_state, pack([["n1"], [""]])),
    (decode_conf_state, pack([["n1"], None])),
    (decode_conf_state, pack([[b"n1"], []])),
    (decode_conf_state, pack({"voters": []})),
    (decode_snapshot_meta, pack([1, 1])),
    (decode_snapshot_meta, pack([1, 1, [[], []], 0])),
    (decode_snapshot_meta, pack([1, 1, [["n1"], ["n1"]]])),
    (decode_snapshot_meta, pack([1, True, [[], []]])),
    (decode_snapshot_meta, pack([1, 1, None])),
]


@pytest.mark.parametrize(
    ("decode", "data"), BAD_VALUES, ids=[f"{d.__name__}-{i}" for i, (d, _) in enumerate(BAD_VALUES)]
)
def test_decode_value_rejects(decode: Callable[[bytes], object], data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_codec_error_chains_the_msgpack_cause() -> None:
    with pytest.raises(CodecError) as info:
        decode_message(b"\xc1")
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    "m",
    [
        AE,
        RV,
        Heartbeat(src="n1", dst="n2", term=2, commit=5, ctx=b"r"),
        AppendEntries(src="a", dst="b", term=0, prev_index=0, prev_term=0, entries=(), commit=0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_known_messages_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


def test_the_disk_keeps_the_full_range() -> None:
    """A node may count its own term up past the message bound (2^48 is refused only
    from peers): what it wrote must read back, or it could never restart (review)."""
    hs = HardState(MAX_TERM + 5, "n1", MAX_TERM + 3)
    assert decode_hard_state(encode_hard_state(hs)) == hs
    e = Entry(MAX_TERM + 1, MAX_TERM + 2)
    assert decode_entry(encode_entry(e)) == e
    meta = SnapshotMeta(MAX_TERM, MAX_TERM)
    assert decode_snapshot_meta(encode_snapshot_meta(meta)) == meta
    far = InstallSnapshot(src="a", dst="b", term=1, meta=meta, offset=0, data=b"", done=True)
    with pytest.raises(CodecError, match="snapshot index"):
        decode_message(encode_message(far))
    edge = AppendEntries(src="a", dst="b", term=2, prev_index=MAX_TERM - 1, prev_term=1,
                         entries=(Entry(2, MAX_TERM),), commit=0)  # fmt: skip
    with pytest.raises(CodecError, match="entry index"):
        decode_message(encode_message(edge))
