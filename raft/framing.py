"""Length-prefixed frames over a byte stream, free of I/O (h11's receive buffer).

A frame is a 4-byte big-endian unsigned length followed by that many payload bytes.
The transport feeds whatever the socket produced to :meth:`FrameDecoder.feed` and pulls
complete payloads with :meth:`FrameDecoder.next_frame`; this module never reads or
writes a socket, so the same code serves the asyncio runtime and byte-level tests.

Memory is bounded by the frame limit: a header declaring more than
``max_frame_bytes`` raises :class:`FrameTooLarge` as soon as the header is seen, before
any of the body is buffered on its behalf. The error is sticky: the stream has lost
its framing, so every later call raises again and the caller must drop the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from raft.errors import CodecError

__all__ = ["HEADER_BYTES", "MAX_FRAME_LIMIT", "FrameDecoder", "FrameTooLarge", "encode_frame"]

_HEADER = struct.Struct(">I")
HEADER_BYTES = _HEADER.size
MAX_FRAME_LIMIT = (1 << 32) - 1
"""The largest length a 4-byte header can declare."""

_COMPACT_AT = 64 << 10  # consumed bytes kept before compaction: amortises the memmove


class FrameTooLarge(CodecError):
    """A frame header declared more bytes than the decoder accepts."""


def frame_header(payload: bytes) -> bytes:
    """The 4-byte length that goes before ``payload`` (written separately, it saves
    copying a large payload once more)."""
    if len(payload) > MAX_FRAME_LIMIT:
        raise FrameTooLarge(f"payload of {len(payload)} bytes does not fit a 4-byte length")
    return _HEADER.pack(len(payload))


def encode_frame(payload: bytes) -> bytes:
    """``payload`` behind its 4-byte big-endian length."""
    return frame_header(payload) + payload


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes in any split, pull whole payloads out.

    The buffer is a bytearray plus a read offset; consumed bytes are dropped only once
    they are both numerous and at least half the buffer, so total work is O(n)."""

    def __init__(self, max_frame_bytes: int = 16 << 20) -> None:
        if not 0 <= max_frame_bytes <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame_bytes must be in [0, {MAX_FRAME_LIMIT}]")
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0  # Invariant: 0 <= _pos <= len(_buf); bytes before _pos are consumed
        self._error: FrameTooLarge | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet returned: non-zero at EOF means a truncated frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Buffer ``data``. Raises FrameTooLarge if the next frame's header is oversize."""
        self._raise_if_failed()
        if self._pos:
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif self._pos >= _COMPACT_AT and 2 * self._pos >= len(self._buf):
                del self._buf[: self._pos]
                self._pos = 0
        self._buf += data
        self._peek_length()

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None until more bytes are fed."""
        self._raise_if_failed()
        n = self._peek_length()
        if n is None:
            return None
        start = self._pos + HEADER_BYTES
        end = start + n
        if end > len(self._buf):
            return None
        with memoryview(self._buf)[start:end] as view:  # one copy; export ends here
            frame = bytes(view)
        self._pos = end
        return frame

    def frames(self) -> Iterator[bytes]:
        """Every complete payload buffered so far, in order."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def _peek_length(self) -> int | None:
        """Length declared by the header at the read offset, checked against the limit."""
        if len(self._buf) - self._pos < HEADER_BYTES:
            return None
        (n,) = _HEADER.unpack_from(self._buf, self._pos)
        if n > self._max:
            self._error = FrameTooLarge(f"frame of {n} bytes exceeds limit of {self._max}")
            raise self._error
        return int(n)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
