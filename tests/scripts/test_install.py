"""scripts/install inside a throw-away root (DESTDIR), twice, and the systemd unit it installs
checked by systemd-analyze. Nothing outside the temporary root may change."""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "revproxy.service"


def _digest(*paths: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def _env(destdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DESTDIR"] = str(destdir)
    env["PYTHON"] = sys.executable
    # Offline: build with the tools this interpreter has, dependencies from its site-packages.
    env["PIP_ARGS"] = "--no-index --no-build-isolation --no-deps"
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return env


def install(destdir: Path) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(REPO / "scripts" / "install")],
        env=_env(destdir),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("systemctl") is None:
        pytest.fail("scripts/install needs systemctl (apt-get install systemd)")
    host_files = [Path("/etc/passwd"), Path("/etc/group"), Path("/etc/shadow")]
    host_paths = [Path("/etc/systemd/system/revproxy.service"), Path("/opt/revproxy")]
    before = _digest(*host_files), [p.exists() for p in host_paths]
    dest = tmp_path_factory.mktemp("root")
    first = install(dest)
    assert "added /etc/revproxy/10-global.toml" in first.stdout
    # The machine itself is untouched: its users, its units, its /opt.
    assert (_digest(*host_files), [p.exists() for p in host_paths]) == before
    return dest


def test_the_program_runs_from_its_virtualenv(root: Path) -> None:
    revproxy = root / "opt/revproxy/bin/revproxy"
    res = subprocess.run(
        [str(revproxy), "version"], env=_env(root), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("revproxy ")
    assert os.readlink(root / "usr/local/bin/revproxy") == "/opt/revproxy/bin/revproxy"
    assert (root / "opt/revproxy/share/doc/revproxy/operations.md").is_file()


def test_the_user_directories_and_unit(root: Path) -> None:
    passwd = (root / "etc/passwd").read_text()
    assert any(line.startswith("revproxy:") and "/usr/sbin/nologin" in line
               for line in passwd.splitlines())  # fmt: skip
    for d in ("var/lib/revproxy/acme", "var/log/revproxy", "etc/revproxy"):
        assert (root / d).is_dir(), d
    unit = root / "etc/systemd/system/revproxy.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/revproxy.service"
    assert wants.is_symlink()


def test_example_config_is_copied_and_checks(root: Path) -> None:
    etc = root / "etc/revproxy"
    for f in (REPO / "conf").glob("*.toml"):
        assert (etc / f.name).read_bytes() == f.read_bytes()
        assert (etc / f.name).stat().st_mode & 0o777 == 0o640
    admin = (etc / "90-admin.toml").read_text()
    assert 'socket = "/run/revproxy/admin.sock"' in admin
    res = subprocess.run(
        [str(root / "opt/revproxy/bin/revproxy"), "check", "-c", str(etc)],
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_running_it_again_keeps_edits(root: Path) -> None:
    edited = root / "etc/revproxy/20-sites.toml"
    edited.write_text(edited.read_text() + "\n# edited by the operator\n")
    (root / "etc/revproxy/90-admin.toml").unlink()
    (root / "etc/revproxy/05-admin.toml").write_text('[admin]\nsocket = "/run/x.sock"\n')
    again = install(root)
    assert "keeping /etc/revproxy/20-sites.toml" in again.stdout
    assert edited.read_text().endswith("# edited by the operator\n")
    assert not (root / "etc/revproxy/90-admin.toml").exists()  # an [admin] table exists
    assert (root / "opt/revproxy/bin/revproxy").exists()
    users = (root / "etc/passwd").read_text().splitlines()
    assert sum(line.startswith("revproxy:") for line in users) == 1


def test_the_unit_passes_systemd_analyze_verify(root: Path, tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point a copy at the installed one.
    binary = root / "opt/revproxy/bin/revproxy"
    rendered = tmp_path / "revproxy.service"
    rendered.write_text(UNIT.read_text().replace("/opt/revproxy/bin/revproxy", str(binary)))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "revproxy.service" not in res.stderr, res.stderr
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "User=revproxy",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RuntimeDirectory=revproxy",
        "ExecReload=/opt/revproxy/bin/revproxy reload -c /etc/revproxy --pid $MAINPID",
    ):
        assert line in text.splitlines(), line
    rw = next(x for x in text.splitlines() if x.startswith("ReadWritePaths="))
    for path in ("/var/lib/revproxy/acme", "/var/log/revproxy", "/run/revproxy"):
        assert path in rw
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Overall exposure level" in security.stdout + security.stderr


def test_logrotate_snippet_reopens_the_log(root: Path, tmp_path: Path) -> None:
    """/etc/logrotate.d/revproxy rotates /var/log/revproxy/*.log and asks the proxy to reopen
    (SIGUSR1 through systemd, else ``revproxy ctl reopen-logs``); logrotate accepts it."""
    snippet = root / "etc/logrotate.d/revproxy"
    text = snippet.read_text()
    assert text.startswith("/var/log/revproxy/*.log {")
    assert "--signal=USR1 revproxy.service" in text and "reopen-logs" in text
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.path.exists(logrotate):
        raise AssertionError("logrotate not found (apt-get install logrotate)")
    # The revproxy user exists only under DESTDIR: logrotate checks the snippet as root's.
    probe = tmp_path / "revproxy.logrotate"
    probe.write_text(text.replace("revproxy revproxy", "root root"))
    res = subprocess.run(
        [logrotate, "--debug", "--state", str(tmp_path / "state"), str(probe)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert "error" not in res.stderr.lower(), res.stderr
