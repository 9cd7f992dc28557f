"""The replicated command format: the only bytes the KV state machine ever applies.

Theory of operation. A command is one msgpack array::

    [format_version, tag, header, *args]
    header = [client_id, seq, ack_seq, now_ms]

``format_version`` (currently :data:`FORMAT_VERSION`) lets a later release change the
layout wholesale; ``tag`` names the command kind from the explicit :data:`COMMAND_TAGS`
table, whose numbers are never reused (tag 4 is reserved for ``Txn``). Arguments follow
in dataclass field order; an absent optional argument is msgpack nil.

The header carries the client session of dissertation §6.3 (exactly-once): ``client_id``
names the session, ``seq`` numbers the request within it, ``ack_seq`` tells the state
machine that every ``seq <= ack_seq`` has been answered so its cached result may go, and
``now_ms`` is the proposing leader's wall clock. ``now_ms`` is the *only* way time
enters the state machine: it is in the log, so every replica sees the same value.

Decoding is the gateway (the etcd ``valid()`` discipline, as in raft/codec.py): log
bytes either become a well-typed ``(Header, Command)`` or raise :class:`CommandError`
-- never another exception type, never an allocation beyond the limits below. Types
are checked exactly (``True`` is not an int, ``str`` is not ``bytes``). Encoding runs
the same checks, so a request the server accepts is one every replica can decode
(REFERENCES: size limits that differ between layers fail only under load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack  # type: ignore[import-untyped]  # no stubs upstream

__all__ = [
    "CLIENT_ID_LEN",
    "COMMAND_TAGS",
    "FORMAT_VERSION",
    "MAX_COMMAND_BYTES",
    "MAX_INT",
    "MAX_KEY_LEN",
    "MAX_VALUE_LEN",
    "TXN_TAG",
    "Cas",
    "Command",
    "CommandError",
    "Delete",
    "Header",
    "Noop",
    "Put",
    "decode_command",
    "encode_command",
]

FORMAT_VERSION = 1
CLIENT_ID_LEN = 16
MAX_KEY_LEN = 4096
MAX_VALUE_LEN = 1 << 20
MAX_INT = 1 << 63
"""Exclusive upper bound of every integer field (seqs, clocks, versions)."""

MAX_COMMAND_BYTES = 2 * MAX_VALUE_LEN + MAX_KEY_LEN + 256
"""Largest encoded command: a Cas carries two values and a key, plus framing.
NB: raise deliberately when Txn lands (it carries many operations)."""

_MAX_ARRAY_LEN = 16  # widest array today is a Cas (7 items); raise for Txn


class CommandError(ValueError):
    """Bytes (or a value) that are not a valid command. The only error decoding raises."""


@dataclass(frozen=True, slots=True)
class Header:
    """Client session of the request (dissertation §6.3) and the leader's clock.

    Invariant (checked at the gateway): ``0 <= ack_seq < seq``."""

    client_id: bytes
    seq: int
    ack_seq: int
    now_ms: int


@dataclass(frozen=True, slots=True)
class Noop:
    """Header only: keeps a session alive and carries its ``ack_seq`` forward."""


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set: set ``key`` to ``new_value`` only if every given expectation holds.

    ``expected_value`` compares the current value (an absent key never matches);
    ``expected_version`` compares the etcd ``version`` of the key, where 0 means "the key
    must not exist" (etcd's ``version == 0`` compare), so ``expected_version=0`` is
    create-if-absent. At least one expectation must be given: a Cas without one would
    be a Put in disguise."""

    key: bytes
    expected_value: bytes | None
    expected_version: int | None
    new_value: bytes


Command = Noop | Put | Delete | Cas

COMMAND_TAGS: dict[type, int] = {Noop: 0, Put: 1, Delete: 2, Cas: 3}
"""Wire tag of each command class. Append only: a retired tag stays retired."""

TXN_TAG = 4
"""Reserved for ``Txn`` (etcd-style compare/then/else). Rejected until it exists."""

_TAG_TYPES: dict[int, type] = {tag: cls for cls, tag in COMMAND_TAGS.items()}

Obj = Any  # what msgpack hands back: validated field by field before use


# ---- field validators ---------------------------------------------------------------


def _fail(what: str, value: Obj) -> NoReturn:
    # Only scalars are shown: repr of a 1 MiB value would cost more than the input.
    shown = repr(value) if value is None or type(value) in (int, bool, float) else ""
    if type(value) is bytes:
        shown = f"of {len(value)} bytes"
    raise CommandError(f"bad {what}: {type(value).__name__} {shown}".rstrip())


def _int(v: Obj, what: str, low: int = 0) -> int:
    if type(v) is not int or not low <= v < MAX_INT:
        _fail(what, v)
    return v


