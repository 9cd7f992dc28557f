"""Refused client connections: counted, and logged without letting a flood fill the disk.

A node refuses connections for reasons that can repeat thousands of times a second
(too many connections, TLS handshakes that fail or never start). Each reason gets one
:class:`RefusalLog`: every refusal is counted (``total``, for tests and operators),
but at most one line per ``interval`` seconds reaches the log, saying how many were
left out since the last.
"""

from __future__ import annotations

import logging

__all__ = ["RefusalLog"]


class RefusalLog:
    """One reason for refusing connections: a running count and a rate-limited log."""

    def __init__(self, log: logging.Logger, what: str, interval: float = 60.0) -> None:
        self._log, self._what, self._interval = log, what, interval
        self.total = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def note(self, now: float, detail: str) -> None:
        """Count one refusal at ``now`` (the loop's clock); log it unless a line about
        this reason went out less than ``interval`` seconds ago."""
        self.total += 1
        self._unlogged += 1
        if now - self._logged_at < self._interval:
            return
        n, self._unlogged, self._logged_at = self._unlogged, 0, now
        also = f" (and {n - 1} more since the last such line)" if n > 1 else ""
        self._log.warning("%s: %s%s", self._what, detail, also)
