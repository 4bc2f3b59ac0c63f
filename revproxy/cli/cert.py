"""``revproxy cert issue | renew | list | reload``: certificates from the command line.

Rule of this room: user-facing, like cli/main.py. certbot's own output is streamed as it comes; a
failure ends with certbot's own error message, a hint when we know one, and a non-zero exit
(1 for a failed run, 2 for a configuration or usage mistake) — never a stack trace.

``cert reload`` is what the certbot deploy hook runs: it asks the running revproxy to load its
certificates again (admin socket ``reload certs``, else SIGHUP to the pid in
``[global] pid_file``, else ``systemctl reload``) and fails loudly when nothing is running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from revproxy.certs.certbot import (
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
from revproxy.certs.files import LoadedCert, load_cert_pair, scan_cert_dir
from revproxy.cli.conf import default_conf_dir, load
from revproxy.config.listener import answers_acme
from revproxy.config.model import Config
from revproxy.errors import CertificateError, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# Environment the deploy hook (and tests) can set instead of reading the configuration.
ENV_CONF = "REVPROXY_CONF"
ENV_PID_FILE = "REVPROXY_PID_FILE"
ENV_ADMIN_SOCKET = "REVPROXY_ADMIN_SOCKET"
ENV_UNIT = "REVPROXY_UNIT"  # systemd unit to reload ("" = never ask systemd)
DEFAULT_UNIT = "revproxy.service"
# Bound of one admin-socket exchange and of `systemctl`.
ADMIN_TIMEOUT = 10.0
SYSTEMCTL_TIMEOUT = 30.0
# Bound of the local check that revproxy answers challenges before certbot runs.
PROBE_TIMEOUT = 3.0


def add_parser(subparsers: Any) -> None:
    """Register ``revproxy cert …`` on the main parser's subparsers."""
    p_cert: argparse.ArgumentParser = subparsers.add_parser(
        "cert", help="issue, renew and list certificates (certbot)"
    )
    sub = p_cert.add_subparsers(dest="cert_command", required=True)

    p_issue = sub.add_parser(
        "issue",
        help="get a certificate with certbot, validated through the running revproxy",
        description="Run certbot certonly for DOMAIN... with the paths of [acme]; the ACME "
        "server fetches its challenge through revproxy's plain listener on port 80.",
    )
    _conf_arg(p_issue)
    p_issue.add_argument("domains", nargs="+", metavar="DOMAIN", help="names on the certificate")
    which = p_issue.add_mutually_exclusive_group()
    which.add_argument(
        "--staging", action="store_true", help="use Let's Encrypt's staging server (test certs)"
    )
    which.add_argument("--server", metavar="URL", help="ACME directory URL (overrides [acme])")
    p_issue.set_defaults(func=cmd_issue)

    p_renew = sub.add_parser("renew", help="renew certificates that are due (certbot renew)")
    _conf_arg(p_renew)
    p_renew.add_argument(
        "--force", action="store_true", help="renew every certificate now, due or not"
    )
    p_renew.set_defaults(func=cmd_renew)

    p_list = sub.add_parser("list", help="show every certificate revproxy serves")
    _conf_arg(p_list)
    p_list.set_defaults(func=cmd_list)

    p_reload = sub.add_parser(
        "reload", help="ask the running revproxy to load its certificates again now"
    )
    _conf_arg(p_reload)
    p_reload.set_defaults(func=cmd_reload)


def _conf_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--conf",
        default=None,
        help=f"configuration directory (default: ${ENV_CONF}, ./conf in a checkout, "
        "else /etc/revproxy)",
    )


