"""The single gateway between bytes and Raft values (etcd's ``valid()`` discipline).

Theory of operation. Every value is a msgpack array of positional fields; a message is
``[tag, src, dst, term, ...fields in declaration order]`` where ``tag`` comes from the
explicit :data:`MESSAGE_TAGS` table. Nested values are nested arrays: an entry is
``[term, index, kind, data]``, a membership is ``[voters, learners]`` (each sorted, so
equal values encode to equal bytes), snapshot metadata is ``[index, term, conf]`` and a
hard state is ``[term, vote or nil, commit]``.

Encoding trusts its input: values come from our own core, and the hot path (every
simulated and real hop) should not pay for checks the type system already made.
Decoding trusts nothing: bytes from a socket or a disk either become a well-typed value
or raise :class:`~raft.errors.CodecError` -- never another exception type and never an
allocation larger than the limits below. Field types are checked exactly (``True`` is
not an int, ``"x"`` is not bytes), integers must lie in ``[0, 2**63)`` -- and, in a
*message*, terms and log indexes in ``[0, 2**48)`` (:data:`MAX_TERM`), far below what
the codec can carry, so no peer can push a node's term to where it no longer encodes
(issue 11); what a node reads back from its own disk keeps the full range, so a term a
node reached by counting up from that bound still restarts --, node ids
must be non-empty and at most 255 UTF-8 bytes, and a membership may neither repeat a
node nor hold one as both voter and learner. The entries of an AppendEntries must be
contiguous from ``prev_index + 1``, with terms that never decrease, from at least
``prev_term`` to at most the message's term: anything else is no leader's log.

Compatibility. Tags and entry kinds are never reused; a new message kind gets a new
tag, so an old peer rejects it with CodecError instead of misreading it. Adding a field
to a message changes its arity, which old peers likewise reject.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NoReturn

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

from raft.errors import CodecError
from raft.messages import (
    MESSAGE_TYPES,
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
from raft.types import ConfState, Entry, EntryKind, HardState, NodeId, SnapshotMeta

__all__ = [
    "MAX_ARRAY_LEN",
    "MAX_BYTES_LEN",
    "MAX_INT",
    "MAX_NODE_ID_BYTES",
    "MESSAGE_TAGS",
    "decode_conf_state",
    "decode_entry",
    "decode_hard_state",
    "decode_message",
    "decode_snapshot_meta",
    "encode_conf_state",
    "encode_entry",
    "encode_hard_state",
    "encode_message",
    "encode_snapshot_meta",
]

MESSAGE_TAGS: dict[type, int] = {
    AppendEntries: 1,
    AppendResp: 2,
    RequestVote: 3,
    VoteResp: 4,
    Heartbeat: 5,
    HeartbeatResp: 6,
    InstallSnapshot: 7,
    SnapshotResp: 8,
    TimeoutNow: 9,
    ReadIndex: 10,
    ReadIndexResp: 11,
}
"""Wire tag of each message class. Append only: a retired tag stays retired."""

MAX_INT = 1 << 63
"""Exclusive upper bound of every decoded integer (terms, indexes, offsets)."""

MAX_TERM = 1 << 48
"""Exclusive upper bound of a decoded term or log index: 2^48 elections or entries is
beyond any real cluster, and leaves the codec's 2^63 out of any peer's reach."""

MAX_NODE_ID_BYTES = 255
MAX_BYTES_LEN = 64 << 20
"""Largest ``bytes`` field; on the wire the frame limit (raft/framing.py) is tighter."""

MAX_ARRAY_LEN = 1 << 16
"""Largest array: bounds entries per AppendEntries and members per membership."""

Obj = Any  # what msgpack hands back: validated field by field before use


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise CodecError(f"msgpack ext type {code} is not part of the protocol")


def _unpack(data: bytes) -> Obj:
    """msgpack → Python objects, with every size bounded and every failure a CodecError.

    ``max_map_len=0`` and the ext hook reject maps and ext types (timestamps included)
    outright: the protocol has neither, and refusing them early bounds the work."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            timestamp=0,
            ext_hook=_reject_ext,
            max_bin_len=MAX_BYTES_LEN,
            max_str_len=MAX_NODE_ID_BYTES,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=0,
            max_ext_len=0,
        )
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise CodecError(f"malformed msgpack: {exc}") from exc


def _pack(obj: Obj) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode: {exc}") from exc


# ---- field validators (decode side) ------------------------------------------------


