"""Admin operations on a real cluster: leadership transfer and membership changes
through the client protocol, ``kv cluster transfer`` and ``kv member``."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from kvstore import cluster
from kvstore.client import BadRequest, ClientError

from .conftest import LocalCluster
from .test_kv_cli import kv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")


def test_transfer_leader_moves_leadership_and_writes_keep_working(
    local_cluster: LocalCluster,
) -> None:
    c = local_cluster.client()
    c.put("before", "1")
    acked = {"before": "1"}
    for i in range(4):
        old = local_cluster.leader()
        to = next(n for n in local_cluster.ids if n != old)
        assert c.transfer_leader(to) == to
        assert local_cluster.leader() == to
        # The client was told where the new leader is; writes go on without a redirect
        # storm, and reads see everything acknowledged before and after the move.
        for j in range(10):
            c.put(f"k{i}-{j}", str(j))
            acked[f"k{i}-{j}"] = str(j)
    for key, value in acked.items():
        assert c.get(key).value == value.encode()


def test_transfer_to_self_is_ok_and_to_a_stranger_is_refused(local_cluster: LocalCluster) -> None:
    c = local_cluster.client()
    lead = local_cluster.leader()
    assert c.transfer_leader(lead) == lead
    with pytest.raises(BadRequest, match="not a voter"):
        c.transfer_leader("n9")
    assert local_cluster.leader() == lead


def test_kv_cluster_transfer(local_cluster: LocalCluster) -> None:
    old = local_cluster.leader()
    to = next(n for n in local_cluster.ids if n != old)
    proc = kv("cluster", "transfer", "--to", to, "--config", str(local_cluster.config), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == {"ok": True, "leader": to}
    assert local_cluster.leader() == to
    proc = kv("cluster", "transfer", "--to", "nope", "--config", str(local_cluster.config))
    assert proc.returncode == 1 and b"not a voter" in proc.stderr


def test_remove_then_rejoin_as_learner_then_promote_keeps_every_write(
    local_cluster: LocalCluster,
) -> None:
    lc = local_cluster
    c = lc.client()
    acked: dict[str, str] = {}

    def write(prefix: str, n: int) -> None:
        for i in range(n):
            c.put(f"{prefix}{i}", f"{prefix}-{i}")
            acked[f"{prefix}{i}"] = f"{prefix}-{i}"

    write("a", 20)
    victim = lc.followers()[0]
    members = c.member_remove(victim)
    assert victim not in members.voters and len(members.voters) == 2
    assert c.member_remove(victim) == members, "removing a non-member again is a no-op"
    lc.kill(victim)
    shutil.rmtree(lc.cfg.node(victim).data_dir / "raft")
    write("b", 20)  # two voters of two: still a majority

    node = lc.cfg.node(victim)
    lc.started.add(cluster.spawn_node(lc.config, node, ["--join"]))
    empty = _wait(lambda: c.member_list(endpoint=lc.addr(victim), consistency="serializable"))
    assert empty.voters == () and empty.learners == (), "a joining node must not bootstrap"

    members = c.member_add(victim, learner=True)
    assert members.learners == (victim,) and victim not in members.voters
    lead = lc.status(lc.leader())
    assert lead is not None
    lc.wait_applied(victim, lead.commit)
    members = c.member_add(victim)
    assert victim in members.voters and members.learners == ()
    write("c", 20)

    # The re-added node is a voter that counts: with another original voter down, the
    # cluster still commits, and the new voter holds every acknowledged write.
    other = next(n for n in lc.followers() if n != victim)
    lc.kill(other)
    write("d", 10)
    lead = lc.status(lc.leader())
    assert lead is not None
    lc.wait_applied(victim, lead.commit)
    for key, value in acked.items():
        assert c.get(key).value == value.encode()
        assert c.get(key, consistency="serializable").value == value.encode()
    on_victim = lc.client(victim)
    for key, value in acked.items():
        assert on_victim.get(key, consistency="serializable").value == value.encode()


def test_member_changes_refused_or_no_op(local_cluster: LocalCluster) -> None:
    c = local_cluster.client()
    with pytest.raises(BadRequest, match="address is unknown"):
        c.member_add("n9")
    before = c.member_list()
    assert before.voters == tuple(local_cluster.ids) and before.learners == ()
    assert c.member_add(local_cluster.ids[0]) == before


def test_kv_member_commands(local_cluster: LocalCluster) -> None:
    cfg = ["--config", str(local_cluster.config), "--json"]
    victim = local_cluster.followers()[0]
    proc = kv("member", "list", *cfg)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["voters"] == local_cluster.ids
    proc = kv("member", "add", victim, "--learner", *cfg)  # demotes a voter
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["learners"] == [victim]
    proc = kv("member", "remove", victim, *cfg)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert victim not in out["voters"] and out["learners"] == []
    proc = kv("member", "add", "n9", *cfg)
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"] == "bad_request"


def _wait(fn: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
