"""certbot as a subprocess: the command lines revproxy runs, its output, its errors.

Rule of this room: certbot does the ACME work; revproxy only decides the arguments (pure
functions, tested without certbot), streams certbot's own output to the user, and on failure
repeats certbot's own error message (never a Python stack trace). certbot always runs
non-interactively with the paths of ``[acme]``, never sleeps randomly before a renewal, and
carries our deploy hook so that the running revproxy loads a new certificate at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from revproxy.certs.acme import split_forward
from revproxy.config.model import Acme

# The hook certbot runs after each issued or renewed certificate (scripts/ in a checkout).
DEPLOY_HOOK_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "certbot-deploy-hook"
# Overrides the deploy hook command revproxy hands to certbot.
DEPLOY_HOOK_ENV = "REVPROXY_DEPLOY_HOOK"

# RFC 1035 labels, as certbot itself accepts them for HTTP-01 (no wildcard: that needs DNS-01).
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class CertbotNotFound(Exception):
    """The certbot command named in ``[acme] certbot`` cannot be run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertbotResult:
    returncode: int
    lines: tuple[str, ...]  # everything certbot printed (stdout and stderr, in order)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --- arguments ----------------------------------------------------------------------------


def check_domains(domains: Sequence[str]) -> list[str]:
    """What is wrong with the names asked for (empty when they can be issued by HTTP-01)."""
    problems: list[str] = []
    if not domains:
        problems.append("name at least one domain, e.g. revproxy cert issue example.com")
    for raw in domains:
        name = raw.strip().rstrip(".").lower()
        if "://" in name or "/" in name:
            problems.append(f"{raw!r}: give a bare host name, not a URL")
            continue
        if name.startswith("*."):
            problems.append(
                f"{raw!r}: wildcard certificates need the DNS-01 challenge;"
                " revproxy answers HTTP-01 only (list each name instead)"
            )
            continue
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            pass
        else:
            problems.append(f"{raw!r}: certificates are issued for host names, not IP addresses")
            continue
        try:
            ascii_name = name.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_name = ""
        labels = ascii_name.split(".")
        if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
            problems.append(f"{raw!r}: not a fully qualified host name (e.g. www.example.com)")
    return problems


def _paths(acme: Acme) -> list[str]:
    return [
        "--config-dir",
        str(acme.config_dir),
        "--work-dir",
        str(acme.work_dir),
        "--logs-dir",
        str(acme.logs_dir),
    ]


def issue_args(
    acme: Acme,
    domains: Sequence[str],
    *,
    deploy_hook: str | None,
    staging: bool = False,
    server: str | None = None,
) -> list[str]:
    """``certbot certonly`` for `domains`: webroot (or standalone behind ``forward``).

    The ACME server is `server` if given, else Let's Encrypt staging with `staging`, else
    ``[acme] server``, else certbot's default (Let's Encrypt production).
    """
    if staging and server:
        raise ValueError("--staging and --server name two different ACME servers; give one")
    args = [acme.certbot, "certonly", "--non-interactive", "--agree-tos", "--expand"]
    if acme.forward:
        host, port = split_forward(acme.forward)
        args += ["--standalone", "--http-01-port", str(port), "--http-01-address", host]
    else:
        if acme.webroot is None:
            raise ValueError("[acme] names neither webroot nor forward")
        args += ["--webroot", "--webroot-path", str(acme.webroot)]
    for domain in domains:
        args += ["-d", domain.strip().rstrip(".").lower()]
    if acme.email:
        args += ["--email", acme.email, "--no-eff-email"]
    else:
        args += ["--register-unsafely-without-email"]
    args += _paths(acme)
    if server:
        args += ["--server", server]
    elif staging:
        args += ["--staging"]
    elif acme.server:
        args += ["--server", acme.server]
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    return args


def renew_args(acme: Acme, *, deploy_hook: str | None, force: bool = False) -> list[str]:
    """``certbot renew`` over every certificate under ``[acme] config_dir``.

    Each certificate is renewed with the ACME server and method it was issued with (certbot
    keeps them in ``renewal/<name>.conf``). Without a terminal certbot would first sleep up to
    8 minutes at random; revproxy never lets it.
    """
    args = [acme.certbot, "renew", "--non-interactive", "--no-random-sleep-on-renew"]
    args += _paths(acme)
    if force:
        args += ["--force-renewal"]
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    return args