def _fail(what: str, value: Obj) -> NoReturn:
    # Only scalars are shown: repr of a 64 MiB bytes field would cost more than the input.
    shown = repr(value) if value is None or type(value) in (int, bool, float) else ""
    raise CodecError(f"bad {what}: {type(value).__name__} {shown}".rstrip())


def _int(v: Obj, what: str) -> int:
    if type(v) is not int or not 0 <= v < MAX_INT:
        _fail(what, v)
    return v


def _term(v: Obj, what: str) -> int:
    """A term or log index (see :data:`MAX_TERM`)."""
    if type(v) is not int or not 0 <= v < MAX_TERM:
        _fail(what, v)
    return v


def _bool(v: Obj, what: str) -> bool:
    if type(v) is not bool:
        _fail(what, v)
    return v


def _bytes(v: Obj, what: str) -> bytes:
    if type(v) is not bytes:
        _fail(what, v)
    return v


def _node(v: Obj, what: str) -> NodeId:
    # msgpack's max_str_len already caps the UTF-8 length; checked again here so the
    # rule does not silently depend on unpack options.
    if type(v) is not str or not v or (len(v) > 63 and len(v.encode()) > MAX_NODE_ID_BYTES):
        _fail(what, v)
    return v


def _array(v: Obj, arity: int, what: str) -> tuple[Obj, ...]:
    if type(v) is not tuple or len(v) != arity:
        _fail(f"{what} (want array of {arity})", v)
    return v


_ENTRY_KINDS: dict[int, EntryKind] = {k.value: k for k in EntryKind}


def _entry(v: Obj) -> Entry:
    term, index, kind, data = _array(v, 4, "entry")
    k = _ENTRY_KINDS.get(kind) if type(kind) is int else None
    if k is None:
        _fail("entry kind", kind)
    return Entry(_int(term, "entry term"), _int(index, "entry index"), k, _bytes(data, "data"))


def _entries(v: Obj) -> tuple[Entry, ...]:
    """Hot path (up to max_msg_entries per AppendEntries): checks inline, and only a bad
    entry takes the slow path through :func:`_entry` for a precise error."""
    if type(v) is not tuple:
        _fail("entries", v)
    out = []
    kinds = _ENTRY_KINDS
    for e in v:
        if type(e) is tuple and len(e) == 4:
            term, index, kind, data = e
            k = kinds.get(kind) if type(kind) is int else None
            if (
                k is not None
                and type(term) is int
                and 0 <= term < MAX_INT
                and type(index) is int
                and 0 <= index < MAX_INT
                and type(data) is bytes
            ):
                out.append(Entry(term, index, k, data))
                continue
        out.append(_entry(e))  # raises
    return tuple(out)


def _members(v: Obj, what: str) -> frozenset[NodeId]:
    if type(v) is not tuple:
        _fail(what, v)
    members = frozenset(_node(n, what) for n in v)
    if len(members) != len(v):
        raise CodecError(f"duplicate node in {what}")
    return members


def _conf(v: Obj) -> ConfState:
    voters, learners = _array(v, 2, "conf state")
    cs = ConfState(_members(voters, "voters"), _members(learners, "learners"))
    if cs.voters & cs.learners:
        raise CodecError("a node is both voter and learner")
    return cs


def _meta(v: Obj) -> SnapshotMeta:
    index, term, conf = _array(v, 3, "snapshot meta")
    return SnapshotMeta(_int(index, "snapshot index"), _int(term, "snapshot term"), _conf(conf))


def _hard_state(v: Obj) -> HardState:
    term, vote, commit = _array(v, 3, "hard state")
    return HardState(
        _int(term, "term"), None if vote is None else _node(vote, "vote"), _int(commit, "commit")
    )


# ---- encoders (positional; field order == dataclass declaration order) ---------------
# Tags are literals for speed; tests check each against MESSAGE_TAGS.


def _entry_obj(e: Entry) -> tuple[int, int, int, bytes]:
    return (e.term, e.index, int(e.kind), e.data)


def _conf_obj(cs: ConfState) -> tuple[list[NodeId], list[NodeId]]:
    return (sorted(cs.voters), sorted(cs.learners))


def _meta_obj(m: SnapshotMeta) -> tuple[int, int, tuple[list[NodeId], list[NodeId]]]:
    return (m.index, m.term, _conf_obj(m.conf))


def _enc_append(m: AppendEntries) -> tuple[Obj, ...]:
    entries = [(e.term, e.index, int(e.kind), e.data) for e in m.entries]
    return (1, m.src, m.dst, m.term, m.prev_index, m.prev_term, entries, m.commit)


