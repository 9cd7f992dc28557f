"""atheris (libFuzzer, coverage-guided) targets for the decoders that face the network
and the disk: each target states the gateway's one promise -- any input decodes or
raises that gateway's own error, never anything else (h11's fuzz invariant).

- ``peer``: what a peer connection's bytes meet (raft/runtime/transport.py): the
  handshake parser, the frame layer, and every decoder of raft/codec.py.
- ``client``: what a client connection's bytes meet at the server, and a server's
  bytes at the client (kvstore/protocol.py): the frame layer, requests, responses to
  a request of every op, hellos and hello replies.
- ``log``: the replicated command decoder (kvstore/commands.py), the gate between the
  log on disk and the state machine.
- ``broken``: a deliberately buggy target, so the test can show the harness reports a
  crash (a check that cannot fail is worthless).

Run (from the repository root)::

    python -m tests.fuzz.atheris_targets TARGET CORPUS_DIR [libFuzzer flags]

CORPUS_DIR is filled with valid encodings first (seeds), so the fuzzer starts from
inputs that get past the outer layers. Bound a run with ``-runs=N`` or
``-max_total_time=SECONDS``; libFuzzer exits 0 when it found nothing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports(include=["raft", "kvstore"]):
    from kvstore import protocol as p
    from kvstore.commands import (
        AlarmType,
        CommandError,
        DisarmAlarm,
        Header,
        Put,
        RaiseAlarm,
        Txn,
        decode_command,
        encode_command,
    )
    from kvstore.commands import PutOp as CmdPutOp
    from raft.codec import (
        decode_conf_state,
        decode_entry,
        decode_hard_state,
        decode_message,
        decode_snapshot_meta,
        encode_message,
    )
    from raft.errors import CodecError
    from raft.framing import FrameDecoder, FrameTooLarge, encode_frame
    from raft.messages import AppendEntries, RequestVote
    from raft.runtime.transport import _pack_hello, _unpack_hello
    from raft.types import Entry, EntryKind

LIMITS = p.Limits(max_frame_bytes=64 << 10, max_key_bytes=256, max_value_bytes=16 << 10)
PEER_DECODERS = (
    decode_message,
    decode_entry,
    decode_hard_state,
    decode_snapshot_meta,
    decode_conf_state,
)


def peer(data: bytes) -> None:
    _unpack_hello(data)
    for decode in PEER_DECODERS:
        with contextlib.suppress(CodecError):
            decode(data)
    dec = FrameDecoder(4096)
    with contextlib.suppress(FrameTooLarge):
        dec.feed(data)
        for frame in dec.frames():
            with contextlib.suppress(CodecError):
                decode_message(frame)


def client(data: bytes) -> None:
    for decode in (lambda d: p.decode_request(d, LIMITS), p.decode_hello, p.decode_hello_reply):
        with contextlib.suppress(p.ProtocolError):
            decode(data)
    for op in p.Op:
        with contextlib.suppress(p.ProtocolError):
            p.decode_response(data, lambda _, op=op: op, LIMITS)  # type: ignore[misc]
    dec = FrameDecoder(LIMITS.max_frame_bytes)
    with contextlib.suppress(FrameTooLarge):
        dec.feed(data)
        for frame in dec.frames():
            with contextlib.suppress(p.ProtocolError):
                p.decode_request(frame, LIMITS)


def log(data: bytes) -> None:
    with contextlib.suppress(CommandError):
        decode_command(data)


def broken(data: bytes) -> None:
    if data[:1] == b"\x93":  # a 3-array: every seed of this target starts so
        raise ValueError("the harness must report this")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "peer": peer,
    "client": client,
    "log": log,
    "broken": broken,
}


def seeds(target: str) -> list[bytes]:
    """Valid encodings to start from."""
    session = p.Session(client=bytes(16), seq=2, ack=1)
    if target == "peer":
        ae = AppendEntries(
            src="n1",
            dst="n2",
            term=2,
            prev_index=5,
            prev_term=1,
            entries=(Entry(2, 6, EntryKind.NORMAL, b"abc"),),
            commit=5,
        )
        rv = RequestVote(src="n1", dst="n2", term=3, last_index=7, last_term=2, pre_vote=True)
        msgs = [encode_message(ae), encode_message(rv)]
        return [*msgs, *(encode_frame(m) for m in msgs), _pack_hello(b"n" * 16)[4:]]
    if target == "client":
        reqs = [
            p.Put(id=1, key=b"k", value=b"v", session=session),
            p.AlarmDisarm(id=2, alarm=AlarmType.NOSPACE),
            p.Txn(id=3, success=(CmdPutOp(b"k", b"v"),), session=session),
        ]
        resps = [
            p.AlarmsResponse(id=1, alarms=(p.AlarmInfo(alarm="NOSPACE", node="n1"),)),
            p.ErrorResponse(id=1, code=p.Code.NOSPACE, message="full"),
        ]
        enc = [*map(p.encode_request, reqs), *map(p.encode_response, resps)]
        return [*enc, *(encode_frame(e) for e in enc), p.encode_hello(p.Hello())]
    if target == "log":
        h = Header(bytes(16), 2, 1)
        cmds = [
            Put(b"k", b"v"),
            Txn((), (CmdPutOp(b"k", b"v"),), ()),
            DisarmAlarm(AlarmType.NOSPACE),
        ]
        return [encode_command(h, c) for c in cmds] + [
            encode_command(Header(bytes(16), 1, 0), RaiseAlarm(AlarmType.NOSPACE, b"n1"))
        ]
    return [b"\x93\x01\x02\x03"]


def main(argv: list[str]) -> None:
    target, corpus = argv[1], Path(argv[2])
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([argv[0], str(corpus), *argv[3:]], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
