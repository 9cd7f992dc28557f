"""Operation histories: the records a test run writes, and the operations a checker reads.

A history is a sequence of *records*, one JSON object per line (JSON Lines)::

    {"process": 2, "type": "invoke", "f": "write", "key": "x", "value": 3, "time": 1200}
    {"process": 2, "type": "ok",     "f": "write", "key": "x", "value": 3, "time": 5100}

Each process runs one operation at a time: an ``invoke`` record, then at most one
completion by the same process. The completion's type is the client's knowledge of the
outcome, in Maelstrom's error model:

- ``ok``: it happened, and ``value`` is what it returned (a read's ok carries the value
  read; its invoke carries ``null``).
- ``fail``: it certainly did not take effect. With an ``error`` field (a code such as
  ``"UNAVAILABLE"``) it was refused for another reason and the checker drops it. Without
  one, a failed ``cas`` is an observation: the compare ran and the register differed
  from the expected value at that moment (porcupine's etcd model reads it so), and the
  checker uses it. Any other failed operation is dropped (a failed read constrains
  nothing).
- ``info``: unknown (timeout, crash): it may take effect at any time after its invoke, or
  never. An invoke that never completes is read as ``info``.

For ``cas`` the value is ``[expected, new]``. ``time`` is in integer nanoseconds from any
origin shared by all processes; only the order of times matters.

``read_history`` is the gateway: it validates every line and the invoke/complete
structure, raising ``HistoryError`` naming the line, so everything after it (pairing,
models, the checker) may trust its input.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

__all__ = [
    "UNKNOWN",
    "HistoryError",
    "OpInput",
    "Operation",
    "Record",
    "RecordType",
    "Status",
    "dump_history",
    "freeze",
    "load_history",
    "load_operations",
    "pair_operations",
    "parse_record",
    "read_history",
    "read_operations",
    "write_history",
]


class RecordType(enum.StrEnum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Status(enum.StrEnum):
    """What is known about an operation's effect once its record pair is read."""

    OK = "ok"  # it happened, with the output recorded
    FAIL = "fail"  # it certainly did not happen
    INFO = "info"  # unknown: it may have happened, at any time after its call, or never


class _Unknown(enum.Enum):
    UNKNOWN = "unknown"
    COMPARE_FAILED = "compare-failed"

    def __repr__(self) -> str:
        return self.name


# The output of an operation whose response was never seen (status INFO). A sentinel
# rather than None because None is a legitimate output (a read of a never-written key).
UNKNOWN: Final = _Unknown.UNKNOWN
# The output of a failed cas without an error: its compare ran and did not hold.
COMPARE_FAILED: Final = _Unknown.COMPARE_FAILED

_FIELDS: Final = ("process", "type", "f", "key", "value", "time")