def _enc_append_resp(m: AppendResp) -> tuple[Obj, ...]:
    return (2, m.src, m.dst, m.term, m.index, m.reject, m.hint_index, m.hint_term)


def _enc_vote(m: RequestVote) -> tuple[Obj, ...]:
    return (3, m.src, m.dst, m.term, m.last_index, m.last_term, m.pre_vote, m.transfer)


def _enc_vote_resp(m: VoteResp) -> tuple[Obj, ...]:
    return (4, m.src, m.dst, m.term, m.granted, m.pre_vote)


def _enc_heartbeat(m: Heartbeat) -> tuple[Obj, ...]:
    return (5, m.src, m.dst, m.term, m.commit, m.ctx)


def _enc_heartbeat_resp(m: HeartbeatResp) -> tuple[Obj, ...]:
    return (6, m.src, m.dst, m.term, m.ctx)


def _enc_snapshot(m: InstallSnapshot) -> tuple[Obj, ...]:
    return (7, m.src, m.dst, m.term, _meta_obj(m.meta), m.offset, m.data, m.done, m.checksum)


def _enc_snapshot_resp(m: SnapshotResp) -> tuple[Obj, ...]:
    return (8, m.src, m.dst, m.term, m.index, m.offset, m.reject)


def _enc_timeout_now(m: TimeoutNow) -> tuple[Obj, ...]:
    return (9, m.src, m.dst, m.term)


def _enc_read_index(m: ReadIndex) -> tuple[Obj, ...]:
    return (10, m.src, m.dst, m.term, m.ctx)


def _enc_read_index_resp(m: ReadIndexResp) -> tuple[Obj, ...]:
    return (11, m.src, m.dst, m.term, m.ctx, m.index, m.reject)


# ---- decoders: ``f`` is the whole array, f[0] the tag, arity already checked ---------


def _dec_append(f: tuple[Obj, ...]) -> AppendEntries:
    m = AppendEntries(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        prev_index=_term(f[4], "prev_index"),
        prev_term=_term(f[5], "prev_term"),
        entries=_entries(f[6]),
        commit=_term(f[7], "commit"),
    )
    index, term = m.prev_index, m.prev_term
    if m.entries and m.prev_index + len(m.entries) >= MAX_TERM:
        _fail("entry index", m.prev_index + len(m.entries))
    for e in m.entries:
        if e.index != index + 1:
            raise CodecError(f"entry {e.index} does not follow {index}: entries must be contiguous")
        if not term <= e.term <= m.term:
            raise CodecError(f"entry {e.index} of term {e.term} after term {term} in term {m.term}")
        index, term = e.index, e.term
    return m


def _dec_append_resp(f: tuple[Obj, ...]) -> AppendResp:
    return AppendResp(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        index=_term(f[4], "index"),
        reject=_bool(f[5], "reject"),
        hint_index=_term(f[6], "hint_index"),
        hint_term=_term(f[7], "hint_term"),
    )


def _dec_vote(f: tuple[Obj, ...]) -> RequestVote:
    return RequestVote(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        last_index=_term(f[4], "last_index"),
        last_term=_term(f[5], "last_term"),
        pre_vote=_bool(f[6], "pre_vote"),
        transfer=_bool(f[7], "transfer"),
    )


def _dec_vote_resp(f: tuple[Obj, ...]) -> VoteResp:
    return VoteResp(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        granted=_bool(f[4], "granted"),
        pre_vote=_bool(f[5], "pre_vote"),
    )


def _dec_heartbeat(f: tuple[Obj, ...]) -> Heartbeat:
    return Heartbeat(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        commit=_term(f[4], "commit"),
        ctx=_bytes(f[5], "ctx"),
    )


def _dec_heartbeat_resp(f: tuple[Obj, ...]) -> HeartbeatResp:
    return HeartbeatResp(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        ctx=_bytes(f[4], "ctx"),
    )


def _dec_snapshot(f: tuple[Obj, ...]) -> InstallSnapshot:
    m = InstallSnapshot(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        meta=_meta(f[4]),
        offset=_int(f[5], "offset"),
        data=_bytes(f[6], "data"),
        done=_bool(f[7], "done"),
        checksum=_int(f[8], "checksum"),
    )
    _term(m.meta.index, "snapshot index")
    _term(m.meta.term, "snapshot term")
    return m


def _dec_snapshot_resp(f: tuple[Obj, ...]) -> SnapshotResp:
    return SnapshotResp(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        index=_term(f[4], "index"),
        offset=_int(f[5], "offset"),
        reject=_bool(f[6], "reject"),
    )


