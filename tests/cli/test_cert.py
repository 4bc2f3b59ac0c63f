"""certbot as a subprocess: the command lines, certbot's errors, and ``revproxy cert …``.

Argument building and error extraction are pure and table-tested (the certbot outputs below
are copied from real certbot 2.1 runs against Pebble). The commands run with a stand-in
certbot (a shell script that prints what certbot prints and records its arguments), and
``cert reload`` / the deploy hook signal a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest

from revproxy.certs.certbot import (
    DEPLOY_HOOK_ENV,
    DEPLOY_HOOK_SCRIPT,
    CertbotNotFound,
    certbot_error,
    check_domains,
    deploy_hook_command,
    error_hints,
    find_certbot,
    issue_args,
    renew_args,
    run_certbot,
)
from revproxy.certs.files import generate_self_signed
from revproxy.cli import cert as cert_cli
from revproxy.cli.cert import (
    CertRow,
    format_rows,
    notify_running,
    probe_challenge_route,
    served_certificates,
)
from revproxy.cli.main import main
from revproxy.config.model import Acme, Admin, Bind, Config, Global, Listener, ListenerTLS
from revproxy.runtime.supervisor import Instance

REPO = Path(__file__).resolve().parents[2]
HOOK = "env REVPROXY_CONF=/etc/revproxy /hook"
PATHS = [
    "--config-dir", "/le/config", "--work-dir", "/le/work", "--logs-dir", "/le/logs",
]  # fmt: skip
ACME = Acme(
    webroot=Path("/srv/acme"),
    config_dir=Path("/le/config"),
    work_dir=Path("/le/work"),
    logs_dir=Path("/le/logs"),
)

# --- real certbot 2.1 output ------------------------------------------------------------------

OUT_404 = """\
Saving debug log to /tmp/cbconf/logs/letsencrypt.log
Requesting a certificate for b.example

Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported these problems:
  Domain: b.example
  Type:   unauthorized
  Detail: Non-200 status code from HTTP: http://b.example:18080/.well-known/acme-challenge/YuzTluIkpTPL6Oc9-p3yuvBsNwur1WnUePBjnOsCFrs returned 404

Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot. Ensure that the listed domains serve their content from the provided --webroot-path/-w and that files created there can be downloaded from the internet.

Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile /tmp/cbconf/logs/letsencrypt.log or re-run Certbot with -v for more details.
"""  # noqa: E501
OUT_UNREACHABLE = """\
Saving debug log to /tmp/cbconf/logs/letsencrypt.log
An unexpected error occurred:
ValueError: Requesting 127.0.0.1/dir: Connection refused
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile /tmp/cbconf/logs/letsencrypt.log or re-run Certbot with -v for more details.
"""  # noqa: E501
OUT_USAGE = """\
usage: 
  certbot [SUBCOMMAND] [options] [-d DOMAIN] [-d DOMAIN] ...

