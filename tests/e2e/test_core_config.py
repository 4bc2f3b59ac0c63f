"""The command line end to end: ``check``, ``run`` and ``version`` as a user runs them.

A good configuration is summarised (listeners, routes in match order, pools); a bad one is
refused with every problem named by file, key and reason, by ``check`` and by ``run`` alike,
and ``run`` binds nothing before it has a valid configuration.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    REPO,
    Origin,
    Proxy,
    curl_http,
    free_port,
    make_cert,
    run_cli,
    toml_path,
)

from revproxy import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def good_config(tmp_path: Path, http: int, https: int) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    cert, key = make_cert(tmp_path, "a", ["a.test"])
    (conf / "10-listeners.toml").write_text(f"""
[[listener]]
name = "http"
bind = ["127.0.0.1:{http}"]

[[listener]]
name = "https"
bind = ["127.0.0.1:{https}"]
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
""")
    (conf / "20-sites.toml").write_text("""
[[route]]
path = "/"
redirect = "https://a.test/"

[[route]]
host = "*.a.test"
respond = { status = 200, body = "wild" }

[[route]]
host = "a.test"
pool = "web"

[[route]]
host = "a.test"
path = "/api"
pool = "api"
listeners = ["https"]

[pool.web]
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
balance = "leastconn"

[pool.api]
servers = ["127.0.0.1:9003", { address = "127.0.0.1:9004", backup = true }]
""")
    return conf


def bad_config(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    cert, _ = make_cert(tmp_path, "a", ["a.test"])
    _, other_key = make_cert(tmp_path, "b", ["b.test"])
    (conf / "10-listeners.toml").write_text(f"""
[[listener]]
name = "https"
bind = ["127.0.0.1:{free_port()}"]
colour = "blue"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(other_key)} }}] }}
""")
    (conf / "20-sites.toml").write_text("""
[[route]]
host = "a.test"
pool = "missing"

[pool.web]
servers = ["127.0.0.1:9001"]
balance = "fastest"
""")
    return conf


def test_version() -> None:
    res = run_cli("version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"revproxy {__version__}"


def test_check_prints_a_summary(tmp_path: Path) -> None:
    http, https = free_port(), free_port()
    conf = good_config(tmp_path, http, https)
    res = run_cli("check", "-c", str(conf))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "configuration OK" in out
    assert "listeners (2)" in out
    assert f"http: http on 127.0.0.1:{http}" in out
    assert f"127.0.0.1:{https}" in out and "tls (" in out
    # Routes in match order: exact host (longer path first), wildcard, any host.
    routes = [line.strip() for line in out.splitlines() if "] in " in line and "->" in line]
    assert [r.split("[")[0].strip() for r in routes] == [
        "1. a.test /api -> pool api (listeners: https)",
        "2. a.test / -> pool web",
        "3. *.a.test / -> respond 200",
        "4. (any host) / -> redirect 308 https://a.test/",
    ]
    assert "route[3] in" in routes[0] and "20-sites.toml" in routes[0]
    assert "pools (2)" in out
    assert "web: leastconn" in out and "api: roundrobin" in out
    assert "127.0.0.1:9002: weight 3" in out
    assert "127.0.0.1:9004: weight 1, backup" in out


def test_check_reports_every_problem(tmp_path: Path) -> None:
    conf = bad_config(tmp_path)
    res = run_cli("check", "-c", str(conf))
    assert res.returncode != 0
    assert "configuration OK" not in res.stdout
    err = res.stderr
    problems = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    expected = [
        ("10-listeners.toml", "listener[0].colour", "unknown key"),
        ("10-listeners.toml", "listener[0].tls.certs[0]", "does not match"),
        ("20-sites.toml", "route[0].pool", 'no pool named "missing"'),
        ("20-sites.toml", "pool.web.balance", '"fastest"'),
    ]
    for file, key, reason in expected:
        assert any(file in p and f"{key}:" in p and reason in p for p in problems), (
            f"{file} {key} {reason} not reported in:\n{err}"
        )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({}, "no *.toml files"),
        ({"10-x.toml": '[[listener]]\nname = "x"\nbind = [":1"\n'}, "TOML syntax error"),
    ],
)
def test_check_refuses_unusable_directories(
    tmp_path: Path, files: dict[str, str], reason: str
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for name, text in files.items():
        (conf / name).write_text(text)
    res = run_cli("check", "-c", str(conf))
    assert res.returncode != 0
    assert reason in res.stderr
    assert "Traceback" not in res.stderr


def test_run_with_a_bad_config_exits_without_binding(tmp_path: Path) -> None:
    port = free_port()
    conf = bad_config(tmp_path)
    (conf / "30-more.toml").write_text(f"""
[[listener]]
name = "http"
bind = ["127.0.0.1:{port}"]
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "revproxy", "run", "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        text=True,
    )
    accepted = False
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    accepted = True
            except OSError:
                time.sleep(0.02)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode not in (None, 0)
    assert not accepted, "revproxy run accepted a connection with a bad configuration"
    assert "listener[0].colour" in err and 'no pool named "missing"' in err
    assert "Traceback" not in err
    assert "bound" not in err


def test_run_with_a_port_in_use_exits_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        conf = tmp_path / "conf"
        conf.mkdir()
        (conf / "10.toml").write_text(f"""
[[listener]]
name = "http"
bind = ["127.0.0.1:{port}"]

[[route]]
respond = {{ status = 200 }}
""")
        res = run_cli("run", "-c", str(conf), timeout=30)
    assert res.returncode != 0
    assert f"127.0.0.1:{port}" in res.stderr
    assert "http" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    http, https = free_port(), free_port()
    conf = good_config(tmp_path, http, https)
    with Origin("web") as origin:
        (conf / "20-sites.toml").write_text(
            (conf / "20-sites.toml")
            .read_text()
            .replace(
                '"127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }',
                f'"{origin.address}"',
            )
        )
        proxy = Proxy(tmp_path, {}, ports=[http, https])
        with proxy:
            r = curl_http(f"http://a.test:{http}/x", "--resolve", f"a.test:{http}:{LOOPBACK}")
            assert r.status == 200
            assert r.body == b"web GET /x\n"
        assert proxy.proc is not None
        assert proxy.proc.returncode == 0
        assert "Traceback" not in proxy.stderr()
