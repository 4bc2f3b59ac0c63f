"""Access log, end to end: a ``combined`` line equal to nginx's for the same request, lines
received by a real rsyslog (UDP and a Unix socket), the file reopened on SIGUSR1 and
``revproxy ctl reopen-logs`` after a rename (logrotate), and bad targets refused by
``revproxy check`` and ``revproxy run`` with exit 2 and the key path, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, Reply, Seen, free_port, run_cli, toml_path, wait_until
from l4_peers import nginx

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

UA = 'curl/7.88.1 "quoted" \\ back'
REFERER = "http://example.com/from?a=1"


def fixed_origin() -> Origin:
    def handle(req: Seen) -> Reply:
        if req.target.startswith("/missing"):
            return Reply(status=404, body=b"not here\n")
        return Reply(body=b"hello from the origin\n")

    return Origin("origin", handle).start()


def proxy_config(port: int, origin: Origin, log: str, fmt: str, extra: str = "") -> str:
    return f"""
[global]
access_log = {log}
access_log_format = {json.dumps(fmt)}
watch = false
{extra}

[[listener]]
name = "web"
bind = "{LOOPBACK}:{port}"

[[route]]
pool = "app"

[pool.app]
servers = ["{origin.address}"]
"""


def curl(port: int, path: str, *args: str) -> None:
    subprocess.run(
        ["curl", "-s", "-o", "/dev/null", f"http://{LOOPBACK}:{port}{path}", *args],
        check=True,
        timeout=20,
    )


TIME = re.compile(r"\[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\]")


def test_combined_line_is_nginx_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same requests through nginx (``access_log ... combined``) and revproxy
    (``access_log_format = "combined"``, ``log_time = "local"`` under TZ=Asia/Tokyo): the lines
    are equal byte for byte but for the second the clock read."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    requests = [
        ("/", ["-A", UA, "-e", REFERER]),
        ("/a%20b?q=1&x=%22", ["-A", "ua\x01ctl"]),
        ("/missing", ["-A", "x", "--http1.0"]),
        ("/post", ["-A", "poster", "-d", "body=1"]),
    ]
    with fixed_origin() as origin:
        server = f"location / {{ proxy_pass http://{origin.address}; }}"
        http = f"access_log {tmp_path}/nginx/logs/combined.log combined;"
        with nginx(tmp_path, server, http) as nport:
            for path, args in requests:
                curl(nport, path, *args)
            nginx_log = tmp_path / "nginx" / "logs" / "combined.log"
            assert wait_until(lambda: len(nginx_log.read_text().splitlines()) == 4, 10)
        port = free_port()
        log = tmp_path / "access.log"
        cfg = proxy_config(port, origin, toml_path(log), "combined", 'log_time = "local"')
        with Proxy(tmp_path / "p", cfg, ports=[port]):
            for path, args in requests:
                curl(port, path, *args)
            assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 4, 10)
    ours = log.read_bytes().splitlines()
    theirs = nginx_log.read_bytes().splitlines()
    for a, b in zip(ours, theirs, strict=True):
        ta, tb = TIME.search(a.decode()), TIME.search(b.decode())
        assert ta and tb, (a, b)
        assert ta[1].endswith("+0900") and tb[1].endswith("+0900")
        assert TIME.sub("[T]", a.decode()) == TIME.sub("[T]", b.decode())
    assert b'"GET /a%20b?q=1&x=%22 HTTP/1.1"' in ours[1] and b'"ua\\x01ctl"' in ours[1]
    assert b'"curl/7.88.1 \\x22quoted\\x22 \\x5C back"' in ours[0]


# --- rsyslog ---------------------------------------------------------------------------------


# What the test reads of each message rsyslog parsed: facility, severity, RFC 5424 header.
RSYSLOG_FIELDS = (
    "%syslogfacility-text% %syslogseverity-text% %app-name% %procid% %msgid% "
    "%timereported:::date-rfc3339%|%msg%\\n"
)


@contextmanager
def rsyslog(directory: Path) -> Iterator[tuple[int, Path, Path]]:
    """rsyslogd in the foreground with its own configuration: imudp on a loopback port and
    imuxsock on a socket of its own (never /dev/log). Yields (port, socket, output file)."""
    exe = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.path.exists(exe):
        raise AssertionError("rsyslogd not found (apt-get install rsyslog)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sock = directory / "log.sock"
    out = directory / "received.log"
    conf = directory / "rsyslog.conf"
    conf.write_text(
        f"""global(workDirectory="{directory}")
