"""Admin operations on a real cluster: leadership transfer through the client protocol
and ``kv cluster transfer``."""

from __future__ import annotations

import json

import pytest

from kvstore.client import BadRequest

from .conftest import LocalCluster
from .test_kv_cli import kv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


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
