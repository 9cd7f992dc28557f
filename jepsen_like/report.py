"""The run directory: the evidence a reader needs to believe (or doubt) a verdict.

``write_evidence`` leaves, in the run directory:

- ``history.jsonl``: every operation record (written live by the recorder);
- ``nemesis.jsonl``: the fault timeline, one event per line;
- ``logs/<node>.log`` and ``logs/<node>.out``: copies of every node's log and output;
- ``config/<node>.toml``: each node's view of the cluster (written at start);
- ``results.json``: verdicts, operation counts, throughput and latency, per-fault stats;
- ``report.html``: one self-contained page (inline SVG, no external assets) with the
  latency scatter and throughput over time, fault windows shaded, and the checker's
  counter-example when there is one.

``summarize`` is pure: records and timeline in, statistics out.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from jepsen_like.history import Record, RecordType
from jepsen_like.nemesis import TimelineEvent
from jepsen_like.svg import Band, Series, line_chart, scatter, state_rows

__all__ = [
    "Window",
    "copy_logs",
    "culprit_context",
    "fault_windows",
    "render_html",
    "summarize",
    "write_evidence",
]

_NS = 1_000_000_000
_COLORS = {"ok": "#2a9d2a", "fail": "#d62728", "info": "#e0a800"}
_BAND_COLORS = {
    "partition": "#1f77b4",
    "kill": "#d62728",
    "pause": "#9467bd",
    "latency": "#ff7f0e",
    "drop": "#8c564b",
}
_STATE_COLORS = {
    "leader": "#2a9d2a",
    "follower": "#9ecae1",
    "candidate": "#ff7f0e",
    "pre-candidate": "#fdd0a2",
    "down": "#d62728",
    "paused": "#9467bd",
    "no answer": "#bbbbbb",
}


class Window(dict[str, Any]):
    """A fault window: id, kind, start/end (s), details. A dict, so it is JSON as is."""


def fault_windows(timeline: Sequence[TimelineEvent], end_ns: int) -> list[Window]:
    """Pair each start with its stop (or the final heal, or ``end_ns``)."""
    open_: dict[int, TimelineEvent] = {}
    windows: list[Window] = []
    for ev in timeline:
        if ev.event == "start" and ev.fault is not None:
            open_[ev.fault] = ev
        elif ev.event in ("stop", "error") and ev.fault is not None and ev.fault in open_:
            start = open_.pop(ev.fault)
            windows.append(_window(start, ev.time, ev.details))
        elif ev.event == "heal":
            for fid in list(open_):
                windows.append(_window(open_.pop(fid), ev.time, ev.details))
    windows += [_window(ev, end_ns, {}) for ev in open_.values()]
    return sorted(windows, key=lambda w: w["start_s"])


def _window(start: TimelineEvent, end_ns: int, stop_details: dict[str, Any]) -> Window:
    return Window(
        id=start.fault,
        kind=start.kind,
        start_s=start.time / _NS,
        end_s=end_ns / _NS,
        details=start.details,
        stop_details=stop_details,
    )


def _group(kind: str) -> str:
    return kind.split("-", 1)[0]


def _completions(records: Sequence[Record]) -> list[tuple[Record, Record]]:
    """(invoke, completion) pairs, in completion order."""
    open_: dict[int, Record] = {}
    pairs = []
    for rec in records:
        if rec.type is RecordType.INVOKE:
            open_[rec.process] = rec
        elif (inv := open_.pop(rec.process, None)) is not None:
            pairs.append((inv, rec))
    return pairs


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, math.ceil(p * len(s)) - 1)], 2)

    return {"n": len(s), "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": round(s[-1], 2)}


def summarize(
    records: Sequence[Record],
    timeline: Sequence[TimelineEvent],
    *,
    workload_start_ns: int,
    workload_end_ns: int,
) -> dict[str, Any]:
    """Operation counts, throughput, latency, and the same per fault kind."""
    pairs = _completions(records)
    invoked = sum(1 for r in records if r.type is RecordType.INVOKE)
    in_run = [(i, c) for i, c in pairs if workload_start_ns <= c.time <= workload_end_ns]
    duration = max(1e-9, (workload_end_ns - workload_start_ns) / _NS)
    by_f: dict[str, Counter[str]] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    for inv, done in pairs:
        by_f[inv.f][str(done.type)] += 1
        if done.type is RecordType.OK:
            latency[inv.f].append((done.time - inv.time) / 1e6)
    by_type = Counter(str(c.type) for _, c in pairs)
    by_type["pending"] = invoked - len(pairs)
    windows = fault_windows(timeline, workload_end_ns)
    for w in windows:
        lo, hi = w["start_s"] * _NS, w["end_s"] * _NS
        inside = Counter(str(c.type) for _, c in pairs if lo <= c.time < hi)
        secs = max(1e-9, w["end_s"] - w["start_s"])
        w["ops"] = dict(inside)
        w["ops_per_s"] = round(sum(inside.values()) / secs, 1)
        w["ok_per_s"] = round(inside["ok"] / secs, 1)
    by_kind: dict[str, dict[str, Any]] = {}
    for w in windows:
        k = by_kind.setdefault(w["kind"], {"count": 0, "seconds": 0.0, "ops": Counter()})
        k["count"] += 1
        k["seconds"] += w["end_s"] - w["start_s"]
        k["ops"].update(w["ops"])
    for k in by_kind.values():
        k["ops_per_s"] = round(sum(k["ops"].values()) / max(1e-9, k["seconds"]), 1)
        k["ok_per_s"] = round(k["ops"]["ok"] / max(1e-9, k["seconds"]), 1)
        k["seconds"] = round(k["seconds"], 2)
        k["ops"] = dict(k["ops"])
    faulty = [(w["start_s"] * _NS, w["end_s"] * _NS) for w in windows]
    healthy = Counter(
        str(c.type) for _, c in in_run if not any(lo <= c.time < hi for lo, hi in faulty)
    )
    healthy_s = duration - _covered(faulty, workload_start_ns, workload_end_ns) / _NS
    return {
        "invocations": invoked,
        "by_type": dict(by_type),
        "by_f": {f: dict(c) for f, c in sorted(by_f.items())},
        "workload_seconds": round(duration, 2),
        "ops_per_s": round(len(in_run) / duration, 1),
        "ok_per_s": round(sum(1 for _, c in in_run if c.type is RecordType.OK) / duration, 1),
        "latency_ms": {f: _percentiles(v) for f, v in sorted(latency.items())},
        "healthy": {
            "seconds": round(healthy_s, 2),
            "ops": dict(healthy),
            "ok_per_s": round(healthy["ok"] / max(1e-9, healthy_s), 1),
        },
        "faults": windows,
        "by_fault_kind": by_kind,
    }


def _covered(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``spans`` within ``[lo, hi]`` (windows may overlap under
    ``--nemesis all``)."""
    total, reach = 0.0, lo
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, hi)
        if b > a:
            total += b - a
            reach = b
    return total