module(load="imudp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="{LOOPBACK}" port="{port}")
input(type="imuxsock" Socket="{sock}" UseSpecialParser="off" ParseHostname="on")
template(name="fields" type="string"
  string="{RSYSLOG_FIELDS}")
*.* action(type="omfile" file="{out}" template="fields")
"""
    )
    with open(directory / "rsyslogd.stderr", "wb") as err:
        proc = subprocess.Popen(
            [exe, "-n", "-f", str(conf), "-i", str(directory / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        if not wait_until(lambda: sock.exists() or proc.poll() is not None, 10):
            raise AssertionError("rsyslogd did not start")
        if proc.poll() is not None:
            raise AssertionError("rsyslogd exited:\n" + (directory / "rsyslogd.stderr").read_text())
        yield port, sock, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_lines_reach_rsyslog(tmp_path: Path, transport: str) -> None:
    template = "{client} {request} {status} {user_agent} id={request_id}"
    with rsyslog(tmp_path / "rsyslog") as (sport, sock, out), fixed_origin() as origin:
        target = f"syslog:udp://{LOOPBACK}:{sport}" if transport == "udp" else f"syslog:unix:{sock}"
        port = free_port()
        cfg = proxy_config(port, origin, json.dumps(target), template, 'facility = "local3"')
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            for i in range(3):
                curl(port, f"/n{i}", "-A", f"agent {i}")

            def received() -> list[str]:
                return (
                    [x for x in out.read_text().splitlines() if "revproxy" in x]
                    if out.exists()
                    else []
                )

            assert wait_until(lambda: len(received()) == 3, 10), (
                out.read_text() if out.exists() else ""
            )
            assert proxy.alive
    lines = received()
    for i, line in enumerate(lines):
        head, msg = line.split("|", 1)
        facility, severity, app, procid, msgid, stamp = head.split()
        assert (facility, severity, app, msgid) == ("local3", "info", "revproxy", "access")
        assert procid.isdigit()
        assert stamp.endswith(("Z", "+00:00")), stamp  # log_time = "utc"
        assert re.fullmatch(rf"127\.0\.0\.1 GET /n{i} HTTP/1\.1 200 agent {i} id=\S+", msg), msg


# --- reopen ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigusr1", "ctl"])
def test_file_reopened_after_rename(tmp_path: Path, how: str) -> None:
    """logrotate renames the file, then asks for a reopen: lines go to the new file, none is
    lost, with two workers."""
    log = tmp_path / "logs" / "access.log"
    log.parent.mkdir()
    with fixed_origin() as origin:
        port = free_port()
        admin = f"\n[admin]\nsocket = {toml_path(tmp_path / 'admin.sock')}\n"
        cfg = proxy_config(port, origin, toml_path(log), "text", "workers = 2") + admin
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            for i in range(6):
                curl(port, f"/before{i}")
            assert wait_until(lambda: log.read_text().count("/before") == 6, 10)
            rotated = log.with_name("access.log.1")
            log.rename(rotated)
            if how == "sigusr1":
                os.kill(proxy.pid, signal.SIGUSR1)
            else:
                res = run_cli("ctl", "-c", str(proxy.conf), "reopen-logs")
                assert res.returncode == 0, res.stderr
                assert "access log reopened" in res.stdout
            assert wait_until(log.exists, 10)
            # Workers reopen on the master's signal: wait until each took it.
            for i in range(12):
                curl(port, f"/after{i}")
            assert wait_until(lambda: log.read_text().count("/after") == 12, 10), (
                log.read_text(),
                rotated.read_text(),
            )
            assert proxy.alive
    assert rotated.read_text().count("/before") == 6
    assert "/after" not in rotated.read_text()
    first = log.read_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1 ", first), first


# --- bad targets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"/nonexistent/dir/access.log"', "/nonexistent/dir does not exist"),
        ('"syslog:tcp://127.0.0.1:514"', 'expected "syslog", "syslog:udp://HOST:PORT"'),
        ('"syslog:udp://127.0.0.1"', "with a port 1-65535"),
        ('"syslog:unix:/nonexistent/log.sock"', "no syslog socket at /nonexistent/log.sock"),
    ],
)
def test_bad_target_is_exit_2_with_key_path(tmp_path: Path, value: str, reason: str) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    port = free_port()
    (conf / "10-log.toml").write_text(
        f'[global]\naccess_log = {value}\n[[listener]]\nname = "web"\n'
        f'bind = "{LOOPBACK}:{port}"\n[[route]]\nrespond = {{ status = 200 }}\n'
    )
    for command in ("check", "run"):
        res = run_cli(command, "-c", str(conf), timeout=30)
        assert res.returncode == 2, (command, res.stdout, res.stderr)
        text = res.stdout + res.stderr
        assert "10-log.toml: global.access_log:" in text and reason in text, text
        assert "Traceback" not in text
