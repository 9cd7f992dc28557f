"""Convert the published histories beside this file into our JSONL history format.

Run ``python tests/jepsen_like/data/convert.py`` from the repository root to regenerate
every ``*.jsonl`` from its source; ``test_checker`` checks they are up to date.

Neither source format has timestamps, so record ``i`` (from 0) gets ``time = i``: only the
order matters to the checker. Both use one register, here key ``"r"``. A ``:fail`` read
that ``:timed-out`` is really unknown and becomes ``info``; invokes never completed stay
open (the checker reads them as ``info``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEY = "r"

_LOG_LINE = re.compile(r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(\w+)\s+:(\w+)\s+(.*?)\s*$")
_EDN_MAP = re.compile(r"\{([^}]*)\}")
_EDN_FIELD = re.compile(r":(\w+)\s+(\[[^\]]*\]|:?[\w-]+)")


def _value(text: str) -> Any:
    """An EDN scalar or vector of integers: nil, 3, [1 2], or a keyword (-> None)."""
    if text == "nil" or text.startswith(":"):
        return None
    if text.startswith("["):
        return [int(v) for v in text.strip("[]").split()]
    return int(text)


def _record(index: int, process: int, rtype: str, f: str, value: Any) -> dict[str, Any]:
    if rtype == "fail" and value is None:  # ":fail :read :timed-out": not a definite failure
        rtype = "info"
    if rtype == "invoke" and f == "read":
        value = None
    return {"process": process, "type": rtype, "f": f, "key": KEY, "value": value, "time": index}


def convert_jepsen_log(text: str) -> list[dict[str, Any]]:
    """Jepsen's ``jepsen.util`` log lines (porcupine's ``test_data/jepsen/etcd_*.log``)."""
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        process, rtype, f, value = match.groups()
        records.append(_record(len(records), int(process), rtype, f, _value(value)))
    return records


def convert_edn(text: str) -> list[dict[str, Any]]:
    """A Knossos EDN history: a sequence of ``{:type .. :f .. :value .. :process ..}`` maps."""
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())  # drop comments
    records: list[dict[str, Any]] = []
    for body in _EDN_MAP.findall(text):
        fields = dict(_EDN_FIELD.findall(body))
        records.append(
            _record(
                len(records),
                int(fields["process"]),
                fields["type"].lstrip(":"),
                fields["f"].lstrip(":"),
                _value(fields["value"]),
            )
        )
    return records


def to_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def converted() -> dict[Path, str]:
    """Every fixture's JSONL text, by target path."""
    out = {}
    for source in sorted(HERE.glob("*.log")):
        out[source.with_suffix(".jsonl")] = to_jsonl(convert_jepsen_log(source.read_text()))
    for source in sorted(HERE.glob("*.edn")):
        out[source.with_suffix(".jsonl")] = to_jsonl(convert_edn(source.read_text()))
    return out


if __name__ == "__main__":
    for target, text in converted().items():
        target.write_text(text)
        print(f"wrote {target.name}")
