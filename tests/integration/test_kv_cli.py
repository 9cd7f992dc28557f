"""The ``kv`` command as a script sees it: real subprocesses (``python -m cli.main``,
what the ``kv`` console script runs), exit codes, stdout, ``--json``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import LocalCluster, MakeCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def kv(
    *args: str, cwd: Path | None = None, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KV_ENDPOINTS", None)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def ok_json(proc: subprocess.CompletedProcess[bytes]) -> dict:  # type: ignore[type-arg]
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    return out  # type: ignore[no-any-return]


def test_kv_commands_exit_codes_and_json(local_cluster: LocalCluster) -> None:
    """put/get/del/scan/cas through the CLI: plain output for people, --json for
    scripts, and the documented exit codes (0 ok, 3 not found, 4 compare failed,
    5 unavailable, 2 usage)."""
    lc = local_cluster
    cwd = lc.config.parent  # cluster.toml in the cwd is the default endpoint source
    e = ("--endpoints", ",".join(lc.addrs))

    put = kv("put", "a", "1", cwd=cwd)
    assert put.returncode == 0, put.stderr
    get = kv("get", "a", cwd=cwd)
    assert (get.returncode, get.stdout) == (0, b"1\n")
    assert ok_json(kv("get", "a", "--json", *e)) | {"ok": True} == {
        "ok": True,
        "key": "a",
        "value": "1",
        "version": 1,
        "create_revision": 1,
        "mod_revision": 1,
    }
    # The value from stdin, exactly its bytes (binary comes back base64 in JSON).
    assert kv("put", "b", *e, stdin=b"\x00\xffbin").returncode == 0
    assert kv("put", "c", "-", *e, stdin=b"three\n").returncode == 0
    assert kv("get", "c", *e).stdout == b"three\n\n"
    assert ok_json(kv("get", "b", "--json", *e))["value_base64"] == "AP9iaW4="
    # Serializable reads from one follower.
    follower = lc.addr(lc.followers()[0])
    got = kv("get", "a", "--consistency", "serializable", "--endpoints", follower)
    assert got.stdout == b"1\n"

    missing = kv("get", "nope", *e)
    assert missing.returncode == 3 and b"not found" in missing.stderr
    missing_json = kv("get", "nope", "--json", *e)
    assert missing_json.returncode == 3
    assert json.loads(missing_json.stdout)["error"] == "not_found"

    scan = ok_json(kv("scan", "", "--json", *e))
    assert [x["key"] for x in scan["kvs"]] == ["a", "b", "c"] and scan["more"] is False
    page = ok_json(kv("scan", "", "--limit", "2", "--json", *e))
    assert len(page["kvs"]) == 2 and page["more"] is True
    human = kv("scan", "", *e)
    assert human.returncode == 0 and b"three" in human.stdout

    assert ok_json(kv("cas", "a", "1", "2", "--json", *e))["prev"]["value"] == "1"
    failed = kv("cas", "a", "1", "3", "--json", *e)
    assert failed.returncode == 4
    assert json.loads(failed.stdout)["current"]["value"] == "2"
    assert kv("cas", "--expected-version", "2", "a", "4", *e).returncode == 0
    assert kv("cas", "--expected-version", "2", "a", "5", *e).returncode == 4
    assert kv("cas", "--absent", "a", "6", *e).returncode == 4
    assert kv("cas", "--absent", "fresh", "7", *e).returncode == 0
    assert kv("get", "a", *e).stdout == b"4\n"
    assert kv("cas", "a", "4", *e).returncode == 2  # missing NEW: usage error

    assert ok_json(kv("del", "a", "--json", *e))["prev"]["value"] == "4"
    assert kv("del", "a", *e).returncode == 3
    assert kv("get", "a", *e).returncode == 3

    down = kv("get", "a", "--endpoints", "127.0.0.1:1", "--timeout", "0.5")
    assert down.returncode == 5 and b"unavailable" in down.stderr
    assert kv("get", "a", "--endpoints", "no-port").returncode == 2
    assert kv("get", "a", cwd=cwd.parent).returncode == 2  # no cluster.toml here


def test_bench_runs_bounded(local_cluster: LocalCluster) -> None:
    """kv bench finishes after --ops operations and reports throughput and latency."""
    e = ("--endpoints", ",".join(local_cluster.addrs))
    out = kv(
        "bench",
        "--clients",
        "4",
        "--ops",
        "60",
        "--workload",
        "mixed",
        "--keys",
        "20",
        "--json",
        *e,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] == 60 and result["errors"] == {}
    assert result["throughput_ops_s"] > 0
    assert set(result["latency"]) == {"all", "put", "get"}
    assert result["latency"]["all"]["count"] == 60
    table = kv("bench", "--clients", "2", "--ops", "10", *e)
    assert table.returncode == 0 and b"p99" in table.stdout


def test_cluster_up_status_down(make_cluster: MakeCluster) -> None:
    """kv cluster up starts every node detached and waits for a leader; a second up
    starts only what is missing; status --json reports each node; down stops exactly
    the nodes of this config and removes their pid files, never signalling a pid that
    is not one of them."""
    lc = make_cluster(start=False)
    cfg = str(lc.config)

    # Another process listening on a node's address: refused before anything starts
    # (otherwise that process could answer status and fake a successful start).
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", lc.cfg.nodes[1].client_address.port))
        squatter.listen()
        blocked = kv("cluster", "up", "--config", cfg)
    assert blocked.returncode == 1 and b"in use" in blocked.stderr, blocked.stderr
    assert not any((n.data_dir / "node.pid").exists() for n in lc.cfg.nodes)

    up = kv("cluster", "up", "--config", cfg)
    assert up.returncode == 0, up.stderr
    assert b"leader:" in up.stdout and up.stdout.count(b"started") == 3
    pids = {n: lc.pid(n) for n in lc.ids}
    assert all(pids.values())
    for n in lc.cfg.nodes:
        assert (n.data_dir / "node.pid").exists() and (n.data_dir / "node.out").exists()

    status = json.loads(kv("cluster", "status", "--config", cfg, "--json").stdout)
    assert [s["id"] for s in status] == lc.ids
    assert sum(s["role"] == "leader" for s in status) == 1
    for s in status:
        assert s["pid"] == pids[s["id"]] and s["running"] is True
        assert {"term", "commit", "applied", "lag", "leader"} <= set(s)

    refused = kv("cluster", "up", "--config", cfg, "--fresh")
    assert refused.returncode == 1 and b"refusing --fresh" in refused.stderr

    victim = lc.ids[1]
    lc.kill(victim)
    again = kv("cluster", "up", "--config", cfg)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(b"already running") == 2
    assert f"{victim}: started".encode() in again.stdout
    lc.started.add(lc.pid(victim) or 0)

    # A pid file naming an unrelated live process (this test) must not be signalled.
    lc.kill(victim)
    (lc.cfg.node(victim).data_dir / "node.pid").write_text(f"{os.getpid()}\n")

    down = kv("cluster", "down", "--config", cfg)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count(b"stopped") == 2 and b"stale pid file" in down.stdout
    for n in lc.cfg.nodes:
        assert not (n.data_dir / "node.pid").exists()
    after = json.loads(kv("cluster", "status", "--config", cfg, "--json").stdout)
    assert all(s["role"] == "down" and s["pid"] is None and s["term"] is None for s in after)

    fresh = kv("cluster", "up", "--config", cfg, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert kv("get", "a", "--config", cfg).returncode == 3
    assert kv("cluster", "down", "--config", cfg).returncode == 0


def test_broken_config_exits_2_naming_the_line(tmp_path: Path) -> None:
    """A config mistake is refused before anything starts, naming file:line."""
    good = (ROOT / "cluster.toml").read_text()
    lines = good.splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("election_ticks"))
    lines[line - 1] = "election_ticks = 1"
    bad = tmp_path / "bad.toml"
    bad.write_text("\n".join(lines) + "\n")
    for args in (
        ("node", "--config", str(bad), "--id", "n1"),
        ("cluster", "up", "--config", str(bad)),
        ("cluster", "status", "--config", str(bad)),
        ("get", "a", "--config", str(bad)),
    ):
        proc = kv(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f"{bad}:{line}".encode() in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists(), "nothing may start from a broken config"
    unknown = kv("node", "--config", str(ROOT / "cluster.toml"), "--id", "n9")
    assert unknown.returncode == 2 and b"n9" in unknown.stderr


def test_node_unsafe_choices_match_the_node() -> None:
    """kv node spells out kvstore.node.UnsafeMode's values (to keep kv's start fast);
    they must not drift apart."""
    from cli.cluster import node
    from kvstore.node import UnsafeMode

    opt = next(p for p in node.params if p.name == "unsafe")
    assert list(opt.type.choices) == [m.value for m in UnsafeMode]  # type: ignore[attr-defined]


def test_leases_and_watches_on_a_real_cluster(local_cluster: LocalCluster) -> None:
    """kv lease / put --lease / watch against real nodes: a follower streams the same
    history (from revision 1) as the leader applied it, a revoked lease takes its key
    in one revision, and a lease nobody renews expires by itself (the leader's lessor)."""
    lc = local_cluster
    e = ("--endpoints", ",".join(lc.addrs))
    lease = ok_json(kv("lease", "grant", "30", "--json", *e))["lease"]
    assert kv("put", "svc/a", "1", "--lease", str(lease), *e).returncode == 0
    assert kv("put", "svc/b", "2", *e).returncode == 0
    assert ok_json(kv("lease", "keepalive", str(lease), "--json", *e))["ttl_ms"] == 30_000
    revoked = ok_json(kv("lease", "revoke", str(lease), "--json", *e))
    assert kv("get", "svc/a", *e).returncode == 3
    assert kv("lease", "keepalive", str(lease), *e).returncode == 3
    missing_lease = kv("put", "svc/c", "3", "--lease", str(lease), "--json", *e)
    assert missing_lease.returncode == 3
    assert json.loads(missing_lease.stdout)["error"] == "lease_not_found"

    follower = lc.addr(lc.followers()[0])
    w = kv("watch", "svc/", "--prefix", "--rev", "1", "--count", "3", "--json", *e,
           "--endpoint", follower)  # fmt: skip
    assert w.returncode == 0, w.stderr
    events = [json.loads(line) for line in w.stdout.splitlines()]
    assert [(ev["type"], ev["kv"]["key"], ev["revision"]) for ev in events] == [
        ("put", "svc/a", 1),
        ("put", "svc/b", 2),
        ("delete", "svc/a", revoked["revision"]),
    ]
    plain = kv("watch", "svc/b", "--rev", "1", "--count", "1", *e)
    assert plain.stdout == b"PUT svc/b = 2 (revision 2)\n"

    short = ok_json(kv("lease", "grant", "2", "--json", *e))["lease"]
    assert kv("put", "eph", "x", "--lease", str(short), *e).returncode == 0
    left = ok_json(kv("lease", "ttl", str(short), "--json", *e))["remaining_ms"]
    assert 0 < left <= 2000
    deadline = time.monotonic() + 10
    while kv("get", "eph", *e).returncode == 0:  # nobody writes: the lessor expires it
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.2)
