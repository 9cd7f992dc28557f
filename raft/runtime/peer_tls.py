"""Mutual TLS between peers: what the transport needs, and nothing of where it comes from.

The transport cannot know how a certificate names a member (that is the store's
convention, kvstore/certs.py), and raft/ must not import kvstore/. So the node passes
in two contexts that already verify the other end against the cluster's CA, and a
callback that says whether a verified certificate names a given member id. The
transport asks it on both sides of every connection: the dialer about the member it
dialled, before it sends anything; the acceptor about the member the dialer claims in
the handshake, before it answers "ok". Without that check any member's certificate
(or any certificate the CA ever signed) could speak as any other member.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raft.types import NodeId

__all__ = ["PeerCert", "PeerTLS"]

PeerCert = dict[str, Any]
"""A verified peer certificate as ``ssl.SSLSocket.getpeercert()`` returns it."""


@dataclass(frozen=True, slots=True)
class PeerTLS:
    """``server`` must require a client certificate (``CERT_REQUIRED``) and ``client``
    must verify the server's; both against the cluster's CA. ``names(cert, node_id)``:
    whether ``cert`` binds ``node_id`` (names it, and no other member: one key must
    not speak as several members)."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    names: Callable[[PeerCert, NodeId], bool]

    def __post_init__(self) -> None:
        if self.server.verify_mode is not ssl.CERT_REQUIRED:
            raise ValueError("peer TLS server context must require client certificates")
        if self.client.verify_mode is not ssl.CERT_REQUIRED:
            raise ValueError("peer TLS client context must verify the server certificate")