Certbot can obtain and install HTTPS/TLS/SSL certificates.  By default,
it will attempt to use a webserver both for obtaining and installing the
certificate. 
certbot: error: unrecognized arguments: --bogus
"""  # noqa: W291
OUT_NO_WEBROOT = """\
Saving debug log to /tmp/cbx/l/letsencrypt.log
/tmp/cbx/www does not exist or is not a directory
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile /tmp/certbot-log-s4my1uit/log or re-run Certbot with -v for more details.
"""  # noqa: E501


# --- arguments ------------------------------------------------------------------------------


def test_issue_args_webroot() -> None:
    args = issue_args(ACME, ["Example.com.", "www.example.com"], deploy_hook=HOOK)
    assert args == [
        "certbot", "certonly", "--non-interactive", "--agree-tos", "--expand",
        "--webroot", "--webroot-path", "/srv/acme",
        "-d", "example.com", "-d", "www.example.com",
        "--register-unsafely-without-email",
        *PATHS,
        "--deploy-hook", HOOK,
    ]  # fmt: skip


def test_issue_args_forward_email_and_servers() -> None:
    acme = Acme(
        webroot=None,
        forward="127.0.0.1:8081",
        email="ops@example.com",
        certbot="/usr/bin/certbot",
        server="https://acme.example/dir",
        config_dir=Path("/le/config"),
        work_dir=Path("/le/work"),
        logs_dir=Path("/le/logs"),
    )
    args = issue_args(acme, ["example.com"], deploy_hook=None)
    assert args[:5] == [
        "/usr/bin/certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--expand",
    ]
    assert args[5:10] == [
        "--standalone",
        "--http-01-port",
        "8081",
        "--http-01-address",
        "127.0.0.1",
    ]
    assert "--webroot" not in args and "--deploy-hook" not in args
    assert args[args.index("--email") + 1] == "ops@example.com" and "--no-eff-email" in args
    assert args[args.index("--server") + 1] == "https://acme.example/dir"  # [acme] server
    cli_server = issue_args(acme, ["example.com"], deploy_hook=None, server="https://x/dir")
    assert cli_server[cli_server.index("--server") + 1] == "https://x/dir"  # --server wins
    assert cli_server.count("--server") == 1
    staging = issue_args(acme, ["example.com"], deploy_hook=None, staging=True)
    assert "--staging" in staging and "--server" not in staging
    with pytest.raises(ValueError, match="--staging and --server"):
        issue_args(acme, ["example.com"], deploy_hook=None, staging=True, server="https://x/")
    with pytest.raises(ValueError, match="neither webroot nor forward"):
        issue_args(Acme(webroot=None), ["example.com"], deploy_hook=None)


def test_renew_args() -> None:
    assert renew_args(ACME, deploy_hook=HOOK) == [
        "certbot", "renew", "--non-interactive", "--no-random-sleep-on-renew", *PATHS,
        "--deploy-hook", HOOK,
    ]  # fmt: skip
    forced = renew_args(ACME, deploy_hook=None, force=True)
    assert "--force-renewal" in forced and "--no-random-sleep-on-renew" in forced
    assert "--server" not in forced  # each certificate renews with the server it came from


@pytest.mark.parametrize(
    ("domains", "complaint"),
    [
        (["example.com", "www.example.com", "xn--bcher-kva.example", "bücher.example"], None),
        (["a-b.example.com."], None),
        ([], "at least one domain"),
        (["https://example.com/"], "not a URL"),
        (["*.example.com"], "DNS-01"),
        (["192.0.2.1"], "not IP addresses"),
        (["[::1]"], "not IP addresses"),
        (["localhost"], "fully qualified"),
        (["-bad.example"], "fully qualified"),
        (["exa mple.com"], "fully qualified"),
        (["a..example"], "fully qualified"),
        (["x" * 64 + ".example"], "fully qualified"),
    ],
)
def test_check_domains(domains: list[str], complaint: str | None) -> None:
    problems = check_domains(domains)
    if complaint is None:
        assert problems == []
    else:
        assert len(problems) == 1 and complaint in problems[0]


def test_deploy_hook_command(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    cmd = deploy_hook_command(conf, env={}, python="/venv/bin/python")
    assert cmd == (
        f"env REVPROXY_CONF={conf.resolve()} REVPROXY_PYTHON=/venv/bin/python {DEPLOY_HOOK_SCRIPT}"
    )
    assert DEPLOY_HOOK_SCRIPT == REPO / "scripts" / "certbot-deploy-hook"
    assert os.access(DEPLOY_HOOK_SCRIPT, os.X_OK)
    # installed without the scripts/ folder: the same thing through the module
    alone = deploy_hook_command(conf, env={}, python="/py", script=tmp_path / "absent")
    assert alone.endswith("/py -m revproxy cert reload") and alone.startswith("env ")
    assert deploy_hook_command(conf, env={DEPLOY_HOOK_ENV: "my-hook"}) == "my-hook"


def test_find_certbot(tmp_path: Path) -> None:
    with pytest.raises(CertbotNotFound, match='"/nonexistent/certbot" does not exist'):
        find_certbot("/nonexistent/certbot")
    with pytest.raises(CertbotNotFound, match="is not on PATH"):
        find_certbot("certbot-that-is-not-installed")
    not_exec = tmp_path / "certbot"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(CertbotNotFound):
        find_certbot(str(not_exec))


# --- certbot's errors -----------------------------------------------------------------------


def test_error_of_a_failed_challenge() -> None:
    message = certbot_error(OUT_404.splitlines())
    assert message.startswith("Certbot failed to authenticate some domains")
    assert "returned 404" in message and "Type:   unauthorized" in message
    assert "Saving debug log" not in message and "Ask for help" not in message
    assert any("[acme] webroot" in h for h in error_hints(message))


def test_error_of_an_unreachable_server() -> None:
    message = certbot_error(OUT_UNREACHABLE.splitlines())
    assert message == (
        "An unexpected error occurred:\nValueError: Requesting 127.0.0.1/dir: Connection refused"
    )
    assert any("[acme] server" in h for h in error_hints(message))


def test_error_of_usage_and_unknown_shapes() -> None:
    assert certbot_error(OUT_USAGE.splitlines()) == (
        "certbot: error: unrecognized arguments: --bogus"
    )
    assert certbot_error(OUT_NO_WEBROOT.splitlines()) == (
        "/tmp/cbx/www does not exist or is not a directory"
    )
    assert certbot_error([]) == "certbot printed no error message"


# --- a stand-in certbot ---------------------------------------------------------------------


def fake_certbot(tmp_path: Path, output: str, code: int = 0) -> tuple[Path, Path]:
    """A certbot that records its arguments (one per line), prints `output`, exits `code`."""
    record = tmp_path / "certbot-args"
    out = tmp_path / "certbot-output"
    out.write_text(output)
    script = tmp_path / "certbot"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {record}\n'
        "echo 'Saving debug log to /le/logs/letsencrypt.log' >&2\n"
        f"cat {out}\n"
        f"exit {code}\n"
    )
    script.chmod(0o755)
    return script, record


def test_run_certbot_streams_stdout_and_stderr(tmp_path: Path) -> None:
    script, record = fake_certbot(tmp_path, "line one\nline two\n", code=3)
    sink = StringIO()
    result = run_certbot([str(script), "renew", "--x"], out=sink)
    assert result.returncode == 3 and not result.ok
    assert result.lines == (
        "Saving debug log to /le/logs/letsencrypt.log",
        "line one",
        "line two",
    )
    assert sink.getvalue() == "\n".join(result.lines) + "\n"
    assert record.read_text().split() == ["renew", "--x"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(
    tmp_path: Path, certbot: str, *, http_port: int | None = None, **acme: object
) -> Config:
    port = http_port or _free_port()  # nothing listens there unless a test starts revproxy
    return Config(
        global_=Global(access_log="off"),
        listeners=(
            Listener(
                name="http",
                bind=(Bind(host="127.0.0.1", port=port),),
                redirect_https=True,
                redirect_port=8443,
                acme=True,
            ),
            Listener(
                name="https",
                bind=(Bind(host="", port=443),),
                tls=ListenerTLS(cert_dir=tmp_path / "le" / "live"),
            ),
        ),
        acme=Acme(
            **{
                "webroot": tmp_path / "webroot",
                "certbot": certbot,
                "config_dir": tmp_path / "le",
                "work_dir": tmp_path / "work",
                "logs_dir": tmp_path / "logs",
                **acme,
            }  # type: ignore[arg-type]
        ),
    )


@pytest.fixture
def use_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Config]]:
    """`revproxy cert …` reads this config instead of a conf directory."""
    holder: list[Config] = []
    monkeypatch.setattr(cert_cli, "load", lambda _conf: holder[0])
    yield holder


def test_cert_issue_success(
    tmp_path: Path, use_config: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    live = tmp_path / "le" / "live" / "example.com"
    script, record = fake_certbot(
        tmp_path,
        f"Successfully received certificate.\nCertificate is saved at: {live}/fullchain.pem\n",
    )
    use_config.append(_config(tmp_path, str(script), email="ops@example.com"))
    code = main(["cert", "issue", "-c", str(tmp_path), "example.com", "www.example.com"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Successfully received certificate." in out  # certbot's output, streamed
    assert f"{live} is served by listener https" in err
    args = record.read_text().splitlines()
    assert args[:5] == ["certonly", "--non-interactive", "--agree-tos", "--expand", "--webroot"]
    assert args[args.index("--deploy-hook") + 1].startswith(f"env REVPROXY_CONF={tmp_path}")
    assert (tmp_path / "webroot" / ".well-known" / "acme-challenge").is_dir()


def test_cert_issue_failure_prints_certbots_error(
    tmp_path: Path, use_config: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    script, _ = fake_certbot(tmp_path, OUT_404, code=1)
    use_config.append(_config(tmp_path, str(script)))
    code = main(["cert", "issue", "-c", str(tmp_path), "b.example"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "certificate issuance failed (certbot exited with 1)" in err
    assert "returned 404" in err and "hint:" in err
    assert "Traceback" not in err


def test_cert_issue_without_certbot(
    tmp_path: Path, use_config: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    use_config.append(_config(tmp_path, "/nonexistent/certbot"))
    assert main(["cert", "issue", "-c", str(tmp_path), "example.com"]) == 1
    _, err = capsys.readouterr()
    assert 'certbot not found: "/nonexistent/certbot"' in err and "apt-get install certbot" in err
    assert main(["cert", "renew", "-c", str(tmp_path)]) == 1
    assert "certbot not found" in capsys.readouterr().err


def test_cert_issue_refuses_bad_names(
    tmp_path: Path, use_config: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    script, record = fake_certbot(tmp_path, "")
    use_config.append(_config(tmp_path, str(script)))
    assert main(["cert", "issue", "-c", str(tmp_path), "*.example.com"]) == 2
    assert "DNS-01" in capsys.readouterr().err
    assert not record.exists()  # certbot never ran
    with pytest.raises(SystemExit):  # argparse: --staging and --server exclude each other
        main(["cert", "issue", "--staging", "--server", "https://x/", "example.com"])


def test_cert_renew(
    tmp_path: Path, use_config: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    script, record = fake_certbot(tmp_path, "Congratulations, all renewals succeeded:\n")
    use_config.append(_config(tmp_path, str(script)))
    assert main(["cert", "renew", "--force", "-c", str(tmp_path)]) == 0
    args = record.read_text().splitlines()
    assert args[:3] == ["renew", "--non-interactive", "--no-random-sleep-on-renew"]
    assert "--force-renewal" in args and "--deploy-hook" in args
    assert "Congratulations" in capsys.readouterr().out

    failing, _ = fake_certbot(tmp_path, OUT_UNREACHABLE, code=1)
    use_config[0] = _config(tmp_path, str(failing))
    assert main(["cert", "renew", "-c", str(tmp_path)]) == 1
    assert "Connection refused" in capsys.readouterr().err


# --- cert list ------------------------------------------------------------------------------


def test_cert_list(
    tmp_path: Path, use_config: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    live = tmp_path / "le" / "live" / "example.com"
    generate_self_signed(["example.com", "www.example.com"], live / "fullchain.pem",
                         live / "privkey.pem", days=30)  # fmt: skip
    broken = tmp_path / "le" / "live" / "broken.example"
    broken.mkdir()
    (broken / "fullchain.pem").write_text("nope\n")
    config = _config(tmp_path, "certbot")
    use_config.append(config)
    assert main(["cert", "list", "-c", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    header, row = out.splitlines()
    assert header.split()[:3] == ["LISTENER", "NAMES", "ISSUER"]
    assert row.split()[:2] == ["https", "example.com,www.example.com"]
    assert "example.com" in row and str(live / "fullchain.pem") in row
    assert " 29 " in row or " 30 " in row  # days left
    assert "not served" in err and "broken.example" in err

    rows, problems = served_certificates(config)
    assert [r.names for r in rows] == [("example.com", "www.example.com")]
    assert len(problems) == 1


def test_format_rows_marks_expired() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    rows = [
        CertRow(listener="l", names=("a.example",), issuer="R3 / Let's Encrypt",
                not_after=now - timedelta(days=1), cert_path=Path("/a.pem")),
        CertRow(listener="l", names=("b.example",), issuer="R3 / Let's Encrypt",
                not_after=now + timedelta(days=12, hours=3), cert_path=Path("/b.pem")),
    ]  # fmt: skip
    lines = format_rows(rows, now)
    assert "expired" in lines[1] and "/a.pem" in lines[1]
    assert "2030-01-13 03:00" in lines[2] and " 12 " in lines[2]


# --- cert reload and the deploy hook --------------------------------------------------------

FAKE_REVPROXY = """
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: marker.write_text("reloaded"))
marker.with_suffix(".ready").write_text("ready")
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not marker.exists():
    time.sleep(0.05)
