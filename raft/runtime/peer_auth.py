"""Peer authentication: a mutual HMAC challenge-response over a cluster secret.

Every peer connection starts with a handshake that proves, in both directions, that
the other end holds the cluster's secret, without sending it and without naming
anything (cluster id, member ids) to an end that has not proved it:

1. dialer -> acceptor: ``nonce_d``       (16 fresh random bytes)
2. acceptor -> dialer: ``nonce_a, mac_a``
   mac_a = MAC(k, "acceptor", nonce_d, nonce_a, acceptor_id)
3. dialer checks ``mac_a`` for the member it meant to reach; dialer -> acceptor:
   ``node_id, mac_d``, mac_d = MAC(k, "dialer", nonce_a, nonce_d, node_id, acceptor_id)
4. acceptor checks ``mac_d`` (naming itself) and that ``node_id`` is a member: ``ok``,
   else ``refused``.

Both MACs name the acceptor: a process without the secret that sits on one member's
address (while that member is down) cannot relay another member's answers to pass as
it, nor pass the dialer's proof on to a third member.

``k`` is derived from the secret and the cluster id (:func:`derive_key`), so the
cluster id is checked without being sent. Fresh nonces on both sides make every MAC
good for one connection only (no replay), and the role labels keep a MAC one side
computed from ever passing as the other side's. Comparisons are constant-time.

The secret proves membership of the cluster, not *which* member: any holder can claim
any member id (only mutual TLS binds an id to a key; docs/SECURITY.md). A node started
``insecure`` derives its key from an empty secret: the handshake then still detects a
wrong cluster id, but authenticates nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["MAC_BYTES", "NONCE_BYTES", "PeerKey", "derive_key"]

NONCE_BYTES = 16
MAC_BYTES = 32
MIN_SECRET_BYTES = 16


def derive_key(secret: bytes, cluster_id: str) -> bytes:
    """The handshake key of ``cluster_id`` under ``secret`` (b"" when insecure)."""
    return hmac.new(secret, b"raftkv-peer-key\0" + cluster_id.encode(), hashlib.sha256).digest()


class PeerKey:
    """The MACs of the handshake under one derived key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @staticmethod
    def nonce() -> bytes:
        return os.urandom(NONCE_BYTES)

    def _mac(self, *parts: bytes) -> bytes:
        h = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            h.update(len(part).to_bytes(4, "big"))  # unambiguous concatenation
            h.update(part)
        return h.digest()

    def acceptor_mac(self, nonce_d: bytes, nonce_a: bytes, acceptor: str) -> bytes:
        return self._mac(b"acceptor", nonce_d, nonce_a, acceptor.encode())

    def dialer_mac(self, nonce_a: bytes, nonce_d: bytes, node_id: str, acceptor: str) -> bytes:
        return self._mac(b"dialer", nonce_a, nonce_d, node_id.encode(), acceptor.encode())

    def check_acceptor(self, nonce_d: bytes, nonce_a: bytes, acceptor: str, mac: object) -> bool:
        good = self.acceptor_mac(nonce_d, nonce_a, acceptor)
        return type(mac) is bytes and hmac.compare_digest(mac, good)

    def check_dialer(
        self, nonce_a: bytes, nonce_d: bytes, node_id: str, acceptor: str, mac: object
    ) -> bool:
        good = self.dialer_mac(nonce_a, nonce_d, node_id, acceptor)
        return type(mac) is bytes and hmac.compare_digest(mac, good)
