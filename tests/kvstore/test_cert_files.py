"""Creating TLS files survives a crash (kvstore/certs.py ``write_pair``,
kvstore/security.py ``ensure_tls_files``): a process killed at any point of creating
the CA leaves either nothing visible, the whole pair, or a half pair that the next run
refuses with an error naming the files -- never a state where the next run makes a new
CA and then trips over the old key (FileExistsError), as it did."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.certs import CertificateAuthority, write_pair
from kvstore.config import generate_config, load_config
from kvstore.security import SecurityError, ensure_tls_files, node_tls

# Dies (os._exit: no cleanup, no buffers flushed) just before the n-th fsync of the run,
# whichever file it is for: the same crash points whatever the write path looks like.
CRASH = """
import os, sys
from kvstore.config import load_config
from kvstore.security import ensure_tls_files

calls, real = 0, os.fsync
def fsync(fd):
    global calls
    calls += 1
    if calls == int(sys.argv[2]):
        os._exit(3)
    real(fd)
os.fsync = fsync
ensure_tls_files(load_config(sys.argv[1]))
"""


def crash_creating(config: Path, at_fsync: int) -> None:
    run = subprocess.run([sys.executable, "-c", CRASH, str(config), str(at_fsync)], timeout=60)
    assert run.returncode == 3, "the crash point was not reached"


@pytest.mark.parametrize("at_fsync", [1, 2, 3])
def test_a_crash_while_creating_the_ca_leaves_nothing_or_a_named_half_pair(
    tmp_path: Path, at_fsync: int
) -> None:
    """fsyncs 1 and 2 stage ca.key and ca.crt, 3 makes ca.key's name durable."""
    config = tmp_path / "cluster.toml"
    config.write_text(generate_config(3, tls=True))
    cfg = load_config(config)
    tls = tmp_path / "tls"
    crash_creating(config, at_fsync)
    visible = sorted(p.name for p in tls.iterdir() if not p.name.startswith("."))
    if at_fsync < 3:
        assert visible == []  # only hidden temporaries
    else:
        assert visible == ["ca.key"]
        with pytest.raises(SecurityError, match=r"ca\.key exists but .*ca\.crt does not"):
            ensure_tls_files(cfg)
        assert sorted(p.name for p in tls.iterdir() if not p.name.startswith(".")) == visible
        (tls / "ca.key").unlink()  # what the message says to do: no certificate was issued
    written = ensure_tls_files(cfg)
    assert {p.name for p in written} >= {"ca.crt", "ca.key", "n1.crt", "n1.key"}
    for node in cfg.nodes:
        assert node_tls(cfg, node) is not None


def test_a_crash_between_a_node_key_and_its_certificate_is_named(tmp_path: Path) -> None:
    """The CA takes fsyncs 1-4; n1's pair 5-8: dying at 7 leaves n1.key alone."""
    config = tmp_path / "cluster.toml"
    config.write_text(generate_config(3, tls=True))
    crash_creating(config, 7)
    with pytest.raises(SecurityError, match=r"n1\.key exists but .*n1\.crt does not"):
        ensure_tls_files(load_config(config))


def test_a_pair_lands_whole_or_not_at_all(tmp_path: Path) -> None:
    pair = CertificateAuthority.create("x").issue_client("c")
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_text("someone else's\n")
    with pytest.raises(FileExistsError, match=r"c\.crt exists"):
        write_pair(cert, key, pair)
    assert not key.exists() and cert.read_text() == "someone else's\n"
    cert.unlink()
    write_pair(cert, key, pair)
    assert cert.read_bytes() == pair.cert_pem and key.read_bytes() == pair.key_pem
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.crt", "c.key"]  # no temporaries
