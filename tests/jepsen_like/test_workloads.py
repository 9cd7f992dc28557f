"""Workloads: the set checker on hand-made histories (lost, duplicated, invented,
recovered elements), the mapping of client outcomes to history completions, process
retirement after an unknown outcome, the workload catalog, and the list encoding of the
append workload."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jepsen_like.catalog import WORKLOADS, WorkloadError, workload_class
from jepsen_like.history import Record, RecordType, pair_operations, read_history
from jepsen_like.workload_append import decode_list, encode_list
from jepsen_like.workloads import (
    Recorder,
    WorkloadOptions,
    _perform,
    _Process,
    _Slots,
    check_set,
)
from kvstore.client import (
    BadRequest,
    ClientError,
    CompareFailed,
    Indeterminate,
    NotFound,
    SessionExpired,
    Unavailable,
)

pytestmark = pytest.mark.timeout(30)


class H:
    """A tiny history builder: ``h.add(p, e, "ok")`` records an invoke and completion."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.t = 0

    def _rec(self, p: int, t: RecordType, f: str, value: Any) -> None:
        self.t += 10
        self.records.append(Record(process=p, type=t, f=f, key="set", value=value, time=self.t))

    def add(self, p: int, element: int, outcome: str) -> H:
        self._rec(p, RecordType.INVOKE, "add", element)
        if outcome != "pending":
            self._rec(p, RecordType(outcome), "add", element)
        return self

    def read(self, p: int, elements: list[int] | None) -> H:
        self._rec(p, RecordType.INVOKE, "read", None)
        if elements is None:
            self._rec(p, RecordType.FAIL, "read", None)
        else:
            self._rec(p, RecordType.OK, "read", elements)
        return self

    def check(self) -> Any:
        return check_set(pair_operations(self.records))


def test_set_all_acknowledged_present_is_valid() -> None:
    r = H().add(0, 1, "ok").add(1, 2, "ok").add(0, 3, "fail").read(9, [1, 2]).check()
    assert r.valid is True
    assert (r.acknowledged, r.failed, r.read) == (2, 1, 2)
    assert r.lost == r.unexpected == r.duplicated == r.recovered == ()


def test_set_lost_acknowledged_add_is_invalid() -> None:
    r = H().add(0, 1, "ok").add(1, 2, "ok").add(2, 3, "ok").read(9, [1, 3]).check()
    assert r.valid is False
    assert r.lost == (2,)


def test_set_duplicated_element_is_invalid() -> None:
    r = H().add(0, 1, "ok").add(1, 2, "ok").read(9, [1, 2, 2]).check()
    assert r.valid is False
    assert r.duplicated == (2,) and r.read == 3


def test_set_invented_element_is_invalid() -> None:
    r = H().add(0, 1, "ok").read(9, [1, 42]).check()
    assert r.valid is False
    assert r.unexpected == (42,)


def test_set_definitely_failed_add_present_is_invalid() -> None:
    r = H().add(0, 1, "ok").add(1, 2, "fail").read(9, [1, 2]).check()
    assert r.valid is False
    assert r.unexpected == (2,)
    assert any("failed" in n for n in r.notes)


def test_set_unknown_adds_may_or_may_not_be_present() -> None:
    r = H().add(0, 1, "info").add(1, 2, "info").add(2, 3, "pending").add(3, 4, "ok")
    result = r.read(9, [2, 3, 4]).check()
    assert result.valid is True
    assert result.unknown == 3  # an invoke never completed counts as unknown
    assert result.recovered == (2, 3)


def test_set_without_a_successful_final_read_is_unknown() -> None:
    r = H().add(0, 1, "ok").read(9, None).check()
    assert r.valid is None and r.notes == ("no final read succeeded",)


def test_set_uses_the_last_successful_read() -> None:
    r = H().add(0, 1, "ok").read(8, [1]).add(0, 2, "ok").read(9, [1]).check()
    assert r.lost == (2,)
    json = r.to_json()
    assert json["lost_count"] == 1 and json["lost"] == [2]


