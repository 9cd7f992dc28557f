"""Short coverage-guided fuzz runs (atheris, libFuzzer) of the network and log decoders,
each bounded in runs and time, in a subprocess (libFuzzer ends its process when done),
stopped by pid if it overstays. The hypothesis fuzz tests (tests/raft/test_codec.py,
tests/kvstore/test_protocol.py, tests/kvstore/test_commands.py) run everywhere; these
only where atheris installs (Linux x86_64 wheels)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "atheris", reason="atheris is not installed (pip install atheris: Linux x86_64 wheels)"
)

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
RUNS = 200_000
SECONDS = 10  # per target: a smoke run in the suite; run longer by hand (module docstring)


def fuzz(tmp_path: Path, target: str, *flags: str) -> tuple[int, str]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    argv = [sys.executable, "-m", "tests.fuzz.atheris_targets", target, str(corpus)]
    argv += [f"-artifact_prefix={tmp_path}/", "-max_len=4096", *flags]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("target", ["peer", "client", "log"])
def test_decoder_raises_only_its_own_error(tmp_path: Path, target: str) -> None:
    rc, out = fuzz(tmp_path, target, f"-runs={RUNS}", f"-max_total_time={SECONDS}")
    assert rc == 0, out[-4000:]
    assert "Done" in out, out[-2000:]  # libFuzzer's "Done N runs in S second(s)"
    assert not list(tmp_path.glob("crash-*")), out[-4000:]


def test_the_harness_reports_a_crash(tmp_path: Path) -> None:
    rc, out = fuzz(tmp_path, "broken", "-runs=100")
    assert rc != 0 and "the harness must report this" in out, out[-2000:]
    assert list(tmp_path.glob("crash-*"))
