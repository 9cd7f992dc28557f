"""TLS configuration and files (kvstore/config.py [security], kvstore/certs.py,
kvstore/tls.py, kvstore/security.py): what ``kv cluster up --tls`` creates, and every
file a node cannot serve with refused before it starts, naming the file and the fix."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from kvstore.certs import CertificateAuthority, ca_key_path, member_ids, member_uri
from kvstore.config import Address, ConfigError, generate_config, parse_config
from kvstore.security import (
    SecurityError,
    ensure_peer_secret,
    ensure_tls_files,
    node_peer_secret,
    node_tls,
)
from tests.raft.runtime.test_transport_tls import issue_multi


def config(tmp_path: Path, text: str | None = None):  # type: ignore[no-untyped-def]
    return parse_config(text or generate_config(3, tls=True), base_dir=tmp_path)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_tls_files_are_created_once_keys_private(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    tls = tmp_path / "tls"
    assert cfg.security.ca_file == tls / "ca.crt"
    assert cfg.nodes[0].cert_file == tls / "n1.crt" and cfg.nodes[0].key_file == tls / "n1.key"
    written = ensure_tls_files(cfg)
    names = {"ca.crt", "ca.key", "client.crt", "client.key"}
    names |= {f"n{i}.{x}" for i in (1, 2, 3) for x in ("crt", "key")}
    assert {p.name for p in written} == names
    for p in written:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.suffix == ".key" else 0o644), (p, oct(mode))
    before = {p: p.read_bytes() for p in written}
    assert ensure_tls_files(cfg) == []
    assert {p: p.read_bytes() for p in written} == before
    n1 = load(tls / "n1.crt")
    assert member_ids(n1) == ["n1"]
    san = n1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert member_ids(load(tls / "client.crt")) == []  # a client can never pass as a peer
    for node in cfg.nodes:
        assert node_tls(cfg, node) is not None


def test_a_missing_certificate_is_issued_from_the_existing_ca(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    ca = (tmp_path / "tls/ca.crt").read_bytes()
    for name in ("n2.crt", "n2.key"):
        (tmp_path / "tls" / name).unlink()
    assert {p.name for p in ensure_tls_files(cfg)} == {"n2.crt", "n2.key"}
    assert (tmp_path / "tls/ca.crt").read_bytes() == ca
    node_tls(cfg, cfg.node("n2"))
    ca_key_path(cfg.security.ca_file).unlink()  # across machines the CA key stays home
    (tmp_path / "tls/n3.crt").unlink()
    (tmp_path / "tls/n3.key").unlink()
    with pytest.raises(SecurityError, match=r"cannot issue certificates for .*n3\.crt"):
        ensure_tls_files(cfg)


def test_without_tls_nothing_is_created_and_no_context(tmp_path: Path) -> None:
    cfg = config(tmp_path, generate_config(3))
    assert ensure_tls_files(cfg) == [] and node_tls(cfg, cfg.nodes[0]) is None
    assert not (tmp_path / "tls").exists()


def refused(cfg: object, node: str, match: str) -> None:
    with pytest.raises(SecurityError, match=match):
        node_tls(cfg, cfg.node(node))  # type: ignore[attr-defined]


def test_a_missing_ca_file_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    (tmp_path / "tls/ca.crt").unlink()
    refused(cfg, "n1", r"no CA certificate \(\[security\] ca_file\) at .*ca\.crt")


def test_a_key_that_is_not_the_certificates_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    (tmp_path / "tls/n1.key").write_bytes((tmp_path / "tls/n2.key").read_bytes())
    refused(cfg, "n1", r"n1\.key is not the key of the certificate .*n1\.crt")


def test_a_certificate_naming_another_member_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    for x in ("crt", "key"):
        (tmp_path / f"tls/n1.{x}").write_bytes((tmp_path / f"tls/n2.{x}").read_bytes())
    refused(cfg, "n1", r"n1\.crt names member n2, not n1 alone: peers would refuse")
    text = generate_config(3, tls=True).replace(
        'id = "n1"', 'id = "n1"\ncert_file = "tls/n2.crt"\nkey_file = "tls/n2.key"'
    )
    with pytest.raises(
        ConfigError, match=r"cert_file of node 'n2'.*n2\.crt, would be the cert_file of node 'n1'"
    ):
        config(tmp_path, text)


def test_a_certificate_naming_several_members_refuses_the_start(tmp_path: Path) -> None:
    """Peers would refuse it (one key must not speak as several members)."""
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    ca = CertificateAuthority.load(cfg.security.ca_file)
    both = issue_multi(ca, ["n1", "n2"])
    (tmp_path / "tls/n1.crt").write_bytes(both.cert_pem)
    (tmp_path / "tls/n1.key").write_bytes(both.key_pem)
    refused(cfg, "n1", r"n1\.crt names member n1, n2, not n1 alone: peers would refuse")


@pytest.mark.parametrize(
    ("node_id", "clash"),
    [
        ("client", r"client\.crt, would be the kv tools' client certificate"),
        ("ca", r"ca\.crt, would be the CA certificate \(\[security\] ca_file\)"),
    ],
)
def test_a_node_id_whose_tls_files_would_be_the_clusters_is_a_config_error(
    tmp_path: Path, node_id: str, clash: str
) -> None:
    """<ca dir>/<id>.crt must not be the client's or the CA's file: the tools would
    present a member's certificate as theirs, or creating the files would fail half-way.
    The error points at the id (or at the key that names the file)."""
    local = Address("127.0.0.1", 7101), Address("127.0.0.1", 7201)
    text = generate_config(0, nodes=[(node_id, *local)], tls=True)
    line = text.splitlines().index(f'id = "{node_id}"') + 1
    with pytest.raises(ConfigError, match=f":{line}: the cert_file of node '{node_id}' .*{clash}"):
        config(tmp_path, text)
    assert config(tmp_path, generate_config(0, nodes=[(node_id, *local)]))  # no TLS: fine
    explicit = generate_config(3, tls=True).replace(
        'id = "n1"', 'id = "n1"\ncert_file = "n1.crt"\nkey_file = "tls/ca.key"'
    )
    line = explicit.splitlines().index('key_file = "tls/ca.key"') + 1
    clash = r"key_file of node 'n1', .*ca\.key, would be the CA's key .*point key_file elsewhere"
    with pytest.raises(ConfigError, match=f":{line}: the {clash}"):
        config(tmp_path, explicit)
    same = generate_config(3, tls=True).replace(
        'id = "n2"', 'id = "n2"\ncert_file = "tls/n1.key"'
    )  # another node's key as this one's certificate
    with pytest.raises(
        ConfigError, match=r"cert_file of node 'n2', .*would be the key_file of node 'n1'"
    ):
        config(tmp_path, same)


def test_a_certificate_from_another_ca_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    rogue = CertificateAuthority.create("other").issue_node("n1", ["127.0.0.1"])
    (tmp_path / "tls/n1.crt").write_bytes(rogue.cert_pem)
    (tmp_path / "tls/n1.key").write_bytes(rogue.key_pem)
    refused(cfg, "n1", r"n1\.crt was not issued by the CA in .*ca\.crt")


def test_a_certificate_without_the_client_host_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    ca = CertificateAuthority.load(cfg.security.ca_file)
    other = ca.issue_node("n1", ["10.9.9.9"])
    (tmp_path / "tls/n1.crt").write_bytes(other.cert_pem)
    (tmp_path / "tls/n1.key").write_bytes(other.key_pem)
    refused(cfg, "n1", r"does not name 127\.0\.0\.1, the host of n1's client_address")


def test_a_node_key_open_to_others_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    (tmp_path / "tls/n1.key").chmod(0o644)
    refused(cfg, "n1", r"n1\.key is open to other users .*chmod 600")


def test_a_certificate_that_is_not_pem_refuses_the_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_tls_files(cfg)
    (tmp_path / "tls/n1.crt").write_text("hello\n")
    refused(cfg, "n1", r"certificate of node n1 .*n1\.crt is not a PEM certificate")


def test_off_loopback_tls_satisfies_the_rule(tmp_path: Path) -> None:
    """A node on a non-loopback address starts with TLS and without ``insecure``; the
    certificates made for it name that address."""
    plain = generate_config(3).replace("127.0.0.1:7101", "10.1.2.3:7101")
    plain = plain.replace("127.0.0.1:7201", "10.1.2.3:7201")
    cfg = config(tmp_path, plain)
    ensure_peer_secret(cfg)
    with pytest.raises(SecurityError, match=r"not loopback: .*needs TLS \(\[security\] ca_file"):
        node_peer_secret(cfg, cfg.node("n1"))
    tls = config(tmp_path, plain.replace('# ca_file = "tls/ca.crt"', 'ca_file = "tls/ca.crt"'))
    assert tls.security.tls and not tls.security.insecure
    ensure_tls_files(tls)
    assert node_peer_secret(tls, tls.node("n1"))  # the secret, still required and used
    assert node_tls(tls, tls.node("n1")) is not None
    san = load(tmp_path / "tls/n1.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert member_uri("n1") in san.value.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("client_cert_auth = false", "client_cert_auth = 1"), "client_cert_auth must be true"),
        (('ca_file = "tls/ca.crt"', 'ca_file = ""'), "ca_file must name a file"),
        (('ca_file = "tls/ca.crt"', "ca_file = 3"), "ca_file must be a string"),
        (('ca_file = "tls/ca.crt"', 'cafile = "x"'), "unknown key 'cafile'"),
    ],
)
def test_tls_settings_are_validated(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, generate_config(3, tls=True).replace(*edit))


def test_tls_settings_without_a_ca_file_are_errors(tmp_path: Path) -> None:
    text = generate_config(3)
    with pytest.raises(ConfigError, match=r"client_cert_auth needs ca_file \(TLS\)"):
        config(tmp_path, text.replace("# client_cert_auth = false", "client_cert_auth = true"))
    with pytest.raises(ConfigError, match=r"cert_file needs \[security\] ca_file"):
        config(tmp_path, text.replace('id = "n2"', 'id = "n2"\ncert_file = "n2.crt"'))
    ok = config(tmp_path, text.replace("# client_cert_auth = false", "client_cert_auth = false"))
    assert not ok.security.tls
