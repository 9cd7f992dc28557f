"""The evidence: fault windows paired from the timeline, statistics from a hand-made
history, and a report.html that is one self-contained, well-formed page."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from jepsen_like.history import Record, RecordType
from jepsen_like.nemesis import TimelineEvent
from jepsen_like.report import culprit_context, fault_windows, summarize, write_evidence
from jepsen_like.svg import Band, Series, line_chart, scatter

pytestmark = pytest.mark.timeout(30)

S = 1_000_000_000


def rec(p: int, t: str, f: str, value: object, time_s: float) -> Record:
    return Record(process=p, type=RecordType(t), f=f, key="k0", value=value, time=int(time_s * S))


HISTORY = [
    rec(0, "invoke", "write", 1, 0.5),
    rec(0, "ok", "write", 1, 0.6),
    rec(1, "invoke", "read", None, 2.1),
    rec(1, "ok", "read", 1, 2.2),
    rec(0, "invoke", "write", 2, 2.5),
    rec(0, "info", "write", 2, 3.5),
    rec(2, "invoke", "cas", [1, 3], 3.6),
    rec(2, "fail", "cas", [1, 3], 3.7),
    rec(1, "invoke", "read", None, 4.5),
]
TIMELINE = [
    TimelineEvent(2 * S, "start", 0, "partition-leader", {"isolated": "n1"}),
    TimelineEvent(4 * S, "stop", 0, "partition-leader", {}),
    TimelineEvent(int(4.2 * S), "start", 1, "kill-all", {"killed": ["n1", "n2", "n3"]}),
    TimelineEvent(5 * S, "heal", None, "all", {"restarted": ["n1", "n2", "n3"]}),
]


def test_fault_windows_pair_starts_with_stops_or_the_final_heal() -> None:
    windows = fault_windows(TIMELINE, end_ns=6 * S)
    assert [(w["kind"], w["start_s"], w["end_s"]) for w in windows] == [
        ("partition-leader", 2.0, 4.0),
        ("kill-all", 4.2, 5.0),
    ]
    open_ended = fault_windows(TIMELINE[:3], end_ns=6 * S)
    assert open_ended[-1]["end_s"] == 6.0


def test_summarize_counts_throughput_and_faults() -> None:
    stats = summarize(HISTORY, TIMELINE, workload_start_ns=0, workload_end_ns=5 * S)
    assert stats["invocations"] == 5
    assert stats["by_type"] == {"ok": 2, "info": 1, "fail": 1, "pending": 1}
    assert stats["by_f"] == {"cas": {"fail": 1}, "read": {"ok": 1}, "write": {"ok": 1, "info": 1}}
    assert stats["ops_per_s"] == 0.8  # 4 completions in 5 s
    assert stats["latency_ms"]["write"]["p50"] == pytest.approx(100.0)
    part = stats["by_fault_kind"]["partition-leader"]
    assert part["count"] == 1 and part["seconds"] == 2.0
    assert part["ops"] == {"ok": 1, "info": 1, "fail": 1}  # completions at 2.2, 3.5, 3.7
    assert stats["healthy"]["ops"] == {"ok": 1}


def test_report_is_self_contained_and_well_formed(tmp_path: Path) -> None:
    stats = summarize(HISTORY, TIMELINE, workload_start_ns=0, workload_end_ns=5 * S)
    ce = {
        "key": "k0",
        "explanation": "read() -> 1 by process 1 [t=1..2] cannot follow: the latest possible "
        "values are {2}",
        "prefix": [
            {"line": 1, "process": 0, "description": "write(2)", "call": 1, "return": 2,
             "status": "ok", "index": 0},
        ],
        "state": "2",
        "blocking": {"index": 1},
        "candidates": [
            {"index": 1, "line": 3, "process": 1, "description": "read() -> 1", "call": 3,
             "return": 4, "status": "ok", "legal_after_prefix": False},
        ],
    }  # fmt: skip
    results = {
        "verdict": "invalid",
        "valid": False,
        "error": None,
        "run": {"workload": "register", "nemesis_kinds": ["partition-leader"], "seed": 5},
        "checkers": {
            "linearizable": {
                "valid": False,
                "summary": "not <linearizable>",
                "partitions": [{"key": "k0", "counterexample": ce}],
            }
        },
        "stats": stats,
    }
    write_evidence(tmp_path, results, HISTORY, TIMELINE)
    html = (tmp_path / "report.html").read_text()
    assert "INVALID" in html and "cannot follow" in html and "Counter-example" in html
    assert "&lt;linearizable&gt;" in html, "text is escaped"
    assert "&amp;" not in html, "nothing is escaped twice"
    assert not re.search(r"""(src|href)=["']?https?:""", html), "no external assets"
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 2
    for svg in svgs:
        ET.fromstring(svg)  # well-formed XML
    assert "partition-leader" in svgs[0]  # the fault window is shaded and labelled
    timeline = [json.loads(x) for x in (tmp_path / "nemesis.jsonl").read_text().splitlines()]
    assert [e["event"] for e in timeline] == ["start", "stop", "start", "heal"]
    assert json.loads((tmp_path / "results.json").read_text())["verdict"] == "invalid"


