"""One deterministic line of text per Raft value (etcd's ``DescribeMessage``).

The output feeds logs, simulator failure traces and golden files of scenario tests, so
it must depend on nothing but the value: memberships are printed in natural order
(``n2`` before ``n10``), never in set iteration order, which varies with hash seeds.

Conventions: ``a/b`` is always ``term/index``; flags (``reject``, ``pre-vote``) appear
only when set; byte strings print as ``b'...'`` when short and printable, else as a
length (``300B``), so opaque payloads never flood a trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

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
    ConfState,
    Entry,
    EntryKind,
    HardState,
    NodeId,
    ReadState,
    SnapshotMeta,
    SoftState,
)

if TYPE_CHECKING:
    from raft.core.ready import Ready

__all__ = [
    "describe_bytes",
    "describe_conf_change",
    "describe_conf_state",
    "describe_entries",
    "describe_entry",
    "describe_hard_state",
    "describe_message",
    "describe_read_state",
    "describe_ready",
    "describe_snapshot_meta",
    "describe_soft_state",
]

_SHORT_BYTES = 16
_DIGITS = re.compile(r"([0-9]+)")


def describe_bytes(b: bytes) -> str:
    """``b'abc'`` if at most 16 printable ASCII bytes, else the length, e.g. ``300B``."""
    if len(b) <= _SHORT_BYTES and all(0x20 <= c < 0x7F for c in b):
        return repr(b)
    return f"{len(b)}B"


def _natural_key(node: NodeId) -> tuple[list[str | int], NodeId]:
    # re.split with one group alternates text, digits, text...: odd positions are digits,
    # so positions always compare like with like. The id itself breaks ties (n01 vs n1).
    parts: list[str | int] = [int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(node))]
    return parts, node


def _nodes(nodes: Iterable[NodeId]) -> str:
    return "[" + " ".join(sorted(nodes, key=_natural_key)) + "]"


def describe_conf_state(cs: ConfState) -> str:
    """``voters=[n1 n2 n3]``, plus `` learners=[n4]`` when there are learners."""
    text = f"voters={_nodes(cs.voters)}"
    return f"{text} learners={_nodes(cs.learners)}" if cs.learners else text


def describe_conf_change(cc: ConfChange) -> str:
    """``add-voter n4``, ``add-learner n5``, ``remove-node n2``."""
    return f"{cc.kind.name.lower().replace('_', '-')} {cc.node}"


def describe_entry(e: Entry) -> str:
    """``2/6 normal b'put x'``, ``2/6 normal 300B``, ``2/7 conf add-voter n4``."""
    if e.kind is EntryKind.CONF_CHANGE:
        try:
            body = describe_conf_change(ConfChange.decode(e.data))
        except ValueError:
            body = f"<undecodable {describe_bytes(e.data)}>"
        return f"{e.term}/{e.index} conf {body}"
    return f"{e.term}/{e.index} {e.kind.name.lower()} {describe_bytes(e.data)}"


def describe_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in entries) + "]"


def describe_hard_state(hs: HardState) -> str:
    """``term=2 vote=n1 commit=5``; ``vote`` is left out when no vote was cast."""
    vote = "" if hs.vote is None else f" vote={hs.vote}"
    return f"term={hs.term}{vote} commit={hs.commit}"


def describe_soft_state(ss: SoftState) -> str:
    """``role=leader leader=n1``; ``leader`` is left out when unknown."""
    leader = "" if ss.leader is None else f" leader={ss.leader}"
    return f"role={ss.role.value}{leader}"


def describe_snapshot_meta(m: SnapshotMeta) -> str:
    """``2/100 voters=[n1 n2 n3]``: term/index of the last covered entry, then members."""
    return f"{m.term}/{m.index} {describe_conf_state(m.conf)}"


def describe_read_state(rs: ReadState) -> str:
    return f"index={rs.index} ctx={describe_bytes(rs.ctx)}"


def _flags(**flags: bool) -> str:
    return "".join(f" {name.replace('_', '-')}" for name, on in flags.items() if on)


def _ctx(ctx: bytes) -> str:
    return f" ctx={describe_bytes(ctx)}" if ctx else ""


def _body(m: Message) -> str:
    """Everything after ``src->dst Kind term=N``."""
    match m:
        case AppendEntries():
            entries = f" entries={describe_entries(m.entries)}" if m.entries else ""
            return f" prev={m.prev_term}/{m.prev_index} commit={m.commit}{entries}"
        case AppendResp():
            hint = f" hint={m.hint_term}/{m.hint_index}" if m.reject else ""
            return f" index={m.index}{_flags(reject=m.reject)}{hint}"
        case RequestVote():
            flags = _flags(pre_vote=m.pre_vote, transfer=m.transfer)
            return f" last={m.last_term}/{m.last_index}{flags}"
        case VoteResp():
            return f" {'granted' if m.granted else 'reject'}{_flags(pre_vote=m.pre_vote)}"
        case Heartbeat():
            return f" commit={m.commit}{_ctx(m.ctx)}"
        case HeartbeatResp():
            return _ctx(m.ctx)
        case InstallSnapshot():
            snap = describe_snapshot_meta(m.meta)
            return f" snap={snap} offset={m.offset} len={len(m.data)}{_flags(done=m.done)}"
        case SnapshotResp():
            return f" index={m.index} offset={m.offset}{_flags(reject=m.reject)}"
        case TimeoutNow():
            return ""
        case ReadIndex():
            return f" ctx={describe_bytes(m.ctx)}"
        case ReadIndexResp():
            return f" index={m.index} ctx={describe_bytes(m.ctx)}{_flags(reject=m.reject)}"
    raise TypeError(f"not a Raft message: {type(m).__name__}")


def describe_message(m: Message) -> str:
    """``n1->n2 AppendEntries term=2 prev=1/5 commit=5 entries=[2/6 normal b'x']``."""
    body = _body(m)  # first: it raises TypeError for a non-message
    return f"{m.src}->{m.dst} {type(m).__name__} term={m.term}{body}"


def describe_ready(rd: Ready) -> str:
    """One line per non-empty field, one indented line per entry, message, read state.

    An empty Ready is ``<empty Ready>`` so a golden file still shows that one was taken.
    """
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"SoftState {describe_soft_state(rd.soft_state)}")
    if rd.hard_state is not None:
        lines.append(f"HardState {describe_hard_state(rd.hard_state)}")
    if rd.entries:
        lines.append("Entries:")
        lines.extend(f"  {describe_entry(e)}" for e in rd.entries)
    if rd.snapshot is not None:
        meta, size = describe_snapshot_meta(rd.snapshot.meta), len(rd.snapshot.data)
        lines.append(f"Snapshot {meta} len={size}")
    if rd.messages:
        lines.append("Messages:")
        lines.extend(f"  {describe_message(m)}" for m in rd.messages)
    if rd.committed_entries:
        lines.append("CommittedEntries:")
        lines.extend(f"  {describe_entry(e)}" for e in rd.committed_entries)
    if rd.read_states:
        lines.append("ReadStates:")
        lines.extend(f"  {describe_read_state(rs)}" for rs in rd.read_states)
    if rd.must_sync:
        lines.append("MustSync")
    return "\n".join(lines) if lines else "<empty Ready>"
