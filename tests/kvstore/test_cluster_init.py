"""kvstore.cluster_init and ``kv cluster init``: a configuration for machines of their
own (node specs parsed strictly, secret and keys private, what to copy where, nothing
overwritten) and turning TLS on in an existing cluster.toml."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from kvstore.cluster_init import copy_plan, enable_tls, init_cluster, parse_node_spec
from kvstore.config import Address, ConfigError, generate_config, load_config
from kvstore.security import node_peer_secret, node_tls

NODES = ["n1=10.0.0.1:7101,10.0.0.1:7201", "n2=10.0.0.2:7101,10.0.0.2:7201",
         "n3=db3.example.com:7101,db3.example.com:7201"]  # fmt: skip


def test_node_specs_are_parsed_strictly() -> None:
    assert parse_node_spec("n1=10.0.0.1:7101,[::1]:7201") == (
        "n1",
        Address("10.0.0.1", 7101),
        Address("::1", 7201),
    )
    for bad in ("n1", "n1=10.0.0.1:7101", "=1.2.3.4:1,1.2.3.4:2", "n1=a:1,b:2,c:3"):
        with pytest.raises(ValueError, match="ID=PEER_HOST:PORT,CLIENT_HOST:PORT"):
            parse_node_spec(bad)
    with pytest.raises(ValueError, match="any interface"):
        parse_node_spec("n1=0.0.0.0:7101,10.0.0.1:7201")


def test_init_with_tls_writes_a_cluster_every_machine_can_start(tmp_path: Path) -> None:
    report = init_cluster(tmp_path, [parse_node_spec(n) for n in NODES], cluster_id="prod",
                          tls=True)  # fmt: skip
    cfg = load_config(tmp_path / "cluster.toml")
    assert cfg.id == "prod" and cfg.security.tls and not cfg.security.insecure
    names = {p.relative_to(tmp_path).as_posix() for p in report.written}
    assert names >= {"cluster.toml", "cluster.secret", "tls/ca.crt", "tls/ca.key", "tls/n3.key"}
    for p in report.written:
        private = p.suffix in (".key", ".secret")
        assert (stat.S_IMODE(p.stat().st_mode) & 0o077 == 0) == private, p
    for node in cfg.nodes:  # off loopback, yet each node passes its checks
        assert node_peer_secret(cfg, node) and node_tls(cfg, node) is not None
    plan = copy_plan(cfg)
    assert [p.relative_to(tmp_path).as_posix() for p in plan["n2"]] == [
        "cluster.secret",
        "tls/ca.crt",
        "tls/n2.crt",
        "tls/n2.key",
    ]
    with pytest.raises(FileExistsError):
        init_cluster(tmp_path, [parse_node_spec(NODES[0])], cluster_id="prod", tls=True)


def test_init_refuses_a_broken_cluster_before_writing(tmp_path: Path) -> None:
    dup = [parse_node_spec(NODES[0]), parse_node_spec(NODES[0])]
    with pytest.raises(ConfigError, match="duplicate node id 'n1'"):
        init_cluster(tmp_path, dup, cluster_id="prod", tls=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("node_id", ["client", "ca"])
def test_init_refuses_a_node_id_whose_files_would_be_the_cas_or_the_clients(
    tmp_path: Path, node_id: str
) -> None:
    """tls/client.crt and tls/ca.crt are taken: refused before anything is written
    (it used to fail half-way with FileExistsError); without TLS the id is fine."""
    specs = [parse_node_spec(f"{node_id}=10.0.0.1:7101,10.0.0.1:7201"),
             parse_node_spec(NODES[1])]  # fmt: skip
    with pytest.raises(ConfigError, match=f"the cert_file of node '{node_id}'"):
        init_cluster(tmp_path / "a", specs, cluster_id="prod", tls=True)
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").iterdir()) == []
    args = ["cluster", "init", "--dir", str(tmp_path / "b"), "--tls", "--node",
            f"{node_id}=10.0.0.1:7101,10.0.0.1:7201"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"the cert_file of node '{node_id}'" in result.stderr
    assert "choose another node id" in result.stderr
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
    assert init_cluster(tmp_path / "c", specs, cluster_id="prod", tls=False).written


def test_kv_cluster_init_prints_the_next_steps(tmp_path: Path) -> None:
    args = ["cluster", "init", "--dir", str(tmp_path), "--tls"]
    result = CliRunner().invoke(cli, [*args, *(a for n in NODES for a in ("--node", n))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "on 10.0.0.2 (n2): copy cluster.toml cluster.secret tls/ca.crt tls/n2.crt" in out
    assert "kv node --config cluster.toml --id n3" in out
    assert "kv auth enable" in out and "tls/ca.key (the CA's key)" in out
    bad = CliRunner().invoke(cli, ["cluster", "init", "--dir", str(tmp_path / "x"), "--node",
                                   "n1=10.0.0.1"])  # fmt: skip
    assert bad.exit_code == 2 and "ID=PEER_HOST:PORT" in bad.output


@pytest.mark.parametrize(
    "text",
    [
        generate_config(3),  # the generated comment line is uncommented
        generate_config(3).split("[security]")[0]
        + "[[nodes]]"
        + generate_config(3).split("[[nodes]]", 1)[1],  # no [security] table at all
        generate_config(3).replace("[security]", "[security]  # peers"),
    ],
    ids=["commented", "no-table", "header-comment"],
)
def test_enable_tls_turns_it_on_once(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    assert not load_config(path).security.tls
    assert enable_tls(path) is True
    cfg = load_config(path)
    assert cfg.security.ca_file == tmp_path / "tls/ca.crt"
    assert cfg.nodes[1].cert_file == tmp_path / "tls/n2.crt"
    after = path.read_text()
    assert enable_tls(path) is False and path.read_text() == after
