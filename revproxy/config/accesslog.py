"""The access log's keys of ``[global]``: where lines go, what they look like, which clock.

Rule of this room: a target that would fail when the log is opened fails here, with the key
path, so ``revproxy check`` refuses it and ``revproxy run`` never meets it (exit 2, not a
traceback). The names a template may use are listed here (``LOG_FIELDS``) because the
configuration must refuse an unknown one without importing the part that writes the log.

Targets: ``"stdout"``, ``"off"``, a file path (its directory must exist and be writable),
``"syslog"`` (the local socket ``/dev/log``), ``"syslog:udp://HOST:PORT"`` or
``"syslog:unix:PATH"``. Formats: ``"text"``, ``"json"``, ``"combined"`` (nginx's) or a
template with named fields, ``"{time} {client} \\"{request}\\" {status}"``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from revproxy.config.reader import MISSING, ReadContext, TableReader

ACCESS_LOG_KEYS = ("access_log", "access_log_format", "log_time", "facility")

LOG_FORMATS = ("text", "json", "combined")
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
LOG_TIMES: tuple[Literal["utc", "local"], ...] = ("utc", "local")
DEV_LOG = "/dev/log"

# RFC 5424 §6.2.1 facility codes by name.
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17,
    "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

# What a template may name: each is a value of one request's (or connection's) record.
LOG_FIELDS = (
    "time", "time_local", "msec", "client", "client_port", "peer", "user", "request", "method",
    "path", "protocol", "host", "status", "bytes_in", "bytes_out", "body_bytes_sent", "referer",
    "user_agent", "duration_ms", "upstream_ms", "backend", "route", "pool", "listener",
    "request_id", "tls_version", "sni", "client_cert", "authority", "vpce", "refused",
    "destination", "resolved",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where syslog datagrams go: a Unix datagram socket, or UDP to host:port."""

    transport: Literal["unix", "udp"]
    address: str  # the socket path, or the host
    port: int = 0


def parse_syslog_target(target: str) -> SyslogTarget | None:
    """The syslog destination of an ``access_log`` value; None when it is not a syslog one.

    Raises ValueError with the reason when it starts with ``syslog`` but is malformed."""
    if target == "syslog":
        return SyslogTarget("unix", DEV_LOG)
    if not target.startswith("syslog:"):
        return None
    rest = target[len("syslog:") :]
    if rest.startswith("unix:"):
        path = rest[len("unix:") :].removeprefix("//")
        if not path.startswith("/"):
            raise ValueError(f'{target!r}: expected "syslog:unix:/absolute/path"')
        return SyslogTarget("unix", path)
    if not rest.startswith("udp://"):
        raise ValueError(
            f'{target!r}: expected "syslog", "syslog:udp://HOST:PORT" or "syslog:unix:/PATH"'
        )
    hostport = rest[len("udp://") :]
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'{target!r}: expected "syslog:udp://HOST:PORT" with a port 1-65535')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{target!r}: {host!r} is not an IPv6 address") from None
    elif not _HOST.fullmatch(host):
        raise ValueError(f"{target!r}: {host!r} is not a host name or address")
    return SyslogTarget("udp", host, int(port_text))


def template_fields(template: str) -> list[str]:
    """The field names a template uses. Raises ValueError for a malformed one or an unknown
    name (with the names allowed)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in LOG_FIELDS:
            shown = f"{{{name}}}" if name else "{}"
            raise ValueError(f"{shown} is not a log field (fields: {', '.join(LOG_FIELDS)})")
        if spec or conversion:
            raise ValueError(f"{{{name}}}: no format spec or conversion is allowed in a field")
        names.append(name)
    if not names:
        raise ValueError(
            f'{template!r}: expected "text", "json", "combined" or a template with '
            "named fields such as {time} {client} {request} {status}"
        )
    return names


def read_access_log(t: TableReader, ctx: ReadContext, default: str) -> str:
    """``access_log``: resolved (a file path against the configuration's folder) and
    checked as a target."""
    access_log = t.string("access_log", default)
    if access_log in ("stdout", "off"):
        return access_log
    try:
        syslog = parse_syslog_target(access_log)
    except ValueError as exc:
        t.problem("access_log", str(exc))
        return default
    if syslog is not None:
        if syslog.transport == "unix" and not _is_socket(syslog.address):
            t.problem(
                "access_log",
                f"{access_log!r}: no syslog socket at {syslog.address} (is a syslog daemon "
                'running? else write "syslog:udp://HOST:PORT" or a file)',
            )
            return default
        return access_log
    path = ctx.resolve(access_log)
    reason = _file_problem(path)
    if reason:
        t.problem("access_log", reason)
        return default
    return str(path)


def read_format(t: TableReader, default: str) -> str:
    fmt = t.string("access_log_format", default)
    if fmt in LOG_FORMATS:
        return fmt
    if "{" not in fmt:
        t.problem(
            "access_log_format",
            f'expected one of "text", "json", "combined" or a template with named fields '
            f'such as "{{time}} {{client}} {{request}} {{status}}", got "{fmt}"',
        )
        return default
    try:
        template_fields(fmt)
    except ValueError as exc:
        t.problem("access_log_format", str(exc))
        return default
    return fmt


def read_facility(t: TableReader, default: str) -> str:
    if t.raw("facility") is MISSING:
        return default
    return t.choice("facility", tuple(FACILITIES), default)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _file_problem(path: Path) -> str:
    """Why ``path`` cannot be opened for appending by this process; "" when it can."""
    if path.is_dir():
        return f"{path} is a directory (name a file in it, e.g. {path / 'access.log'})"
    folder = path.parent
    if not folder.is_dir():
        return f"{folder} does not exist (create it, owned by the service user)"
    if path.exists():
        if not os.access(path, os.W_OK):
            return f"{path} is not writable by this user (uid {os.getuid()})"
    elif not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"{folder} is not writable by this user (uid {os.getuid()}): "
            f"{path.name} cannot be created"
        )
    return ""