def _bytes(v: Obj, what: str, low: int, high: int) -> bytes:
    if type(v) is not bytes or not low <= len(v) <= high:
        _fail(what, v)
    return v


def _key(v: Obj) -> bytes:
    return _bytes(v, "key", 1, MAX_KEY_LEN)


def _value(v: Obj, what: str = "value") -> bytes:
    return _bytes(v, what, 0, MAX_VALUE_LEN)


def _header(v: Obj) -> Header:
    if type(v) is not tuple or len(v) != 4:
        _fail("header (want array of 4)", v)
    client_id, seq, ack_seq, now_ms = v
    h = Header(
        _bytes(client_id, "client_id", CLIENT_ID_LEN, CLIENT_ID_LEN),
        _int(seq, "seq", low=1),
        _int(ack_seq, "ack_seq"),
        _int(now_ms, "now_ms"),
    )
    if h.ack_seq >= h.seq:
        # A client cannot have been answered for the request it is only now sending.
        raise CommandError(f"ack_seq {h.ack_seq} must be below seq {h.seq}")
    return h


def _command(tag: Obj, args: tuple[Obj, ...]) -> Command:
    if type(tag) is not int:
        _fail("tag", tag)
    if tag == TXN_TAG:
        raise CommandError("Txn (tag 4) is reserved and not supported yet")
    cls = _TAG_TYPES.get(tag)
    if cls is None:
        _fail("tag", tag)
    arity = {Noop: 0, Put: 2, Delete: 1, Cas: 4}[cls]
    if len(args) != arity:
        raise CommandError(f"{cls.__name__} takes {arity} arguments, got {len(args)}")
    if cls is Noop:
        return Noop()
    if cls is Put:
        return Put(_key(args[0]), _value(args[1]))
    if cls is Delete:
        return Delete(_key(args[0]))
    key, exp_value, exp_version, new_value = args
    cas = Cas(
        _key(key),
        None if exp_value is None else _value(exp_value, "expected_value"),
        None if exp_version is None else _int(exp_version, "expected_version"),
        _value(new_value, "new_value"),
    )
    if cas.expected_value is None and cas.expected_version is None:
        raise CommandError("Cas needs expected_value or expected_version")
    return cas


def _args(cmd: Command) -> list[Obj]:
    match cmd:
        case Noop():
            return []
        case Put(key, value):
            return [key, value]
        case Delete(key):
            return [key]
        case Cas(key, expected_value, expected_version, new_value):
            return [key, expected_value, expected_version, new_value]
    raise CommandError(f"not a command: {type(cmd).__name__}")  # pragma: no cover


def _header_obj(h: Header) -> list[Obj]:
    return [h.client_id, h.seq, h.ack_seq, h.now_ms]


def _unpack(data: bytes) -> Obj:
    """msgpack → Python objects, sizes bounded, every failure a CommandError.

    Maps, strings and ext types (timestamps included) are not part of the format and are
    refused by the unpacker itself, which bounds the work before validation starts."""
    if type(data) is not bytes:
        raise CommandError(f"command must be bytes, not {type(data).__name__}")
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            timestamp=0,
            ext_hook=_reject_ext,
            max_bin_len=MAX_VALUE_LEN,
            max_str_len=0,
            max_array_len=_MAX_ARRAY_LEN,
            max_map_len=0,
            max_ext_len=0,
        )
    except CommandError:
        raise
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise CommandError(f"malformed msgpack: {exc}") from exc


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise CommandError(f"msgpack ext type {code} is not part of the command format")


# ---- public API -----------------------------------------------------------------------


def decode_command(data: bytes) -> tuple[Header, Command]:
    """Log bytes → ``(Header, Command)``; raises only :class:`CommandError`."""
    obj = _unpack(data)
    if type(obj) is not tuple or len(obj) < 3:
        _fail("command (want array [version, tag, header, ...])", obj)
    version, tag, header, *args = obj
    if type(version) is not int or version != FORMAT_VERSION:
        _fail("format version", version)
    # Tag before header: an unknown kind is the more useful error.
    cmd = _command(tag, tuple(args))
    return _header(header), cmd


def encode_command(header: Header, cmd: Command) -> bytes:
    """``(Header, Command)`` → log bytes. Validates exactly as :func:`decode_command` does,
    raising :class:`CommandError`, so nothing the server proposes can be rejected later."""
    tag = COMMAND_TAGS.get(type(cmd))
    if tag is None:
        raise CommandError(f"not a command: {type(cmd).__name__}")
    if type(header) is not Header:
        raise CommandError(f"not a header: {type(header).__name__}")
    _header(tuple(_header_obj(header)))
    args = _args(cmd)
    _command(tag, tuple(args))
    data: bytes = msgpack.packb(
        [FORMAT_VERSION, tag, _header_obj(header), *args], use_bin_type=True
    )
    return data