# ---- outcomes -> completions ------------------------------------------------------------

OPTS = WorkloadOptions(endpoints=("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), concurrency=3)


def perform(f: str, call: Callable[[], Awaitable[Any]], timeout: float = 2.0) -> list[Record]:
    async def body() -> list[Record]:
        rec = Recorder()
        proc = _Process(0, OPTS)
        try:
            await _perform(rec, proc, f, "k0", None if f == "read" else 5, call, timeout)
        finally:
            await proc.close()
        return rec.records

    return asyncio.run(body())


def raising(exc: BaseException) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        raise exc

    return call


def returning(value: Any) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return value

    return call


async def _hang() -> None:
    await asyncio.sleep(60)


@pytest.mark.parametrize(
    ("f", "call", "expected"),
    [
        ("read", returning(7), ("ok", 7)),
        ("read", raising(NotFound("no")), ("ok", None)),  # a missing key reads as null
        ("read", raising(Unavailable("down")), ("fail", None)),
        ("write", returning(object()), ("ok", 5)),  # completions echo the written value
        ("write", raising(Unavailable("down")), ("fail", 5)),  # definite: not applied
        ("write", raising(SessionExpired("old")), ("fail", 5)),
        ("write", raising(BadRequest("bug")), ("fail", 5)),
        ("cas", raising(CompareFailed(None, 3)), ("fail", 5)),
        ("write", raising(Indeterminate("maybe")), ("info", 5)),  # unknown outcome
        ("write", raising(ClientError("closed")), ("info", 5)),
        ("write", raising(ConnectionResetError()), ("info", 5)),
        ("write", _hang, ("info", 5)),  # the harness's own timeout
    ],
)
def test_client_outcomes_map_to_maelstrom_completions(
    f: str, call: Callable[[], Awaitable[Any]], expected: tuple[str, Any]
) -> None:
    invoke, done = perform(f, call, timeout=0.2)
    assert invoke.type is RecordType.INVOKE and invoke.f == done.f == f
    assert (str(done.type), done.value) == expected
    assert done.time >= invoke.time


def test_info_retires_the_process_for_good() -> None:
    async def body() -> list[int]:
        slots = _Slots(OPTS)
        numbers = [p.number for p in slots.procs]
        numbers.append(slots.retire(1).number)
        numbers.append(slots.retire(1).number)
        numbers.append(slots.fresh().number)
        await slots.close()
        return numbers

    assert asyncio.run(body()) == [0, 1, 2, 4, 7, 8]


def test_processes_spread_over_home_nodes() -> None:
    async def body() -> list[str]:
        procs = [_Process(i, OPTS) for i in range(6)]
        homes = [p.home for p in procs]
        await asyncio.gather(*(p.close() for p in procs))
        return homes

    homes = asyncio.run(body())
    assert homes[:3] == list(OPTS.endpoints) and homes[3:] == homes[:3]


def test_recorder_streams_a_valid_history(tmp_path: Any) -> None:
    path = tmp_path / "history.jsonl"
    rec = Recorder(path)
    rec.add(0, RecordType.INVOKE, "write", "k0", 1)
    rec.add(0, RecordType.OK, "write", "k0", 1)
    rec.add(1, RecordType.INVOKE, "read", "k0", None)
    rec.close()
    assert read_history(path) == rec.records
    assert rec.counts() == {"ok": 1}


def test_every_workload_the_issue_names_exists() -> None:
    assert sorted(WORKLOADS) == ["append", "lease", "lock", "register", "set", "watch"]
    for name, cls in WORKLOADS.items():
        assert workload_class(name) is cls and cls.name == name


def test_unknown_workload_lists_the_choices() -> None:
    with pytest.raises(WorkloadError, match="append, lease, lock, register, set, watch"):
        workload_class("bank")


@pytest.mark.parametrize("elements", [[], [1], [3, 1, 20000]])
def test_append_lists_round_trip(elements: list[int]) -> None:
    assert decode_list(encode_list(elements)) == elements
