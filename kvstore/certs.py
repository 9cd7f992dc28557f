"""Certificates for a cluster: a CA, one certificate per node, one for clients.

Why our own small CA: TLS between peers only proves something if a certificate binds a
*member id*, and the operator should not need openssl recipes to get that right. Each
node certificate names its member id as a URI subject alternative name
(:func:`member_uri`, ``urn:raftkv:member:<id>``), which both ends of a peer connection
check against the id the other end claims (kvstore/tls.py); it also names the node's IP
addresses and host names, so clients can verify the host they dialled as with any TLS
server. The client certificate names no member: it can authenticate a client
(``client_cert_auth``) but never pass as a peer.

The CA's key (``ca.key`` beside ``ca.crt``) signs certificates and nothing else: no node
needs it, and across machines it should stay on the machine that ran ``kv cluster init``
(or offline). Private keys are written mode 0600, never overwritten, and fsynced; a
certificate and its key land together or not at all (:func:`write_pair`).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvstore.config import ca_key_file

__all__ = [
    "MEMBER_URI_PREFIX",
    "CertPair",
    "CertificateAuthority",
    "ca_key_path",
    "member_ids",
    "member_uri",
    "write_new",
    "write_pair",
]

MEMBER_URI_PREFIX = "urn:raftkv:member:"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime clients commonly accept


def member_uri(node_id: str) -> str:
    """The URI SAN that binds a certificate to member ``node_id``."""
    return MEMBER_URI_PREFIX + node_id


def member_ids(cert: x509.Certificate) -> list[str]:
    """The member ids ``cert`` names (none for a client certificate)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [u[len(MEMBER_URI_PREFIX) :] for u in uris if u.startswith(MEMBER_URI_PREFIX)]


def ca_key_path(ca_file: Path) -> Path:
    """Where the CA's private key lives: ``ca.crt`` → ``ca.key`` (one rule, kept in
    kvstore/config.py, which refuses a node whose files would land there)."""
    return ca_key_file(ca_file)


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast, small, universally supported


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftkv"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


class CertificateAuthority:
    """A CA certificate with its key, able to sign node and client certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert, self.key = cert, key

    @classmethod
    def create(cls, cluster_id: str) -> CertificateAuthority:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = _name(f"raftkv CA for cluster {cluster_id}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, ca_file: Path) -> CertificateAuthority:
        """The CA at ``ca_file`` with its key at :func:`ca_key_path` (OSError, ValueError)."""
        cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        key = serialization.load_pem_private_key(ca_key_path(ca_file).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path(ca_file)}: not a key this tool made (EC P-256)")
        return cls(cert, key)

    @property
    def pair(self) -> CertPair:
        return CertPair(self.cert.public_bytes(serialization.Encoding.PEM), _key_pem(self.key))

    def issue_node(self, node_id: str, hosts: Iterable[str]) -> CertPair:
        """A certificate for member ``node_id`` reachable at ``hosts`` (IPs or names):
        usable as a TLS server (peers, clients) and as a TLS client (dialling peers)."""
        names = [x509.UniformResourceIdentifier(member_uri(node_id)), *_host_names(hosts)]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._issue(f"raftkv member {node_id}", names, usages)

    def issue_client(self, name: str) -> CertPair:
        """A client certificate: TLS client only, naming no member."""
        return self._issue(name, [], [ExtendedKeyUsageOID.CLIENT_AUTH])

    def _issue(
        self, common_name: str, names: list[x509.GeneralName], usages: list[x509.ObjectIdentifier]
    ) -> CertPair:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_new(path: Path, data: bytes, *, private: bool) -> None:
    """Write a new file whole or not at all (see :func:`write_pair`); a private key is
    mode 0600 from its creation, a certificate 0644. FileExistsError if it exists:
    nothing is ever overwritten."""
    tmp = _stage(path, data, private=private)
    try:
        _publish(tmp, path)
    finally:
        _discard(tmp)


def write_pair(cert_path: Path, key_path: Path, pair: CertPair) -> None:
    """Write a new certificate and its key so that a crash leaves both or neither,
    except in one narrow window that :func:`kvstore.security.ensure_tls_files` reports.

    Each file is first written whole to a temporary beside it (created with O_EXCL, the
    key's mode 0600 from the start) and fsynced; then the key is linked into place, the
    certificate after it, and both directories fsynced. Until the first link nothing
    is visible (a crash leaves only hidden ``.<name>.*.tmp`` files); a failure after it
    removes the key again. Only a crash between the two links leaves the key without
    its certificate: a half pair, which the next run refuses naming both files, rather
    than making a new key beside an old one. (The key goes first because a CA
    certificate without its key is the normal state of a node's machine.)
    FileExistsError, with nothing written, if either file exists."""
    for path in (key_path, cert_path):
        if path.exists():
            raise FileExistsError(f"{path} exists: certificates and keys are never overwritten")
    key_tmp = _stage(key_path, pair.key_pem, private=True)
    try:
        cert_tmp = _stage(cert_path, pair.cert_pem, private=False)
        try:
            _publish(key_tmp, key_path)
            try:
                _publish(cert_tmp, cert_path)
            except BaseException:
                key_path.unlink()  # ours, just linked: the pair lands whole or not at all
                raise
        finally:
            _discard(cert_tmp)
    finally:
        _discard(key_tmp)


def _stage(path: Path, data: bytes, *, private: bool) -> Path:
    """``data`` in a new, fsynced temporary beside ``path`` (mode 0600, or 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        if not private:
            os.fchmod(f.fileno(), 0o644)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(name)


def _publish(tmp: Path, path: Path) -> None:
    """Give the complete ``tmp`` its final name ``path`` and make that durable. A hard
    link, not a rename: it fails (FileExistsError) rather than replace a file that
    appeared meanwhile."""
    os.link(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