def test_charts_survive_empty_and_degenerate_data() -> None:
    for chart in (
        scatter([], [], x_max=0.0, x_label="t", y_label="ms"),
        line_chart([Series("ok", "#0f0", [(0.0, 0.0)])], [Band(0, 0, "x", "#f00")],
                   x_max=1.0, x_label="t", y_label="n"),
    ):  # fmt: skip
        ET.fromstring(chart)


def test_culprit_context_names_the_home_node_and_the_fault_in_force() -> None:
    stats = summarize(HISTORY, TIMELINE, workload_start_ns=0, workload_end_ns=5 * S)
    results = {"run": {"nodes": 3}, "stats": stats}
    inside = culprit_context(results, {"process": 4, "call": int(2.5 * S)})
    assert inside.startswith("Process 4 (home node n2) invoked it at t=2.500s, during ")
    assert "partition-leader" in inside and '"isolated": "n1"' in inside
    outside = culprit_context(results, {"process": 0, "call": int(1.0 * S)})
    assert outside.endswith("with no fault in force.")


def test_report_shows_anomalies_of_elle_watch_and_lock_checkers(tmp_path: Path) -> None:
    stats = summarize(HISTORY, TIMELINE, workload_start_ns=0, workload_end_ns=5 * S)
    examples = [{"explanation": f"op {i} <saw> stale data"} for i in range(8)]
    results = {
        "verdict": "invalid",
        "valid": False,
        "error": None,
        "run": {"workload": "append", "nemesis_kinds": ["partition-leader"], "seed": 5},
        "checkers": {
            "elle-list-append": {
                "valid": False,
                "summary": "INVALID",
                "anomalies": {"G-single-realtime": examples},
                "anomaly_counts": {"G-single-realtime": 41},
            },
            "watch": {"valid": True, "summary": "ok", "anomalies": {}},
        },
        "stats": stats,
    }
    write_evidence(tmp_path, results, HISTORY, TIMELINE)
    html = (tmp_path / "report.html").read_text()
    assert "Counter-example" in html and "G-single-realtime (41)" in html
    assert "op 0 &lt;saw&gt; stale data" in html and "op 4 " in html
    assert "op 5 " not in html, "a few examples per kind; results.json has the rest"


# ---- faults that ran, latencies off the scale, node roles, evidence ---------------------


def _evidence(status: str, check: str, ok: bool) -> dict[str, object]:
    return {"status": status, "checks": [{"check": check, "ok": ok, "observed": "seen"}]}