def _dec_timeout_now(f: tuple[Obj, ...]) -> TimeoutNow:
    return TimeoutNow(src=_node(f[1], "src"), dst=_node(f[2], "dst"), term=_term(f[3], "term"))


def _dec_read_index(f: tuple[Obj, ...]) -> ReadIndex:
    return ReadIndex(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        ctx=_bytes(f[4], "ctx"),
    )


def _dec_read_index_resp(f: tuple[Obj, ...]) -> ReadIndexResp:
    return ReadIndexResp(
        src=_node(f[1], "src"),
        dst=_node(f[2], "dst"),
        term=_term(f[3], "term"),
        ctx=_bytes(f[4], "ctx"),
        index=_term(f[5], "index"),
        reject=_bool(f[6], "reject"),
    )


_Encoder = Callable[[Any], tuple[Obj, ...]]
_Decoder = Callable[[tuple[Obj, ...]], Message]

_ENCODERS: dict[type, _Encoder] = {
    AppendEntries: _enc_append,
    AppendResp: _enc_append_resp,
    RequestVote: _enc_vote,
    VoteResp: _enc_vote_resp,
    Heartbeat: _enc_heartbeat,
    HeartbeatResp: _enc_heartbeat_resp,
    InstallSnapshot: _enc_snapshot,
    SnapshotResp: _enc_snapshot_resp,
    TimeoutNow: _enc_timeout_now,
    ReadIndex: _enc_read_index,
    ReadIndexResp: _enc_read_index_resp,
}

# tag -> (array length including the tag, decoder). Arity comes from the dataclass
# once, at import, so a field added to a message cannot silently be left off the wire.
_DECODERS: dict[int, tuple[int, _Decoder]] = {
    MESSAGE_TAGS[cls]: (1 + len(dataclasses.fields(cls)), dec)
    for cls, dec in (
        (AppendEntries, _dec_append),
        (AppendResp, _dec_append_resp),
        (RequestVote, _dec_vote),
        (VoteResp, _dec_vote_resp),
        (Heartbeat, _dec_heartbeat),
        (HeartbeatResp, _dec_heartbeat_resp),
        (InstallSnapshot, _dec_snapshot),
        (SnapshotResp, _dec_snapshot_resp),
        (TimeoutNow, _dec_timeout_now),
        (ReadIndex, _dec_read_index),
        (ReadIndexResp, _dec_read_index_resp),
    )
}


def _check_tables() -> None:
    """Import-time consistency of the three tables above; a mismatch is a bug here."""
    assert set(MESSAGE_TAGS) == set(MESSAGE_TYPES) == set(_ENCODERS), "untagged message"
    assert len(set(MESSAGE_TAGS.values())) == len(MESSAGE_TAGS), "tag reused"
    assert set(_DECODERS) == set(MESSAGE_TAGS.values()), "tag without decoder"


_check_tables()


# ---- public API -----------------------------------------------------------------------


def encode_message(msg: Message) -> bytes:
    """``msg`` as ``[tag, src, dst, term, ...]``. Raises TypeError for a non-message."""
    enc = _ENCODERS.get(type(msg))
    if enc is None:
        raise TypeError(f"not a Raft message: {type(msg).__name__}")
    return _pack(enc(msg))


def decode_message(data: bytes) -> Message:
    """Inverse of :func:`encode_message`; raises only CodecError on bad input."""
    f = _unpack(data)
    if type(f) is not tuple or not f or type(f[0]) is not int:
        _fail("message (want [tag, ...])", f)
    spec = _DECODERS.get(f[0])
    if spec is None:
        raise CodecError(f"unknown message tag {f[0]}")
    arity, dec = spec
    if len(f) != arity:
        raise CodecError(f"message tag {f[0]}: {len(f)} fields, want {arity}")
    return dec(f)


def encode_entry(e: Entry) -> bytes:
    return _pack(_entry_obj(e))


def decode_entry(data: bytes) -> Entry:
    return _entry(_unpack(data))


def encode_hard_state(hs: HardState) -> bytes:
    return _pack((hs.term, hs.vote, hs.commit))


def decode_hard_state(data: bytes) -> HardState:
    return _hard_state(_unpack(data))


def encode_snapshot_meta(m: SnapshotMeta) -> bytes:
    return _pack(_meta_obj(m))


def decode_snapshot_meta(data: bytes) -> SnapshotMeta:
    return _meta(_unpack(data))


def encode_conf_state(cs: ConfState) -> bytes:
    return _pack(_conf_obj(cs))


def decode_conf_state(data: bytes) -> ConfState:
    return _conf(_unpack(data))
