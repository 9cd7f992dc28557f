"""One pytest case per scenario file in testdata/: the golden output pins what the
nodes did, message by message. Regenerate with ``pytest --rewrite`` and read the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios.datadriven import run_file
from tests.scenarios.env import InteractionEnv

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))

# Scenario files whose golden output documents a core bug (see the file's comments).
_NEXT_INDEX = (
    "core bug: Raft._become_leader sets every follower's next to match + 1 = 1 instead of "
    "last index + 1 (Figure 2); expected output is Figure 2's behaviour"
)
XFAIL: dict[str, str] = {"new_leader_next_index": _NEXT_INDEX, "fast_backoff": _NEXT_INDEX}


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    rewrite = bool(request.config.getoption("--rewrite"))
    if path.stem in XFAIL:
        if rewrite:  # never overwrite the correct expectation with the buggy output
            pytest.skip("expected output pins the correct behaviour; edit it by hand")
        request.applymarker(pytest.mark.xfail(strict=True, reason=XFAIL[path.stem]))
    run_file(path, InteractionEnv().handle, rewrite=rewrite)


def test_there_are_scenarios() -> None:
    assert len(FILES) >= 8