def _conf_dir(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    if args.conf:
        return Path(args.conf)
    if environ.get(ENV_CONF):
        return Path(environ[ENV_CONF])
    return default_conf_dir()


def _say(message: str) -> None:
    print(f"revproxy: {message}", file=sys.stderr, flush=True)


def _print_problems(exc: ConfigError) -> None:
    _say(f"configuration has {len(exc.problems)} problem(s):")
    for p in exc.problems:
        print(f"  {p}", file=sys.stderr)


# --- issue and renew ----------------------------------------------------------------------


def _report_failure(returncode: int, lines: Sequence[str], what: str) -> int:
    message = certbot_error(lines)
    _say(f"{what} failed (certbot exited with {returncode}):")
    for line in message.splitlines():
        print(f"  {line}", file=sys.stderr)
    for hint in error_hints(message):
        print(f"hint: {hint}", file=sys.stderr)
    return EXIT_FAILED


def _saved_lineages(lines: Sequence[str]) -> list[Path]:
    """Folders certbot said it saved certificates in (``Certificate is saved at: …``)."""
    out: list[Path] = []
    for line in lines:
        _, sep, tail = line.partition("Certificate is saved at:")
        if sep and tail.strip():
            out.append(Path(tail.strip()).parent)
    return out


def _served_from(config: Config, folder: Path) -> list[str]:
    """Names of the TLS listeners whose cert_dir holds `folder`."""
    names = []
    for lst in config.listeners:
        if lst.tls is not None and lst.tls.cert_dir is not None:
            with contextlib.suppress(OSError):
                if Path(lst.tls.cert_dir).resolve() == folder.resolve().parent:
                    names.append(lst.name)
    return names


def cmd_issue(args: argparse.Namespace) -> int:
    conf = _conf_dir(args)
    try:
        config = load(conf)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    problems = check_domains(args.domains)
    if problems:
        for p in problems:
            _say(p)
        return EXIT_CONFIG
    acme = config.acme
    try:
        find_certbot(acme.certbot)
    except CertbotNotFound as not_found:
        _say(str(not_found))
        return EXIT_FAILED
    if not any(answers_acme(lst) for lst in config.listeners):
        _say(
            "warning: no listener answers ACME challenges; the ACME server fetches them on"
            " port 80 (add a plain listener bound to :80, or set acme = true on one)"
        )
    if acme.webroot is not None and not acme.forward:
        try:
            (acme.webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _say(f"[acme] webroot {acme.webroot} cannot be created: {err.strerror or err}")
            return EXIT_FAILED
        for warning in probe_challenge_route(config, args.domains[0]):
            _say(f"warning: {warning}")
    try:
        argv = issue_args(
            acme,
            args.domains,
            deploy_hook=deploy_hook_command(conf),
            staging=args.staging,
            server=args.server,
        )
    except ValueError as value_error:
        _say(str(value_error))
        return EXIT_CONFIG
    _say(f"running {shlex.join(argv)}")
    try:
        result = run_certbot(argv, out=sys.stdout)
    except CertbotNotFound as not_found:
        _say(str(not_found))
        return EXIT_FAILED
    if not result.ok:
        return _report_failure(result.returncode, result.lines, "certificate issuance")
    for folder in _saved_lineages(result.lines):
        listeners = _served_from(config, folder)
        if listeners:
            _say(
                f"{folder} is served by listener {', '.join(listeners)}"
                " (loaded by the deploy hook, or by the file watcher within seconds)"
            )
        else:
            _say(
                f"warning: no TLS listener serves {folder}: set"
                f' tls = {{ cert_dir = "{folder.parent}" }} on your HTTPS listener'
            )
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    conf = _conf_dir(args)
    try:
        config = load(conf)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    argv = renew_args(config.acme, deploy_hook=deploy_hook_command(conf), force=args.force)
    try:
        find_certbot(config.acme.certbot)
        _say(f"running {shlex.join(argv)}")
        result = run_certbot(argv, out=sys.stdout)
    except CertbotNotFound as not_found:
        _say(str(not_found))
        return EXIT_FAILED
    if not result.ok:
        return _report_failure(result.returncode, result.lines, "renewal")
    return EXIT_OK


def _probe_addresses(config: Config) -> list[tuple[str, int]]:
    """Where this machine reaches each listener that answers challenges."""
    out: list[tuple[str, int]] = []
    for lst in config.listeners:
        if answers_acme(lst):
            for b in lst.bind:
                host = b.host if b.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
                out.append((host, b.port))
    return out


def probe_challenge_route(config: Config, domain: str) -> list[str]:
    """Check that the running revproxy serves [acme] webroot before asking the ACME server.

    A probe token is written to the webroot and fetched from each listener that answers
    challenges. A failed validation counts against the CA's rate limits; a local probe costs
    nothing. Returns warnings (empty: some listener answered with the probe).
    """
    webroot = config.acme.webroot
    addresses = _probe_addresses(config)
    if webroot is None or config.acme.forward or not addresses:
        return []
    token = f"revproxy-probe-{secrets.token_hex(8)}"
    content = secrets.token_urlsafe(24).encode()
    path = webroot / ".well-known" / "acme-challenge" / token
    try:
        path.write_bytes(content)
    except OSError as exc:
        return [f"cannot write to [acme] webroot {webroot}: {exc.strerror or exc}"]
    warnings: list[str] = []
    try:
        for host, port in addresses:
            where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            request = (
                f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nhost: {domain}\r\n"
                "connection: close\r\nuser-agent: revproxy-cert-probe\r\n\r\n"
            ).encode()
            try:
                with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as s:
                    s.settimeout(PROBE_TIMEOUT)
                    s.sendall(request)
                    reply = b""
                    while len(reply) < 65536 and (chunk := s.recv(65536)):
                        reply += chunk
            except OSError as exc:
                warnings.append(
                    f"nothing answers on {where} ({exc.strerror or exc}): is revproxy running"
                    " with this configuration? The ACME server fetches the challenge there."
                )
                continue
            status_line = reply.split(b"\r\n", 1)[0].decode("latin-1")
            if status_line.split()[1:2] == ["200"] and reply.endswith(b"\r\n\r\n" + content):
                return []  # revproxy answers from this webroot: good
            warnings.append(
                f"{where} answered {status_line or 'nothing'!r} for a probe token written to"
                f" {webroot}: the running revproxy does not serve this [acme] webroot"
                " (is it running with this configuration?)"
            )
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return warnings


# --- list ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CertRow:
    listener: str
    names: tuple[str, ...]
    issuer: str
    not_after: datetime
    cert_path: Path


def issuer_label(cert_path: Path) -> str:
    """The issuer's common name and organisation, read with cryptography."""
    # Imported here: ``revproxy run`` builds this command's parser too, and must not load it.
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        return "?"
    parts = []
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        for attr in leaf.issuer.get_attributes_for_oid(oid):
            value = attr.value if isinstance(attr.value, str) else attr.value.decode()
            if value not in parts:
                parts.append(value)
    return " / ".join(parts) or leaf.issuer.rfc4514_string()


def served_certificates(config: Config) -> tuple[list[CertRow], list[str]]:
    """Every certificate the TLS listeners serve, and what could not be loaded."""
    rows: list[CertRow] = []
    problems: list[str] = []
    for lst in config.listeners:
        if lst.tls is None:
            continue
        loaded: list[LoadedCert] = []
        for pair in lst.tls.certs:
            try:
                loaded.append(load_cert_pair(pair.cert, pair.key))
            except CertificateError as exc:
                problems.append(f"listener {lst.name}: {exc}")
        if lst.tls.cert_dir is not None:
            found, errors = scan_cert_dir(Path(lst.tls.cert_dir))
            loaded.extend(found)
            problems.extend(f"listener {lst.name}: {e}" for e in errors)
        for cert in loaded:
            rows.append(
                CertRow(
                    listener=lst.name,
                    names=cert.names,
                    issuer=issuer_label(cert.cert_path),
                    not_after=cert.not_after,
                    cert_path=cert.cert_path,
                )
            )
    return rows, problems


def format_rows(rows: Sequence[CertRow], now: datetime) -> list[str]:
    """A table: listener, names, issuer, not after, days left, file."""
    table = [("LISTENER", "NAMES", "ISSUER", "NOT AFTER (UTC)", "DAYS LEFT", "FILE")]
    for r in sorted(rows, key=lambda r: (r.listener, r.not_after)):
        days = (r.not_after - now).total_seconds() / 86400
        left = "expired" if days < 0 else str(int(days))
        table.append(
            (
                r.listener,
                ",".join(r.names) or "-",
                r.issuer,
                r.not_after.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
                left,
                str(r.cert_path),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    ]


def cmd_list(args: argparse.Namespace) -> int:
    try:
        config = load(_conf_dir(args))
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    rows, problems = served_certificates(config)
    if rows:
        for line in format_rows(rows, datetime.now(UTC)):
            print(line)
    else:
        print("no certificates yet: TLS listeners serve their generated certificate")
    for p in problems:
        _say(f"not served: {p}")
    return EXIT_OK


# --- reload (the deploy hook) -------------------------------------------------------------


def _is_revproxy(pid: int) -> bool:
    """Whether `pid` is alive and is a revproxy process (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's: the kill below will say so
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    return b"revproxy" in cmdline


def _admin_reload(path: Path) -> tuple[bool | None, str]:
    """Send ``reload certs`` on the admin socket: (done; None when unreachable, message)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(ADMIN_TIMEOUT)
            s.connect(str(path))
            s.sendall(b"reload certs\n")
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    except OSError as exc:
        return None, f"admin socket {path}: {exc.strerror or exc}"
    # The admin answers "ok" or "error" on the first line, then text (admin.py).
    first, _, rest = reply.decode(errors="replace").partition("\n")
    if first.strip() not in ("ok", "error"):
        return None, f"admin socket {path}: unexpected answer {first.strip()[:80]!r}"
    detail = "; ".join(line.strip() for line in rest.splitlines() if line.strip())
    return first.strip() == "ok", f"admin socket {path}: reload certs: {detail or first}"


def _sighup(pid_file: Path) -> tuple[bool, str]:
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        return False, f"no pid file at {pid_file}"
    except (OSError, ValueError) as exc:
        return False, f"pid file {pid_file} is unreadable: {exc}"
    if not _is_revproxy(pid):
        return False, f"pid file {pid_file} names pid {pid}, which is not a running revproxy"
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as os_error:
        return False, f"cannot signal pid {pid}: {os_error.strerror or os_error}"
    return True, f"sent SIGHUP to revproxy (pid {pid} from {pid_file})"


def _systemd(unit: str) -> tuple[bool, str]:
    try:
        active = subprocess.run(
            ["systemctl", "is-active", "--quiet", unit],
            timeout=SYSTEMCTL_TIMEOUT,
            capture_output=True,
        )
        if active.returncode != 0:
            return False, f"systemd unit {unit} is not active"
        done = subprocess.run(
            ["systemctl", "reload", unit],
            timeout=SYSTEMCTL_TIMEOUT,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"systemctl: {exc}"
    if done.returncode != 0:
        return False, f"systemctl reload {unit}: {done.stderr.strip()}"
    return True, f"systemctl reload {unit}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notified:
    done: bool  # a running revproxy was asked, and took the certificates
    refused: bool  # a running revproxy answered, but could not load them
    tried: tuple[str, ...]  # each way tried, and what came of it


def notify_running(config: Config | None, env: Mapping[str, str]) -> Notified:
    """Ask the running revproxy to reload certificates: admin socket, pid file, systemd."""
    tried: list[str] = []
    admin = env.get(ENV_ADMIN_SOCKET) or (
        str(config.admin.socket) if config and config.admin.socket else ""
    )
    if admin and os.path.exists(admin):
        answer, what = _admin_reload(Path(admin))
        tried.append(what)
        if answer is not None:  # it is running and answered: no fallback would do better
            return Notified(done=answer, refused=not answer, tried=tuple(tried))
    elif admin:
        tried.append(f"no admin socket at {admin}")
    pid_file = env.get(ENV_PID_FILE) or (
        str(config.global_.pid_file) if config and config.global_.pid_file else ""
    )
    if pid_file:
        ok, what = _sighup(Path(pid_file))
        tried.append(what)
        if ok:
            return Notified(done=True, refused=False, tried=tuple(tried))
    unit = env.get(ENV_UNIT, DEFAULT_UNIT)
    if unit:
        ok, what = _systemd(unit)
        tried.append(what)
        if ok:
            return Notified(done=True, refused=False, tried=tuple(tried))
    if not admin and not pid_file:
        tried.append("neither [admin] socket nor [global] pid_file is configured")
    return Notified(done=False, refused=False, tried=tuple(tried))


def cmd_reload(args: argparse.Namespace) -> int:
    env = os.environ
    conf = _conf_dir(args, env)
    config: Config | None
    try:
        config = load(conf)
    except ConfigError as exc:
        config = None  # still try what the environment names
        _say(f"{conf}: configuration does not load ({len(exc.problems)} problem(s))")
    lineage = env.get("RENEWED_LINEAGE")
    outcome = notify_running(config, env)
    if outcome.done:
        what = f" for {lineage}" if lineage else ""
        # stdout: certbot shows a hook's stderr as "error output".
        print(f"revproxy: asked revproxy to reload its certificates{what}: {outcome.tried[-1]}")
        return EXIT_OK
    if outcome.refused:
        _say("revproxy could not load the new certificates (it keeps serving the old ones):")
        print(f"  {outcome.tried[-1]}", file=sys.stderr)
        return EXIT_FAILED
    _say("no running revproxy could be reached; certificates not reloaded:")
    for t in outcome.tried:
        print(f"  {t}", file=sys.stderr)
    print(
        "  (a revproxy started later loads the new certificate; a running one without an"
        " admin socket or pid file still picks it up through its file watcher)",
        file=sys.stderr,
    )
    return EXIT_FAILED
