"""libfaketime for the clock tests: installed when missing, never silently skipped in CI.

The test command (README line 2, ``.ci/run``) stays one command; the clock tests ask
for the ``libfaketime`` fixture, which installs Debian's ``faketime`` package with
``apt-get`` (as root; once per session) when the library is missing. If it still is:
under ``CI=true`` the test fails (a CI run that skipped the clock self-test would claim
coverage it does not have); elsewhere it is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from jepsen_like.clock import LIBFAKETIME, available


def _install() -> str:
    """Try to install faketime; returns what happened, for the skip or fail message."""
    if os.geteuid() != 0:
        return "not root: install it with apt-get install faketime"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", *args], env=env, capture_output=True, text=True, timeout=600
        )

    if apt("install", "-y", "-q", "faketime").returncode == 0:
        return "installed"
    apt("update", "-q")  # the package lists may be missing or stale
    done = apt("install", "-y", "-q", "faketime")
    return "installed" if done.returncode == 0 else f"apt-get failed: {done.stderr[-300:]}"


@pytest.fixture(scope="session")
def libfaketime() -> Path:
    if not available():
        outcome = _install()
        if not available():
            reason = f"libfaketime ({LIBFAKETIME}) is missing: {outcome}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason} (CI=true: the clock tests must run)")
            pytest.skip(reason)
    return LIBFAKETIME