def copy_logs(data_dirs: dict[str, Path], run_dir: Path) -> list[str]:
    """Copy each node's node.log and node.out into ``run_dir/logs``."""
    out = run_dir / "logs"
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for node, d in sorted(data_dirs.items()):
        for name, suffix in (("node.log", "log"), ("node.out", "out")):
            src = d / name
            if src.exists():
                dst = out / f"{node}.{suffix}"
                shutil.copyfile(src, dst)
                copied.append(str(dst.relative_to(run_dir)))
    return copied


def write_evidence(
    run_dir: Path,
    results: dict[str, Any],
    records: Sequence[Record],
    timeline: Sequence[TimelineEvent],
) -> None:
    with open(run_dir / "nemesis.jsonl", "w", encoding="utf-8") as f:
        for ev in timeline:
            f.write(json.dumps(ev.to_json(), default=str) + "\n")
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (run_dir / "report.html").write_text(render_html(results, records), encoding="utf-8")


# ---- report.html ---------------------------------------------------------------------

_CSS = """
body{font-family:sans-serif;margin:24px;max-width:1000px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.valid{color:#2a9d2a;font-weight:bold}.invalid{color:#d62728;font-weight:bold}
.unknown{color:#b8860b;font-weight:bold} code,pre{font-size:12px;background:#f6f6f6}
pre{padding:8px;overflow-x:auto}
"""