def deploy_hook_command(
    conf_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    script: Path = DEPLOY_HOOK_SCRIPT,
) -> str:
    """The shell command certbot runs after each new certificate (stored for renewals too).

    It names this configuration directory and this Python, so a renewal run later by cron or
    a systemd timer still finds the right revproxy.
    """
    environ = os.environ if env is None else env
    override = environ.get(DEPLOY_HOOK_ENV)
    if override:
        return override
    settings = [f"REVPROXY_CONF={conf_dir.resolve()}", f"REVPROXY_PYTHON={python}"]
    # `env` is first so certbot's hook validation finds a program on PATH.
    if os.access(script, os.X_OK):
        return shlex.join(["env", *settings, str(script)])
    return shlex.join(["env", *settings, python, "-m", "revproxy", "cert", "reload"])


# --- running ------------------------------------------------------------------------------


def find_certbot(command: str) -> str:
    """The certbot executable `command` names (a path or a name on PATH)."""
    found = shutil.which(command)
    if found is None:
        where = "does not exist or is not executable" if "/" in command else "is not on PATH"
        raise CertbotNotFound(
            f'certbot not found: "{command}" {where}'
            ' (install it: apt-get install certbot, or set [acme] certbot = "/path/to/certbot")'
        )
    return found


def run_certbot(args: Sequence[str], *, out: TextIO) -> CertbotResult:
    """Run certbot, copying each line it prints to `out` as it comes."""
    argv = [find_certbot(args[0]), *args[1:]]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise CertbotNotFound(f"certbot cannot be run: {argv[0]}: {exc.strerror or exc}") from None
    with proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            print(line, file=out, flush=True)
    return CertbotResult(returncode=proc.returncode, lines=tuple(lines))


# --- errors -------------------------------------------------------------------------------

# Lines certbot prints around every failure that say nothing about this one.
_BOILERPLATE = (
    "Saving debug log to",
    "Ask for help or search for solutions at",
    "See the logfile",
    "Requesting a certificate for",
    "Processing ",
    "Account registered.",
    "- - - -",
)
# Lines after which certbot states the actual problem.
_ERROR_STARTS = (
    "An unexpected error occurred:",
    "Certbot failed to authenticate some domains",
    "Failed to renew certificate",
    "Error while running",
    "certbot: error:",
    "Some challenges have failed.",
)


def certbot_error(lines: Sequence[str]) -> str:
    """certbot's own statement of what went wrong, from everything it printed."""
    start = None
    for i, line in enumerate(lines):
        if line.strip().startswith(_ERROR_STARTS):
            start = i
            break
    picked = lines[start:] if start is not None else lines[-8:]
    kept = [
        line.rstrip()
        for line in picked
        if line.strip() and not line.strip().startswith(_BOILERPLATE)
    ]
    return "\n".join(kept) if kept else "certbot printed no error message"


_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("Invalid response from", "Non-200 status code", "returned 404"),
        "The ACME server fetched the challenge through revproxy and did not get the token."
        " Check that revproxy is running with a plain listener on port 80 that answers ACME"
        " (acme = true; default on port 80), and that [acme] webroot is the folder that"
        " revproxy serves (`revproxy check` shows both). `curl"
        " http://DOMAIN/.well-known/acme-challenge/x` must answer revproxy's 404, not a"
        " redirect.",
    ),
    (
        ("Connection refused",),
        "Nothing listened where certbot or the ACME server connected: the ACME server itself"
        " (check [acme] server or --server) or, during validation, revproxy's plain listener"
        " on port 80.",
    ),
    (
        ("Timeout during connect", "Fetching http"),
        "The ACME server could not reach revproxy on port 80: check DNS and the firewall.",
    ),
    (
        ("--http-01-port", "Address already in use"),
        "With [acme] forward, certbot --standalone listens on that address while it runs;"
        " it must be free.",
    ),
)


def error_hints(message: str) -> list[str]:
    """What to check for a known certbot error."""
    return [hint for needles, hint in _HINTS if any(n in message for n in needles)]
