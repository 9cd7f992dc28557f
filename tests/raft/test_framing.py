"""raft.framing: frames survive any split of the stream (h11's ``tr()``: whole,
byte-by-byte, with trailing bytes), and an oversize header fails before its body."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.errors import CodecError
from raft.framing import HEADER_BYTES, FrameDecoder, FrameTooLarge, encode_frame

PAYLOADS = [b"", b"x", b"hello world", bytes(range(256)) * 40]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)

payload_lists = st.lists(st.binary(max_size=300), max_size=12)


def decode_in_chunks(chunks: list[bytes], limit: int = 16 << 20) -> tuple[list[bytes], int]:
    """Feed ``chunks`` one at a time, draining after each; (frames, leftover bytes)."""
    dec = FrameDecoder(limit)
    out: list[bytes] = []
    for chunk in chunks:
        dec.feed(chunk)
        out.extend(dec.frames())
    return out, dec.buffered_bytes


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert HEADER_BYTES == 4


def test_FrameDecoder_whole() -> None:
    assert decode_in_chunks([STREAM]) == (PAYLOADS, 0)


def test_FrameDecoder_byte_by_byte() -> None:
    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        dec.feed(STREAM[i : i + 1])
        frame = dec.next_frame()
        if frame is not None:
            out.append(frame)
            assert dec.next_frame() is None
    assert out == PAYLOADS
    assert dec.buffered_bytes == 0


def test_FrameDecoder_trailing_partial_bytes() -> None:
    for extra in (b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x05ab"):
        frames, leftover = decode_in_chunks([STREAM + extra])
        assert frames == PAYLOADS
        assert leftover == len(extra)


def test_FrameDecoder_partial_frame_completes_later() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00\x00\x00\x05ab")
    assert dec.next_frame() is None
    dec.feed(b"cde" + b"\x00")
    assert list(dec.frames()) == [b"abcde"]
    assert dec.buffered_bytes == 1


def test_FrameDecoder_no_feed_no_frame() -> None:
    dec = FrameDecoder()
    assert dec.next_frame() is None
    dec.feed(b"")
    assert list(dec.frames()) == []


@given(payload_lists, st.lists(st.integers(0, 5000), max_size=20))
def test_FrameDecoder_random_splits(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    assert decode_in_chunks(split_at(stream, cuts)) == (payloads, 0)


@given(payload_lists, st.lists(st.integers(0, 5000), max_size=20), st.binary(max_size=3))
def test_FrameDecoder_random_splits_with_trailing_bytes(
    payloads: list[bytes], cuts: list[int], tail: bytes
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads) + tail
    assert decode_in_chunks(split_at(stream, cuts)) == (payloads, len(tail))


def test_FrameDecoder_compacts_without_losing_data() -> None:
    """A long stream in chunks that never align with frames, so the buffer always holds
    a partial frame: it is compacted along the way, yet every frame comes out intact
    and the buffer stays bounded by the compaction threshold, not the stream length."""
    payloads = [bytes([i % 251]) * (i % 1500) for i in range(2000)]
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    out: list[bytes] = []
    peak = 0
    for i in range(0, len(stream), 777):
        dec.feed(stream[i : i + 777])
        out.extend(dec.frames())
        peak = max(peak, len(dec._buf))
    assert out == payloads
    assert dec.buffered_bytes == 0
    assert len(stream) > 1 << 20
    assert peak < 256 << 10


def test_FrameDecoder_oversize_header_raises_on_feed_before_body() -> None:
    dec = FrameDecoder(max_frame_bytes=10)
    dec.feed(b"\x00\x00")
    with pytest.raises(FrameTooLarge):
        dec.feed(struct.pack(">H", 11))
    # Sticky: the stream has lost its framing.
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    with pytest.raises(FrameTooLarge):
        dec.feed(b"x" * 11)


def test_FrameDecoder_oversize_after_good_frames() -> None:
    dec = FrameDecoder(max_frame_bytes=10)
    dec.feed(encode_frame(b"ok") + b"\xff\xff\xff\xff")
    assert dec.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_FrameDecoder_limit_is_inclusive() -> None:
    dec = FrameDecoder(max_frame_bytes=3)
    dec.feed(encode_frame(b"abc"))
    assert dec.next_frame() == b"abc"


def test_FrameTooLarge_is_a_codec_error() -> None:
    assert issubclass(FrameTooLarge, CodecError)


@pytest.mark.parametrize("limit", [-1, 1 << 32])
def test_FrameDecoder_rejects_impossible_limits(limit: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(limit)