_VERDICT_WORDS = {True: "valid", False: "INVALID", None: "unknown"}


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _charts(results: dict[str, Any], records: Sequence[Record]) -> str:
    stats = results.get("stats", {})
    bands = [
        Band(w["start_s"], w["end_s"], w["kind"], _BAND_COLORS.get(_group(w["kind"]), "#777"))
        for w in stats.get("faults", [])
    ]
    pairs = _completions(records)
    x_max = max([c.time / _NS for _, c in pairs] + [1.0])
    points: dict[str, list[tuple[float, float]]] = {"ok": [], "fail": [], "info": []}
    for inv, done in pairs:
        points[str(done.type)].append((inv.time / _NS, max(0.01, (done.time - inv.time) / 1e6)))
    series = [Series(t, _COLORS[t], _thin(pts)) for t, pts in points.items()]
    deadline = results.get("run", {}).get("options", {}).get("op_deadline")
    lat = scatter(
        series,
        bands,
        x_max=x_max,
        x_label="time (s)",
        y_label="latency (ms, log)",
        # Beyond twice the per-operation deadline the scale would only squash the rest:
        # those points are drawn as markers on the top edge, counted, max given.
        y_cap=2000.0 * deadline if deadline else None,
        pending=[r.time / _NS for r in _pending(records)],
    )
    buckets: dict[str, Counter[int]] = {t: Counter() for t in points}
    for _, done in pairs:
        buckets[str(done.type)][int(done.time // _NS)] += 1
    seconds = range(int(x_max) + 1)
    thr = line_chart(
        [
            Series(t, _COLORS[t], [(s + 0.5, float(buckets[t][s])) for s in seconds])
            for t in buckets
        ],
        bands,
        x_max=x_max,
        x_label="time (s)",
        y_label="completions / s",
    )
    nodes = results.get("node_states") or {}
    rows = {
        node: [(s["start_s"], s["end_s"], s["state"]) for s in spans]
        for node, spans in sorted(nodes.items())
    }
    band = state_rows(rows, _STATE_COLORS, bands, x_max=x_max) if rows else ""
    return f"<h2>Latency over time</h2>{lat}<h2>Throughput</h2>{thr}" + (
        f"<h2>Nodes</h2><p>Each node's role from its own status answers "
        f"(polled twice a second), or down / paused as the harness knows.</p>{band}"
        if band
        else ""
    )


def _thin(points: list[tuple[float, float]], cap: int = 20_000) -> list[tuple[float, float]]:
    """At most about ``cap`` points, to keep the page light: the slowest 1% are always
    kept (they are what a reader looks for), the rest thinned evenly."""
    if len(points) <= cap:
        return points
    slow = sorted(points, key=lambda p: p[1])[-max(1, len(points) // 100) :]
    keep = set(slow)
    step = max(1, len(points) // cap)
    return [p for i, p in enumerate(points) if p in keep or i % step == 0]


def _pending(records: Sequence[Record]) -> list[Record]:
    """Invocations that never completed."""
    open_: dict[int, Record] = {}
    for rec in records:
        if rec.type is RecordType.INVOKE:
            open_[rec.process] = rec
        else:
            open_.pop(rec.process, None)
    return list(open_.values())


def culprit_context(results: dict[str, Any], op: dict[str, Any]) -> str:
    """Where the culprit ran: the process's home node and the fault in force when it
    was invoked, which is usually the start of the story (a read on the isolated old
    leader, say)."""
    nodes = results.get("run", {}).get("nodes")
    text = f"Process {op.get('process')}"
    if nodes and isinstance(op.get("process"), int):
        text += f" (home node n{op['process'] % nodes + 1})"
    call_s = op.get("call", 0) / _NS
    inside = [
        w
        for w in results.get("stats", {}).get("faults", [])
        if w["start_s"] <= call_s <= w["end_s"]
    ]
    if not inside:
        return f"{text} invoked it at t={call_s:.3f}s, with no fault in force."
    w = inside[0]
    shown = {k: v for k, v in w["details"].items() if k not in ("blocked", "took_ms")}
    return (
        f"{text} invoked it at t={call_s:.3f}s, during {w['kind']} "
        f"({w['start_s']:.1f}s-{w['end_s']:.1f}s) {json.dumps(shown)}."
    )


def _counterexamples(results: dict[str, Any]) -> str:
    parts = []
    for name, checker in results.get("checkers", {}).items():
        if name == "linearizable":
            for p in checker.get("partitions", []):
                ce = p.get("counterexample")
                if not ce:
                    continue
                rows = [
                    (o["line"], o["process"], o["description"], o["call"], o["return"], o["status"])
                    for o in ce["prefix"][-12:]
                ]
                cands = [
                    (
                        "*" if c["index"] == ce["blocking"]["index"] else "",
                        c["line"],
                        c["process"],
                        c["description"],
                        c["call"],
                        c["return"],
                        "legal" if c["legal_after_prefix"] else "illegal",
                    )
                    for c in ce["candidates"][:15]
                ]
                parts.append(
                    f"<h3>Key {escape(ce['key'])}</h3><p><b>{escape(ce['explanation'])}</b></p>"
                    f"<p>{escape(culprit_context(results, ce['blocking']))}</p>"
                    f"<p>Linearizable prefix ({len(ce['prefix'])} ops, last 12 shown); state "
                    f"after it: <code>{escape(ce['state'])}</code></p>"
                    + _table(["line", "process", "op", "call (ns)", "return (ns)", "status"], rows)
                    + "<p>Could not be linearized next (* = the culprit):</p>"
                    + _table(["", "line", "process", "op", "call", "return", "after prefix"], cands)
                )
        elif name == "set" and checker.get("valid") is False:
            parts.append(
                "<h3>Set</h3>"
                + _table(
                    ["lost", "unexpected", "duplicated"],
                    [
                        (
                            ", ".join(map(str, checker["lost"][:200])),
                            ", ".join(map(str, checker["unexpected"][:200])),
                            ", ".join(map(str, checker["duplicated"][:200])),
                        )
                    ],
                )
            )
        elif checker.get("valid") is False and checker.get("anomalies"):
            parts.append(_anomalies_html(name, checker))
    if not parts:
        return ""
    return "<h2>Counter-example</h2>" + "".join(parts)


_MAX_SHOWN = 5  # examples shown per anomaly kind (results.json keeps them all)


def _anomalies_html(name: str, checker: dict[str, Any]) -> str:
    """Elle, watch and lock checkers: each anomaly kind, its true count and the first
    few examples in the checker's own words."""
    counts = checker.get("anomaly_counts", {})
    out = [f"<h3>{escape(name)}</h3>"]
    for kind, examples in checker["anomalies"].items():
        out.append(f"<h4>{escape(kind)} ({counts.get(kind, len(examples))})</h4><ul>")
        for ex in examples[:_MAX_SHOWN]:
            out.append(f"<li>{escape(str(ex.get('explanation', ex)))}</li>")
        out.append("</ul>")
    return "".join(out)


def render_html(results: dict[str, Any], records: Sequence[Record]) -> str:
    run = results.get("run", {})
    verdict = results.get("verdict", "unknown")
    cls = {"valid": "valid", "invalid": "invalid"}.get(verdict, "unknown")
    stats = results.get("stats", {})
    checker_rows = [
        (name, _VERDICT_WORDS[c.get("valid")], c.get("summary", ""))
        for name, c in results.get("checkers", {}).items()
    ]
    fault_rows = [
        (
            kind,
            k["count"],
            k["seconds"],
            k["ops_per_s"],
            k["ok_per_s"],
        )
        for kind, k in sorted(stats.get("by_fault_kind", {}).items())
    ]
    healthy = stats.get("healthy", {})
    if healthy:
        fault_rows.append(("(no fault)", "", healthy["seconds"], "", healthy["ok_per_s"]))
    lat_rows = [
        (f, v.get("n"), v.get("p50"), v.get("p95"), v.get("p99"), v.get("max"))
        for f, v in stats.get("latency_ms", {}).items()
    ]
    timeline_rows = [
        (
            f"{w['start_s']:.1f}\u2013{w['end_s']:.1f}",
            w["kind"],
            _status(w["details"]) + " / " + _status(w.get("stop_details") or {}),
            json.dumps({k: v for k, v in w["details"].items() if k != "evidence"})[:160],
        )
        for w in stats.get("faults", [])
    ]
    error = results.get("error")
    title = f"{run.get('workload')} \u00d7 {_faults_ran(run, stats)}"
    unsafe = f", UNSAFE mode {escape(str(run['unsafe']))}" if run.get("unsafe") else ""
    counts = [
        (f, c.get("ok", 0), c.get("fail", 0), c.get("info", 0))
        for f, c in stats.get("by_f", {}).items()
    ]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>jepsen-like: {escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}: <span class='{cls}'>{escape(verdict.upper())}</span></h1>"
        + (f"<p class='invalid'>Error: {escape(str(error))}</p>" if error else "")
        + f"<p><code>{escape(str(run.get('command', '')))}</code><br>seed {run.get('seed')}, "
        f"{run.get('nodes')} nodes{unsafe}, "
        f"{stats.get('invocations', 0)} operations, {stats.get('ops_per_s', 0)} ops/s "
        f"({stats.get('ok_per_s', 0)} ok/s)</p>"
        + _table(["checker", "verdict", "summary"], checker_rows)
        + _table(["op", "ok", "p50 ms", "p95 ms", "p99 ms", "max ms"], lat_rows)
        + _charts(results, records)
        + _counterexamples(results)
        + "<h2>Faults</h2>"
        + _table(["fault", "windows", "seconds", "ops/s", "ok/s"], fault_rows)
        + _table(["window (s)", "fault", "verified (start / stop)", "details"], timeline_rows)
        + _evidence_html(results)
        + "<h2>Operation counts</h2>"
        + _table(
            ["op", "ok", "fail", "info"],
            counts,
        )
        + "<p>Files: history.jsonl, nemesis.jsonl, results.json, logs/, config/</p>"
        "</body></html>\n"
    )


def _faults_ran(run: dict[str, Any], stats: dict[str, Any]) -> str:
    """The fault kinds that actually started (not merely those asked for)."""
    kinds = run.get("faults_ran")
    if kinds is None:
        kinds = sorted({w["kind"] for w in stats.get("faults", [])})
    if not kinds:
        return "no faults" if run.get("nemesis_kinds") == [] else "no fault ran"
    shown = ", ".join(kinds)
    return f"all ({shown})" if run.get("combined") else shown


def _status(details: dict[str, Any]) -> str:
    evidence = details.get("evidence")
    return "-" if evidence is None else str(evidence["status"])


def _evidence_html(results: dict[str, Any]) -> str:
    """Each fault's verification: what was observed, and whether it showed the fault
    (or its undoing) in effect."""
    stats = results.get("stats", {})
    items = []
    for w in stats.get("faults", []):
        for phase, details in (("start", w["details"]), ("stop", w.get("stop_details") or {})):
            ev = details.get("evidence")
            if ev is not None:
                items.append((f"{w['kind']} #{w['id']} {phase} at {w['start_s']:.1f}s", ev))
    heal = (results.get("run") or {}).get("heal") or {}
    if heal.get("evidence"):
        items.append(("final heal", heal["evidence"]))
    if not items:
        return ""
    out = [
        "<h2>Fault verification</h2><p>Every fault is checked, once applied (and once "
        "undone), by an independent observation: /proc for processes, the files a node "
        "has open, its own log, probes through cut links, the proxies' counters. A fault "
        "not verified makes the verdict unknown.</p><ul>"
    ]
    for label, ev in items:
        extra = ev.get("not_applied") or ev.get("superseded") or ev.get("error") or ""
        out.append(
            f"<li><b>{escape(label)}</b>: <span class='{_EV_CLASS.get(ev['status'], 'unknown')}'>"
            f"{escape(ev['status'])}</span> {escape(str(extra))} "
            f"({ev.get('took_ms', 0)} ms)<ul>"
        )
        for c in ev["checks"]:
            mark = "\u2713" if c["ok"] else "\u2717"
            seen = "" if c["observed"] is None else ": " + json.dumps(c["observed"], default=str)
            out.append(f"<li>{mark} {escape(c['check'])}{escape(seen[:300])}</li>")
        out.append("</ul></li>")
    out.append("</ul>")
    return "".join(out)


_EV_CLASS = {
    "verified": "valid",
    "not-applied": "",
    "superseded": "",
    "unverified": "invalid",
    "error": "invalid",
}
