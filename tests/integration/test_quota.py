"""The storage quota on a real 3-node cluster: filled, it refuses writes with NOSPACE
and raises the replicated alarm, which ``kv cluster status`` shows on every node and
which survives a leader transfer and a restart of every node (snapshots included);
deletes work throughout, and after ``kv alarm disarm`` writes work again."""

from __future__ import annotations

import json
import time

import pytest

from kvstore.client import Client, NoSpace
from kvstore.mvcc import kv_bytes

from .conftest import LocalCluster, MakeCluster
from .test_kv_cli import kv, ok_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VALUE = b"x" * 4096
QUOTA = 16 * 2 * kv_bytes(3, len(VALUE))  # room for 16 puts of new three-byte keys


def alarms_everywhere(lc: LocalCluster, want: list[str], timeout: float = 15.0) -> list[dict]:  # type: ignore[type-arg]
    """``kv cluster status --json`` until every node reports ``want`` as its alarms."""
    deadline = time.monotonic() + timeout
    while True:
        proc = kv("cluster", "status", "--json", "--config", str(lc.config))
        assert proc.returncode == 0, proc.stderr.decode()
        nodes = json.loads(proc.stdout)
        if all(n["alarms"] == want for n in nodes):
            return nodes  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, nodes
        time.sleep(0.1)


def refused_by_the_alarm(c: Client) -> None:
    """A put far below the quota is still refused: by the replicated alarm, at apply."""
    with pytest.raises(NoSpace, match="NOSPACE alarm raised"):
        c.put("small", "1")


def test_nospace_alarm_survives_leader_changes_and_restarts(make_cluster: MakeCluster) -> None:
    lc = make_cluster(store={"quota_bytes": QUOTA}, snapshot_threshold=8)
    c = lc.client()
    written = []
    with pytest.raises(NoSpace, match=f"past this node's quota of {QUOTA} bytes") as refused:
        for i in range(100):
            c.put(b"k%02d" % i, VALUE)
            written.append(b"k%02d" % i)
    assert len(written) == 16, refused.value
    leader = lc.leader()
    assert [(a.alarm, a.node) for a in c.alarm_list()] == [("NOSPACE", leader)]
    nodes = alarms_everywhere(lc, [f"NOSPACE@{leader}"])
    assert all(n["quota_bytes"] == QUOTA and n["data_bytes"] >= QUOTA * 0.9 for n in nodes)
    human = kv("cluster", "status", "--config", str(lc.config))
    assert f"NOSPACE@{leader}" in human.stdout.decode()
    proc = kv("put", "k99", "v", "--config", str(lc.config), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"] == "nospace"

    # Deletes are admitted and make room below the quota; the alarm still refuses.
    for key in written[:4]:
        c.delete(key)
    refused_by_the_alarm(c)
    assert c.get(written[5]).value == VALUE

    # A new leader enforces the replicated alarm.
    to = next(n for n in lc.ids if n != leader)
    assert c.transfer_leader(to) == to
    refused_by_the_alarm(c)
    c.delete(written[4])

    # So does every node after a restart of all of them (from snapshots and logs).
    lc.kill(*lc.ids)
    lc.up()
    c = lc.client()
    refused_by_the_alarm(c)
    out = ok_json(kv("alarm", "list", "--config", str(lc.config), "--json"))
    assert out["alarms"] == [{"alarm": "NOSPACE", "node": leader}]
    alarms_everywhere(lc, [f"NOSPACE@{leader}"])

    # The way out: disarm, then write again.
    out = ok_json(kv("alarm", "disarm", "--config", str(lc.config), "--json"))
    assert out["alarms"] == []
    c.put("small", "1")
    assert c.get("small").value == b"1" and c.get(written[6]).value == VALUE
    alarms_everywhere(lc, [])
    assert "no alarms" in kv("alarm", "list", "--config", str(lc.config)).stdout.decode()