def test_overlapping_windows_leave_healthy_time_as_their_union() -> None:
    timeline = [
        TimelineEvent(1 * S, "start", 0, "latency", {}),
        TimelineEvent(2 * S, "start", 1, "pause-one", {}),
        TimelineEvent(3 * S, "stop", 0, "latency", {}),
        TimelineEvent(4 * S, "stop", 1, "pause-one", {}),
        TimelineEvent(5 * S, "heal", None, "all", {}),
    ]
    stats = summarize(HISTORY, timeline, workload_start_ns=0, workload_end_ns=5 * S)
    assert stats["healthy"]["seconds"] == 2.0  # 5 s minus the union [1, 4]


def test_scatter_draws_points_above_the_cap_as_markers_not_clipped() -> None:
    svg = scatter(
        [Series("ok", "#0f0", [(1.0, 5.0), (2.0, 50.0), (3.0, 90_000.0)])],
        [],
        x_max=4.0,
        x_label="t",
        y_label="ms",
        y_cap=8000.0,
        pending=[3.5],
    )
    ET.fromstring(svg)
    assert svg.count("<circle") == 2, "the two points under the cap"
    assert svg.count("<path") == 2, "one marker above the cap, one never completed"
    assert "1 above 8000 (max 90000)" in svg and "1 never completed" in svg
    plain = scatter(
        [Series("ok", "#0f0", [(1.0, 5.0), (3.0, 90_000.0)])], [], x_max=4.0, x_label="", y_label=""
    )
    assert plain.count("<circle") == 2 and "above" not in plain


def test_report_names_the_faults_that_ran_shows_node_roles_and_evidence(tmp_path: Path) -> None:
    timeline = [
        TimelineEvent(
            1 * S,
            "start",
            0,
            "kill-one",
            {"killed": ["n2"], "evidence": _evidence("verified", "n2 pid 7 gone", True)},
        ),
        TimelineEvent(
            2 * S,
            "stop",
            0,
            "kill-one",
            {"restarted": {"n2": 8}, "evidence": _evidence("verified", "n2 pid 8 alive", True)},
        ),
        TimelineEvent(
            3 * S,
            "start",
            1,
            "membership",
            {"evidence": _evidence("unverified", "Raft directory empty", False)},
        ),
        TimelineEvent(4 * S, "heal", None, "all", {}),
    ]
    stats = summarize(HISTORY, timeline, workload_start_ns=0, workload_end_ns=5 * S)
    results = {
        "verdict": "unknown",
        "valid": None,
        "run": {
            "workload": "register",
            "nemesis_kinds": ["kill-one", "kill-all", "pause-one", "membership"],
            "faults_ran": ["kill-one", "membership"],
            "nodes": 3,
            "options": {"op_deadline": 4.0},
            "heal": {"evidence": _evidence("verified", "no link in drop mode", True)},
        },
        "checkers": {"faults": {"valid": None, "summary": "NOT every fault verified"}},
        "stats": stats,
        "node_states": {
            "n1": [{"start_s": 0.0, "end_s": 5.0, "state": "leader", "term": 2}],
            "n2": [
                {"start_s": 0.0, "end_s": 1.0, "state": "follower", "term": 2},
                {"start_s": 1.0, "end_s": 2.0, "state": "down", "term": None},
            ],
        },
    }
    write_evidence(tmp_path, results, HISTORY, timeline)
    html = (tmp_path / "report.html").read_text()
    title = re.search(r"<h1>(.*?)</h1>", html)
    assert title and "kill-one, membership" in title[1] and "pause-one" not in title[1]
    assert "<h2>Nodes</h2>" in html and "n2 down: 1.0s" in html
    assert "Fault verification" in html
    assert "\u2717 Raft directory empty" in html and "\u2713 n2 pid 7 gone" in html
    assert "final heal" in html
    lines = (tmp_path / "nemesis.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["details"]["evidence"]["status"] == "verified"
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ET.fromstring(svg)
