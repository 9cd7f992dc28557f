"""TLS against real node processes: a 3-node cluster with [security] ca_file elects a
leader over peer mTLS and serves the kv CLI over client TLS; forged peer certificates
(n2's claiming n3, another CA's) are refused naming nothing while the cluster serves
on; with client_cert_auth a client without a certificate is refused; ``kv cluster up
--tls`` turns TLS on in a plain config; a node whose TLS files are unusable refuses to
start with a clear message."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from kvstore.certs import CertificateAuthority, write_new
from kvstore.client import Client, Unavailable
from kvstore.config import load_config
from kvstore.security import ensure_peer_secret, ensure_tls_files
from kvstore.tls import peer_tls
from tests.integration.conftest import LocalCluster, MakeCluster
from tests.integration.test_kv_cli import kv, ok_json
from tests.integration.test_peer_security import REFUSED, exchange, frame, handshake

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def peer_addr(lc: LocalCluster, node: str) -> tuple[str, int]:
    a = lc.cfg.node(node).peer_address
    return a.host, a.port


def test_a_tls_cluster_serves_the_cli_over_tls(make_cluster: MakeCluster) -> None:
    lc = make_cluster(tls=True)
    ca = str(lc.cfg.security.ca_file)
    endpoints = ",".join(lc.addrs)
    ok_json(kv("--cacert", ca, "put", "greeting", "hello", "--endpoints", endpoints, "--json"))
    got = kv("get", "greeting", "--config", str(lc.config))  # TLS from the config
    assert got.returncode == 0 and got.stdout == b"hello\n", got.stderr
    status = kv("cluster", "status", "--config", str(lc.config), "--json")
    assert sum(n["role"] == "leader" for n in json.loads(status.stdout)) == 1
    bench = kv("--cacert", ca, "bench", "--clients", "4", "--ops", "40", "--endpoints",
               endpoints, "--json")  # fmt: skip
    assert bench.returncode == 0 and json.loads(bench.stdout)["ok"] == 40, bench.stderr
    # Plain TCP is served on neither port.
    plain = kv("get", "greeting", "--endpoints", endpoints, "--timeout", "1")
    assert plain.returncode == 5, plain.stderr
    with Client(lc.addrs, deadline=1.0) as c, pytest.raises(Unavailable):
        c.get("greeting")
    hello = frame([b"raftkv-peer", 2, b"\0" * 16])
    assert asyncio.run(exchange(peer_addr(lc, "n1"), hello)) == []
    # A client trusting another CA refuses the nodes, at once, as a configuration error.
    other = Path(ca).parent.parent / "other-ca.crt"
    write_new(other, CertificateAuthority.create("x").pair.cert_pem, private=False)
    wrong = kv("--cacert", str(other), "get", "greeting", "--endpoints", endpoints,
               "--timeout", "30")  # fmt: skip
    assert wrong.returncode == 2, wrong.stderr
    assert b"kv: cannot verify the TLS certificate of 127.0.0.1:" in wrong.stderr


async def dial_tls(
    address: tuple[str, int], context: ssl.SSLContext, secret: bytes, cluster: str, claim: str,
    target: str,
) -> Any:  # fmt: skip
    """The whole peer handshake over TLS as ``claim``: the acceptor's verdict, or the
    exception the connection ended with."""
    try:
        reader, writer = await asyncio.open_connection(*address, ssl=context)
    except OSError as exc:
        return exc
    try:
        async with asyncio.timeout(10):
            return await handshake(reader, writer, secret, cluster, claim, target)
    except (OSError, EOFError) as exc:
        return exc
    finally:
        writer.close()


def test_forged_peer_certificates_are_refused(make_cluster: MakeCluster) -> None:
    """n2's valid certificate on a connection claiming n3, and another CA's certificate
    naming n3, both with the cluster secret: refused, naming nothing; term, data and
    every node unchanged and serving."""
    lc = make_cluster(tls=True)
    c = lc.client()
    c.put("before", "1")
    leader = lc.leader()
    term = lc.status(leader).term  # type: ignore[union-attr]
    secret = lc.cfg.security.peer_secret_file.read_text().strip().encode()
    tls_dir = lc.cfg.security.ca_file.parent  # type: ignore[union-attr]
    rogue = CertificateAuthority.create(lc.cfg.id).issue_node("n3", ["127.0.0.1"])
    write_new(tls_dir / "rogue.crt", rogue.cert_pem, private=False)
    write_new(tls_dir / "rogue.key", rogue.key_pem, private=True)
    ca = lc.cfg.security.ca_file
    assert ca is not None
    n2 = peer_tls(ca, tls_dir / "n2.crt", tls_dir / "n2.key").client
    other = peer_tls(ca, tls_dir / "rogue.crt", tls_dir / "rogue.key").client
    addr = peer_addr(lc, "n1")
    verdict = asyncio.run(dial_tls(addr, n2, secret, lc.cfg.id, "n3", "n1"))
    assert verdict == REFUSED, verdict
    assert "n1" not in repr(verdict) and lc.cfg.id not in repr(verdict)
    failed = asyncio.run(dial_tls(addr, other, secret, lc.cfg.id, "n3", "n1"))
    assert isinstance(failed, OSError | EOFError), failed
    # The control: n3's own certificate passes the same hand-made handshake.
    n3 = peer_tls(ca, tls_dir / "n3.crt", tls_dir / "n3.key").client
    assert asyncio.run(dial_tls(addr, n3, secret, lc.cfg.id, "n3", "n1"))[2] == "ok"
    assert lc.leader() == leader and lc.status(leader).term == term  # type: ignore[union-attr]
    assert c.get("before").value == b"1" and c.put("after", "2").revision == 2
    assert all(lc.pid(n) is not None for n in lc.ids)
    log = (lc.cfg.node("n1").data_dir / "node.log").read_text()
    assert "it claims 'n3', which its certificate does not bind" in log


def test_client_cert_auth_refuses_a_client_without_a_certificate(
    make_cluster: MakeCluster,
) -> None:
    lc = make_cluster(start=False, tls=True)
    lc.config.write_text(
        lc.config.read_text().replace("client_cert_auth = false", "client_cert_auth = true")
    )
    lc.cfg = load_config(lc.config)
    assert lc.cfg.security.client_cert_auth
    assert lc.up().leader is not None  # the tools present tls/client.crt from the config
    sec = lc.cfg.security
    endpoints = ",".join(lc.addrs)
    ca = ["--cacert", str(sec.ca_file)]
    bare = kv(*ca, "put", "k", "v", "--endpoints", endpoints, "--timeout", "1")
    assert bare.returncode == 5, bare.stderr
    certified = [*ca, "--cert", str(sec.client_cert_file), "--key", str(sec.client_key_file)]
    ok_json(kv(*certified, "put", "k", "v", "--endpoints", endpoints, "--json"))
    got = kv("get", "k", "--config", str(lc.config))
    assert got.returncode == 0 and got.stdout == b"v\n", got.stderr
    usage = kv("--cert", str(sec.client_cert_file), "get", "k", "--endpoints", endpoints)
    assert usage.returncode == 2 and b"--cert/--key need --cacert" in usage.stderr


def test_cluster_up_tls_turns_tls_on_in_a_plain_config(make_cluster: MakeCluster) -> None:
    lc = make_cluster(start=False)
    assert not lc.cfg.security.tls
    up = kv("cluster", "up", "--tls", "--config", str(lc.config), timeout=60)
    lc.cfg = load_config(lc.config)
    lc.started |= {p for n in lc.ids if (p := lc.pid(n)) is not None}
    assert up.returncode == 0, up.stdout + up.stderr
    assert b"TLS turned on in" in up.stdout and b"leader: n" in up.stdout
    assert lc.cfg.security.tls and (lc.config.parent / "tls/n1.key").stat().st_mode & 0o077 == 0
    ok_json(kv("put", "k", "v", "--config", str(lc.config), "--json"))
    again = kv("cluster", "up", "--tls", "--config", str(lc.config))
    assert again.returncode == 0 and b"TLS turned on" not in again.stdout
    assert b"already running" in again.stdout


def test_a_node_with_unusable_tls_files_refuses_to_start(make_cluster: MakeCluster) -> None:
    lc = make_cluster(start=False, tls=True)
    ensure_peer_secret(lc.cfg)
    ensure_tls_files(lc.cfg)
    ca = lc.cfg.security.ca_file
    assert ca is not None
    kept = ca.read_bytes()
    ca.unlink()
    r = kv("node", "--config", str(lc.config), "--id", "n1")
    assert r.returncode == 2
    assert b"node n1 refuses to start: no CA certificate ([security] ca_file) at" in r.stderr
    write_new(ca, kept, private=False)
    key = lc.cfg.node("n1").key_file
    assert key is not None
    key.write_bytes(lc.cfg.node("n2").key_file.read_bytes())  # type: ignore[union-attr]
    r = kv("node", "--config", str(lc.config), "--id", "n1")
    assert r.returncode == 2 and b"n1.key is not the key of the certificate" in r.stderr
