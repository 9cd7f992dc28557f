"""The lease checker on hand-made histories: an early and a late expiry are caught, a
revived lease too, and the legal histories next to them pass."""

from __future__ import annotations

from typing import Any

from jepsen_like.history import Record, RecordType, pair_operations
from jepsen_like.lease_check import NodeTimeline, check_leases

S = 1_000_000_000
ET = 0.5  # election timeout, s
TTL_MS = 2000


class H:
    """A history builder: one lease per name, times in seconds."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def op(
        self,
        f: str,
        call: float,
        ret: float | None,
        value: Any,
        out: Any,
        *,
        rtype: RecordType = RecordType.OK,
        error: str | None = None,
        key: str = "L1",
        process: int = 0,
    ) -> H:
        inv = Record(
            process=process, type=RecordType.INVOKE, f=f, key=key, value=value, time=int(call * S)
        )
        self.records.append(inv)
        if ret is not None:
            done = Record(
                process=process, type=rtype, f=f, key=key, value=out, time=int(ret * S), error=error
            )
            self.records.append(done)
        return self

    def granted(self, at: float = 0.0, lease: int = 7, key: str = "L1") -> H:
        self.op(
            "grant", at, at + 0.01, {"ttl_ms": TTL_MS, "plan": "keep"}, [lease, TTL_MS], key=key
        )
        return self.op("attach", at + 0.02, at + 0.03, lease, 5, key=key)

    def check(self, timeline: NodeTimeline | None = None) -> Any:
        self.records.sort(key=lambda r: r.time)
        return check_leases(
            pair_operations(self.records), election_timeout_s=ET, timeline=timeline, slack_s=1.0
        )


# ---- early expiry ------------------------------------------------------------------------


def test_a_key_gone_before_the_ttl_after_an_acknowledged_keepalive_is_early() -> None:
    h = H().granted().op("keepalive", 1.0, 1.05, 7, TTL_MS)
    h.op("read", 2.5, 2.51, None, None)  # gone at 2.51 < 1.0 + 2 - 0.02
    result = h.check()
    assert result.valid is False
    assert result.anomaly_counts == {"early-expiry": 1}
    assert "keepalive invoked at 1.000s" in result.anomalies["early-expiry"][0]["explanation"]


def test_a_keepalive_answered_not_found_right_after_the_grant_is_early() -> None:
    h = H().granted().op("keepalive", 0.5, 0.52, 7, None)
    assert h.check().anomaly_counts == {"early-expiry": 1}


def test_an_attach_refused_for_a_lease_just_granted_is_early() -> None:
    h = H().op("grant", 0.0, 0.01, {"ttl_ms": TTL_MS, "plan": "keep"}, [7, TTL_MS])
    h.op("attach", 0.02, 0.03, 7, None, rtype=RecordType.FAIL, error="LEASE_NOT_FOUND")
    assert h.check().anomaly_counts == {"early-expiry": 1}


def test_a_revocation_after_the_ttl_less_the_drift_allowance_is_legal() -> None:
    h = H().granted().op("keepalive", 1.0, 1.05, 7, TTL_MS)
    h.op("read", 2.9, 2.985, None, None)  # 2.985 >= 1.0 + 2 - 0.02
    h.op("ttl", 3.0, 3.01, 7, None)
    assert h.check().valid is True


def test_an_unacknowledged_keepalive_promises_nothing() -> None:
    h = H().granted().op("keepalive", 1.0, None, 7, None)  # never answered (info)
    fail = RecordType.FAIL
    h.op("keepalive", 1.6, 1.7, 7, None, rtype=fail, error="UNAVAILABLE", process=1)
    h.op("read", 2.5, 2.51, None, None, process=1)  # the grant promised until 1.98 only
    assert h.check().valid is True


def test_a_read_before_the_attach_was_acknowledged_is_no_evidence() -> None:
    h = H().op("grant", 0.0, 0.01, {"ttl_ms": TTL_MS, "plan": "keep"}, [7, TTL_MS])
    h.op("attach", 0.02, None, 7, None)  # unknown outcome: the key may never exist
    h.op("read", 0.5, 0.51, None, None, process=1)
    assert h.check().valid is True


# ---- late expiry -------------------------------------------------------------------------


def test_an_abandoned_lease_still_answering_after_its_bound_is_late() -> None:
    h = H().granted()  # abandoned: never kept alive
    # bound: 0 + 2 + 0 changes + 0 leaderless + 0.5 ET + 1.0 slack = 3.5 s
    h.op("ttl", 3.6, 3.61, 7, 400)
    result = h.check()
    assert result.anomaly_counts == {"late-expiry": 1}
    assert "after 3.500s" in result.anomalies["late-expiry"][0]["explanation"]


def test_a_key_still_found_after_the_bound_is_late_and_before_it_is_not() -> None:
    early = H().granted().op("read", 3.4, 3.41, None, 7)
    assert early.check().valid is True
    late = H().granted().op("read", 3.6, 3.61, None, 7)
    assert late.check().anomaly_counts == {"late-expiry": 1}


def test_leader_changes_and_leaderless_time_widen_the_late_bound() -> None:
    h = H().granted().op("read", 7.0, 7.01, None, 7)
    assert h.check().anomaly_counts == {"late-expiry": 1}
    # n1 leads in term 1, loses it at 1 s, nobody leads until n2 at 2 s (term 2): one
    # change (+ TTL + ET = 2.5 s) and 1 s leaderless: bound 3.5 + 3.5 = 7 s... and a
    # little more for the poll interval's look-ahead (the term is counted by 7.5 s).
    samples = [
        (0, "n1", "leader", 1),
        (0, "n2", "follower", 1),
        (1 * S, "n1", "no answer", None),
        (2 * S, "n2", "leader", 2),
    ]
    timeline = NodeTimeline(samples, 0.5)
    assert timeline.changes(0, 7 * S) == 1
    assert timeline.leaderless_ns(0, 7 * S) == 1 * S
    h2 = H().granted().op("read", 6.9, 6.91, None, 7)
    assert h2.check(timeline).valid is True
    h3 = H().granted().op("read", 7.2, 7.21, None, 7)
    assert h3.check(timeline).anomaly_counts == {"late-expiry": 1}


def test_a_deposed_leader_in_an_old_term_is_no_leader() -> None:
    samples = [(0, "n1", "leader", 1), (1 * S, "n2", "candidate", 2), (3 * S, "n2", "leader", 2)]
    timeline = NodeTimeline(samples, 0.5)
    assert timeline.leaderless_ns(0, 10 * S) == 2 * S


def test_keepalives_move_the_late_bound() -> None:
    h = H().granted()
    for i in range(1, 8):
        h.op("keepalive", i * 0.5, i * 0.5 + 0.01, 7, TTL_MS)
    h.op("read", 6.9, 6.91, None, 7)  # last keepalive invoked at 3.5: bound 7.0
    assert h.check().valid is True


# ---- revived -------------------------------------------------------------------------------


def test_a_lease_alive_after_its_revocation_was_seen_is_revived() -> None:
    h = H().granted().op("read", 2.5, 2.51, None, None)
    h.op("ttl", 2.6, 2.61, 7, 100)
    assert h.check().anomaly_counts == {"revived": 1}


def test_no_lease_granted_is_unknown() -> None:
    h = H().op("grant", 0.0, 0.5, {"ttl_ms": TTL_MS, "plan": "keep"}, None, rtype=RecordType.FAIL)
    assert h.check().valid is None
