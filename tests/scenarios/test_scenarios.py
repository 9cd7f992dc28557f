"""One pytest case per scenario file in testdata/: the golden output pins what the
nodes did, message by message. Regenerate with ``pytest --rewrite`` and read the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios.datadriven import run_file
from tests.scenarios.env import InteractionEnv

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    rewrite = bool(request.config.getoption("--rewrite"))
    run_file(path, InteractionEnv().handle, rewrite=rewrite)


def test_there_are_scenarios() -> None:
    assert len(FILES) >= 8