"""


@pytest.fixture
def fake_revproxy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process named like revproxy that records the SIGHUP it gets."""
    marker = tmp_path / "hup"
    proc = subprocess.Popen([sys.executable, "-c", FAKE_REVPROXY, str(marker), "revproxy"])
    try:
        deadline = time.monotonic() + 20
        while not marker.with_suffix(".ready").exists():
            assert time.monotonic() < deadline, "stand-in revproxy did not start"
            time.sleep(0.05)
        yield proc, marker
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _wait_file(path: Path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_notify_running_sighup(
    tmp_path: Path, fake_revproxy: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, marker = fake_revproxy
    pid_file = tmp_path / "revproxy.pid"
    pid_file.write_text(f"{proc.pid}\n")
    config = Config(global_=Global(pid_file=pid_file))
    outcome = notify_running(config, {"REVPROXY_UNIT": ""})
    assert outcome.done, outcome.tried
    assert f"sent SIGHUP to revproxy (pid {proc.pid}" in outcome.tried[-1]
    assert _wait_file(marker)


def test_notify_running_refuses_other_processes_and_stale_pids(tmp_path: Path) -> None:
    pid_file = tmp_path / "revproxy.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but pytest, not revproxy
    outcome = notify_running(None, {"REVPROXY_PID_FILE": str(pid_file), "REVPROXY_UNIT": ""})
    assert not outcome.done and "not a running revproxy" in outcome.tried[0]

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    pid_file.write_text(f"{dead.pid}\n")
    outcome = notify_running(None, {"REVPROXY_PID_FILE": str(pid_file), "REVPROXY_UNIT": ""})
    assert not outcome.done and "not a running revproxy" in outcome.tried[0]

    outcome = notify_running(Config(), {"REVPROXY_UNIT": ""})
    assert not outcome.done and not outcome.refused
    assert "neither [admin] socket nor [global] pid_file" in outcome.tried[-1]


@contextlib.contextmanager
def admin_socket(path: Path, answer: bytes) -> Iterator[list[bytes]]:
    """A Unix socket answering each command line like revproxy's admin (ok/error, text)."""
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                received.append(data)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        thread.join(timeout=10)
        server.close()


def test_notify_running_admin_socket(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    env = {"REVPROXY_UNIT": ""}
    config = Config(admin=Admin(socket=sock), global_=Global(pid_file=tmp_path / "absent.pid"))
    with admin_socket(sock, b"ok\ncertificates reloaded\n") as received:
        outcome = notify_running(config, env)
    assert received == [b"reload certs\n"]
    assert outcome.done and outcome.tried == (
        f"admin socket {sock}: reload certs: certificates reloaded",
    )
    sock.unlink()
    # a running revproxy that cannot load the pair: no fallback, its reasons are reported
    reasons = b"error\nlistener=https /le/live/x/fullchain.pem: new pair does not load\n"
    with admin_socket(sock, reasons):
        outcome = notify_running(config, env)
    assert not outcome.done and outcome.refused and len(outcome.tried) == 1
    assert "new pair does not load" in outcome.tried[0]
    sock.unlink()
    # a dead socket file: fall back to the pid file
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    outcome = notify_running(config, env)
    assert not outcome.done and not outcome.refused
    assert "Connection refused" in outcome.tried[0] and "no pid file" in outcome.tried[1]


def _hook_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVPROXY")}
    env.update(
        REVPROXY_CONF=str(tmp_path / "no-conf"),  # does not load: the hook uses the env
        REVPROXY_PYTHON=sys.executable,
        REVPROXY_UNIT="",
        RENEWED_LINEAGE="/etc/letsencrypt/live/example.com",
        **extra,
    )
    return env


def test_deploy_hook_script_signals_running_revproxy(
    tmp_path: Path, fake_revproxy: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, marker = fake_revproxy
    pid_file = tmp_path / "revproxy.pid"
    pid_file.write_text(f"{proc.pid}\n")
    done = subprocess.run(
        [str(DEPLOY_HOOK_SCRIPT)],
        env=_hook_env(tmp_path, REVPROXY_PID_FILE=str(pid_file)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "reload its certificates for /etc/letsencrypt/live/example.com" in done.stdout
    assert _wait_file(marker)


def test_deploy_hook_script_fails_when_nothing_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(DEPLOY_HOOK_SCRIPT)],
        env=_hook_env(tmp_path, REVPROXY_PID_FILE=str(tmp_path / "absent.pid")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no running revproxy could be reached" in done.stderr
    assert f"no pid file at {tmp_path / 'absent.pid'}" in done.stderr
    assert "Traceback" not in done.stderr


# --- the local probe before certbot runs ------------------------------------------------------


def test_probe_challenge_route(tmp_path: Path) -> None:
    port = _free_port()
    config = _config(tmp_path, "certbot", http_port=port)
    assert config.acme.webroot is not None
    (config.acme.webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    other = _config(tmp_path, "certbot", http_port=port, webroot=tmp_path / "elsewhere")
    assert other.acme.webroot is not None
    (other.acme.webroot / ".well-known" / "acme-challenge").mkdir(parents=True)

    warnings = probe_challenge_route(config, "example.com")
    assert len(warnings) == 1 and f"nothing answers on 127.0.0.1:{port}" in warnings[0]

    running: dict[str, list[str]] = {}

    async def main() -> None:
        instance = Instance(lambda: config)
        await instance.start()
        try:
            running["same"] = await asyncio.to_thread(probe_challenge_route, config, "a.example")
            running["other"] = await asyncio.to_thread(probe_challenge_route, other, "a.example")
        finally:
            instance.request_stop()
            await instance.shutdown()

    asyncio.run(main())
    assert running["same"] == []
    assert len(running["other"]) == 1
    assert "does not serve this [acme] webroot" in running["other"][0]
    assert "404" in running["other"][0]
    # the probe tokens are gone
    for cfg in (config, other):
        assert cfg.acme.webroot is not None
        assert list((cfg.acme.webroot / ".well-known" / "acme-challenge").iterdir()) == []
    # with forward, certbot --standalone is not running yet: nothing to probe
    assert (
        probe_challenge_route(
            _config(tmp_path, "certbot", webroot=None, forward="127.0.0.1:1"), "a.example"
        )
        == []
    )
