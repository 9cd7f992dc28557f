"""The system under test: per-node configs that the store's own validation accepts, each
node dialling its peers through the harness's proxies, and crash bookkeeping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like.db import LocalDB, free_ports
from kvstore.config import load_config

pytestmark = pytest.mark.timeout(30)


def proxies(nodes: list[str]) -> dict[tuple[str, str], tuple[str, int]]:
    links = [(s, d) for s in nodes for d in nodes if s != d]
    return dict(zip(links, (("127.0.0.1", p) for p in free_ports(len(links))), strict=True))


def test_free_ports_are_distinct() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12


@pytest.mark.parametrize("n", [3, 5])
def test_each_node_sees_itself_directly_and_its_peers_through_proxies(
    tmp_path: Path, n: int
) -> None:
    db = LocalDB(tmp_path, n, raft={"tick_ms": 25, "election_ticks": 10, "fsync": "always"})
    dial = proxies(db.nodes)
    db.write_configs(dial)
    for me in db.nodes:
        cfg = load_config(db.config_paths[me])  # the node's own validation
        assert cfg.id == "jepsen" and cfg.raft.tick_ms == 25
        for other in cfg.nodes:
            want = db.peer_addresses[me] if other.id == me else dial[(me, other.id)]
            assert tuple(other.peer_address) == want
            assert tuple(other.client_address) == db.client_addresses[other.id]
            assert other.data_dir == db.data_dirs[other.id]
    assert db.endpoints() == [f"127.0.0.1:{db.client_addresses[x][1]}" for x in db.nodes]


def test_a_process_that_died_on_its_own_is_reported_once(tmp_path: Path) -> None:
    db = LocalDB(tmp_path, 3, raft={})
    db.data_dirs["n2"].mkdir(parents=True)
    (db.data_dirs["n2"] / "node.out").write_text("Traceback ...\nBoom: disk on fire\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    db.pids["n2"] = proc.pid
    crashes = db.reap_crashes()
    assert [c["node"] for c in crashes] == ["n2"]
    assert "disk on fire" in str(crashes[0]["output"])
    assert db.dead() == db.nodes and db.reap_crashes() == []
    assert db.crashes == crashes


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    """A node's port must not be handed out as the source port of some outgoing
    connection while the node is down (a kill, then a restart that cannot bind)."""
    from kvstore.cluster import listen_port_range

    low, high = listen_port_range()
    assert all(low <= p < high for p in free_ports(20))
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ephemeral.exists():
        first_ephemeral = int(ephemeral.read_text().split()[0])
        if first_ephemeral > 12000:
            assert high <= first_ephemeral


def test_a_relative_run_directory_puts_node_data_where_the_harness_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default --out is relative. Written into a node's config, a relative data
    root was resolved against the config's folder, so the nodes kept their data under
    <run>/config/... while wipes, log copies and clean-up looked in <run>/data: a wipe
    that wiped nothing (issue 10)."""
    monkeypatch.chdir(tmp_path)
    db = LocalDB(Path("runs/r1"), 3, raft={"tick_ms": 25, "election_ticks": 10})
    db.write_configs(proxies(db.nodes))
    for me in db.nodes:
        cfg = load_config(db.config_paths[me])
        assert cfg.node(me).data_dir == db.data_dirs[me] == tmp_path / "runs/r1/data" / me
