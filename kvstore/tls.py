"""TLS for a node and for its clients: check the files, then build the SSL contexts.

A node with ``[security] ca_file`` serves TLS on both ports. Before it starts,
:func:`check_node_files` reads its certificate and key and refuses, with a message
naming the file and what to do, everything that would otherwise surface later as an
anonymous handshake failure on some other machine: a missing or unreadable file, a key
open to other users, a key that is not the certificate's, a certificate the CA did not
issue, one that has expired, one that does not name this member id (peers would refuse
it) or the host clients dial (clients would refuse it).

Contexts (:func:`node_contexts`): peers verify each other both ways against the CA
(``CERT_REQUIRED`` on both ends) and, instead of a host name, check that the
certificate names the member id (:func:`cert_names_member`, handed to raft's transport
as a callback). Clients verify the node's certificate and host name as any TLS client
does; the node asks clients for a certificate only with ``client_cert_auth``.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kvstore.certs import MEMBER_URI_PREFIX, member_ids, member_uri
from kvstore.config import ClusterConfig, NodeConfig
from raft.runtime.peer_tls import PeerCert, PeerTLS
from raft.types import NodeId

__all__ = [
    "NodeTLS",
    "TLSConfigError",
    "cert_names_member",
    "check_node_files",
    "client_context",
    "config_client_context",
    "node_contexts",
    "peer_tls",
]


class TLSConfigError(Exception):
    """A node's TLS files cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class NodeTLS:
    """What a node serves TLS with: mutual TLS to peers, TLS to clients."""

    peer: PeerTLS
    clients: ssl.SSLContext


def cert_names_member(cert: PeerCert, node_id: NodeId) -> bool:
    """Whether a verified peer certificate (``getpeercert()``) binds ``node_id``, and
    no other member: a certificate naming several ids would let one key speak as each
    of them, so it binds none (this tool never issues one)."""
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    named = [u for u in uris if isinstance(u, str) and u.startswith(MEMBER_URI_PREFIX)]
    return named == [member_uri(node_id)]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(
            f"no {what} at {path}: `kv cluster up --tls` or `kv cluster init --tls` "
            "creates one; across machines, copy it there"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"the {what} {path} is not a PEM certificate") from None
    return certs


def _check_dates(cert: x509.Certificate, path: Path, what: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise TLSConfigError(f"the {what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise TLSConfigError(f"the {what} {path} is not valid before {cert.not_valid_before_utc}")


def _names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host.lower() in (d.lower() for d in san.get_values_for_type(x509.DNSName))


def check_node_files(cfg: ClusterConfig, node: NodeConfig) -> None:
    """Refuse (TLSConfigError) TLS files ``node`` cannot serve with (module docstring)."""
    assert cfg.security.ca_file is not None and node.cert_file and node.key_file
    cas = _certificates(cfg.security.ca_file, "CA certificate ([security] ca_file)")
    for ca in cas:
        _check_dates(ca, cfg.security.ca_file, "CA certificate")
    [cert, *_] = _certificates(node.cert_file, f"certificate of node {node.id}")
    _check_dates(cert, node.cert_file, f"certificate of node {node.id}")
    if not any(_issued_by(cert, ca) for ca in cas):
        raise TLSConfigError(
            f"the certificate {node.cert_file} was not issued by the CA in "
            f"{cfg.security.ca_file}: peers and clients would refuse it"
        )
    named = member_ids(cert)
    if named != [node.id]:
        which = f"names member {', '.join(named)}" if named else "names no member id"
        raise TLSConfigError(
            f"the certificate {node.cert_file} {which}, not {node.id} alone: peers would "
            f"refuse it (a node certificate must carry the URI {member_uri(node.id)!r} "
            "and no other member's)"
        )
    host = node.client_address.host
    if not _names_host(cert, host):
        raise TLSConfigError(
            f"the certificate {node.cert_file} does not name {host}, the host of "
            f"{node.id}'s client_address: clients would refuse it"
        )
    _read(node.key_file, f"key of node {node.id}")
    mode = node.key_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TLSConfigError(
            f"the private key {node.key_file} is open to other users (mode "
            f"{stat.S_IMODE(mode):o}): chmod 600 {node.key_file}"
        )
    try:
        ssl.create_default_context().load_cert_chain(node.cert_file, node.key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSConfigError(
                f"the key {node.key_file} is not the key of the certificate {node.cert_file}"
            ) from None
        raise TLSConfigError(f"cannot use {node.cert_file} with {node.key_file}: {exc}") from None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def peer_tls(ca: Path, cert: Path, key: Path) -> PeerTLS:
    """Mutual TLS between peers under CA ``ca``, presenting ``cert``/``key``."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    client.check_hostname = False  # the member id is checked instead
    client.load_cert_chain(cert, key)
    return PeerTLS(server, client, cert_names_member)


def node_contexts(cfg: ClusterConfig, node: NodeConfig) -> NodeTLS:
    """The SSL contexts of ``node`` (run :func:`check_node_files` first)."""
    ca, cert, key = cfg.security.ca_file, node.cert_file, node.key_file
    assert ca is not None and cert is not None and key is not None
    clients = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    clients.verify_mode = ssl.CERT_REQUIRED if cfg.security.client_cert_auth else ssl.CERT_NONE
    clients.load_cert_chain(cert, key)
    return NodeTLS(peer_tls(ca, cert, key), clients)


def client_context(
    cafile: Path, certfile: Path | None = None, keyfile: Path | None = None
) -> ssl.SSLContext:
    """A client's context: verify the node against ``cafile`` (certificate and host
    name); present ``certfile``/``keyfile`` if given (for ``client_cert_auth``).
    Raises OSError/ssl.SSLError for files it cannot use."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def config_client_context(cfg: ClusterConfig) -> ssl.SSLContext | None:
    """The context the ``kv`` tools use for ``cfg``'s nodes: None without TLS; the CA,
    plus the configured client certificate when both its files exist."""
    sec = cfg.security
    if sec.ca_file is None:
        return None
    cert, key = sec.client_cert_file, sec.client_key_file
    if cert is not None and key is not None and cert.exists() and key.exists():
        return client_context(sec.ca_file, cert, key)
    return client_context(sec.ca_file)
