"""``revproxy passwd``: users files written whole, other lines kept, kinds not mixed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bcrypt

from revproxy.config.users import parse_users_file
from revproxy.proto.httpauth import ha1

REPO = Path(__file__).resolve().parents[2]


def passwd(*args: str, password: str = "pw") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "revproxy", "passwd", *args],
        input=password + "\n", capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_add_then_update_keeps_the_other_users(tmp_path: Path) -> None:
    f = tmp_path / "staff.htpasswd"
    assert passwd(str(f), "alice", "--cost", "4", password="one").returncode == 0
    assert passwd(str(f), "bob", "--cost", "4", password="two").returncode == 0
    res = passwd(str(f), "alice", "--cost", "4", password="three")
    assert res.returncode == 0 and "updated alice" in res.stderr
    kind, entries, problems = parse_users_file(f.read_text())
    assert kind == "htpasswd" and problems == [] and [e.user for e in entries] == ["bob", "alice"]
    alice = entries[1].secret
    assert alice.startswith("$2y$04$")
    assert bcrypt.checkpw(b"three", alice.replace("$2y$", "$2b$").encode())
    assert oct(f.stat().st_mode & 0o777) == "0o640"


def test_digest_lines(tmp_path: Path) -> None:
    f = tmp_path / "staff.htdigest"
    assert passwd(str(f), "dora", "--digest", "--realm", "Staff", password="pw").returncode == 0
    assert f.read_text() == f"dora:Staff:{ha1('dora', 'Staff', 'pw')}\n"


def test_refusals(tmp_path: Path) -> None:
    f = tmp_path / "staff.htdigest"
    passwd(str(f), "dora", "--digest", "--realm", "Staff")
    mixed = passwd(str(f), "eve")
    assert mixed.returncode == 2 and "htdigest file (use --digest)" in mixed.stderr
    assert passwd(str(tmp_path / "x"), "a:b").returncode == 2
    assert "needs --realm" in passwd(str(tmp_path / "y"), "u", "--digest").stderr