class HistoryError(ValueError):
    """A history that cannot be checked: malformed JSON, a bad field, or records that do
    not pair up. ``line`` is 1-based, or None when the problem is not tied to a line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One line of a history, as written."""

    process: int
    type: RecordType
    f: str
    key: str
    value: Any
    time: int
    error: str | None = None  # fail only: why, when not a cas whose compare failed

    def to_json(self) -> dict[str, Any]:
        out = {
            "process": self.process,
            "type": str(self.type),
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "time": self.time,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


class OpInput(NamedTuple):
    """What a model sees of the invocation: the function and its (frozen) argument."""

    f: str
    value: Hashable


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """An invoke paired with its completion: the unit a linearizability checker orders.

    ``ret`` is ``math.inf`` for INFO operations: with no response, nothing bounds when
    (or whether) they took effect. ``output`` is the completion's value, frozen, or
    ``UNKNOWN`` for INFO operations. ``index`` is the operation's position in invoke order
    and ``line`` the 1-based line of its invoke record, for reports.
    """

    index: int
    line: int
    process: int
    f: str
    key: str
    call: int
    ret: float
    input: OpInput
    output: Hashable
    status: Status


def freeze(value: Any) -> Hashable:
    """JSON value -> hashable equivalent (lists become tuples, objects sorted item
    tuples), so model states built from values can be memoised in sets."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_record(obj: object, line: int | None = None) -> Record:
    """Validate one decoded JSON object as a record."""
    if not isinstance(obj, dict):
        raise HistoryError(f"expected a JSON object, got {type(obj).__name__}", line)
    missing = [name for name in _FIELDS if name not in obj]
    if missing:
        raise HistoryError(f"missing field(s) {', '.join(missing)}", line)
    process, rtype, f, key, time = (obj[n] for n in ("process", "type", "f", "key", "time"))
    if not _is_int(process):
        raise HistoryError(f"process must be an integer, got {process!r}", line)
    try:
        record_type = RecordType(rtype)
    except ValueError:
        choices = ", ".join(t.value for t in RecordType)
        raise HistoryError(f"type must be one of {choices}, got {rtype!r}", line) from None
    if not isinstance(f, str) or not f:
        raise HistoryError(f"f must be a non-empty string, got {f!r}", line)
    if not isinstance(key, str):
        raise HistoryError(f"key must be a string, got {key!r}", line)
    if not _is_int(time) or time < 0:
        raise HistoryError(f"time must be a non-negative integer (ns), got {time!r}", line)
    if f == "cas" and record_type is not RecordType.INFO:
        value = obj["value"]
        if not (isinstance(value, list) and len(value) == 2):
            raise HistoryError(f"cas value must be [expected, new], got {value!r}", line)
    error = obj.get("error")
    if error is not None and (
        not isinstance(error, str) or not error or record_type is not RecordType.FAIL
    ):
        raise HistoryError(f"error must be a non-empty string on a fail, got {error!r}", line)
    return Record(
        process=process, type=record_type, f=f, key=key, value=obj["value"], time=time, error=error
    )


def _numbered_records(lines: Iterable[str]) -> Iterator[tuple[int, Record]]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue  # blank lines (a trailing newline, say) carry nothing
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
        yield number, parse_record(obj, number)


def _pair(numbered: Iterable[tuple[int, Record]]) -> list[Operation]:
    """Pair invokes with completions by process, checking the structure as it goes."""
    ops: list[Operation | None] = []
    # process -> (op index, invoke line, invoke record) of its outstanding invoke
    open_: dict[int, tuple[int, int, Record]] = {}
    for line, rec in numbered:
        if rec.type is RecordType.INVOKE:
            if rec.process in open_:
                prior = open_[rec.process][1]
                raise HistoryError(
                    f"process {rec.process} invokes while its invoke on line {prior} is "
                    "still outstanding (one operation per process at a time)",
                    line,
                )
            open_[rec.process] = (len(ops), line, rec)
            ops.append(None)
            continue
        if rec.process not in open_:
            raise HistoryError(
                f"{rec.type} completion for process {rec.process} without an invoke", line
            )
        index, inv_line, inv = open_.pop(rec.process)
        if (rec.f, rec.key) != (inv.f, inv.key):
            raise HistoryError(
                f"completion {rec.f} on key {rec.key!r} does not match the invoke on line "
                f"{inv_line} ({inv.f} on key {inv.key!r})",
                line,
            )
        if rec.time < inv.time:
            raise HistoryError(
                f"completion at t={rec.time} precedes its invoke at t={inv.time} (line {inv_line})",
                line,
            )
        ops[index] = _operation(index, inv_line, inv, rec)
    for index, inv_line, inv in open_.values():
        ops[index] = _operation(index, inv_line, inv, None)
    return [op for op in ops if op is not None]


def _operation(index: int, line: int, inv: Record, done: Record | None) -> Operation:
    output: Hashable
    if done is None or done.type is RecordType.INFO:
        status, ret, output = Status.INFO, math.inf, UNKNOWN
    else:
        status = Status.OK if done.type is RecordType.OK else Status.FAIL
        ret, output = done.time, freeze(done.value)
        if status is Status.FAIL and inv.f == "cas" and done.error is None:
            output = COMPARE_FAILED  # an observation, kept by the checker
    return Operation(
        index=index,
        line=line,
        process=inv.process,
        f=inv.f,
        key=inv.key,
        call=inv.time,
        ret=ret,
        input=OpInput(inv.f, freeze(inv.value)),
        output=output,
        status=status,
    )


def pair_operations(history: Iterable[Record]) -> list[Operation]:
    """Turn records into operations, in invoke order (``Operation.line`` counts records
    from 1; ``read_operations`` gives true file lines).

    Raises ``HistoryError`` (numbering records from 1 as lines) for a completion without
    an invoke, a second invoke while one is outstanding, a completion that does not match
    its invoke, or one earlier than its invoke. Invokes never completed become INFO.
    """
    return _pair(enumerate(history, start=1))


def load_history(lines: Iterable[str]) -> list[Record]:
    """Parse and validate JSON lines (including the pairing rules) into records."""
    numbered = list(_numbered_records(lines))
    _pair(numbered)  # validation only: errors name the offending line
    return [rec for _, rec in numbered]


def load_operations(lines: Iterable[str]) -> list[Operation]:
    """Parse, validate and pair JSON lines; ``Operation.line`` is the true line number."""
    return _pair(_numbered_records(lines))


def read_history(source: str | Path | IO[str]) -> list[Record]:
    """Read a JSONL history from a path or text stream; see ``load_history``."""
    if isinstance(source, str | Path):
        with open(source, encoding="utf-8") as stream:
            return load_history(stream)
    return load_history(source)


def read_operations(source: str | Path | IO[str]) -> list[Operation]:
    """Read a JSONL history from a path or text stream; see ``load_operations``."""
    if isinstance(source, str | Path):
        with open(source, encoding="utf-8") as stream:
            return load_operations(stream)
    return load_operations(source)


def dump_history(records: Iterable[Record]) -> Iterator[str]:
    """Records as JSON lines (with newline), one per record, keys in a stable order."""
    for rec in records:
        yield json.dumps(rec.to_json(), separators=(", ", ": ")) + "\n"


def write_history(records: Iterable[Record], target: str | Path | IO[str]) -> None:
    """Write records as JSONL to a path or text stream."""
    if isinstance(target, str | Path):
        with open(target, "w", encoding="utf-8") as stream:
            stream.writelines(dump_history(records))
    else:
        target.writelines(dump_history(records))
