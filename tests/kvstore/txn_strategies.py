"""What the command, protocol and state-machine tests share to generate transactions."""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.commands import RangeOp, TxnOp


def one_write_per_key(ops: Iterable[TxnOp]) -> tuple[TxnOp, ...]:
    """``ops`` with every put or delete of an already written key dropped: a valid
    branch (``kvstore.commands.check_branch``) for a strategy to build from."""
    seen: set[bytes] = set()
    out: list[TxnOp] = []
    for op in ops:
        if isinstance(op, RangeOp) or op.key not in seen:
            out.append(op)
            if not isinstance(op, RangeOp):
                seen.add(op.key)
    return tuple(out)
