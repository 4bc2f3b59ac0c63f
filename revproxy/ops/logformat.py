"""How an access-log record becomes a line: ``text``, ``json``, ``combined`` or a template.

Rule of this room: every line has a timestamp, on the clock ``log_time`` names (``utc`` or
``local``); a value that is unknown is written ``-``; a line is one line (no value can carry a
line break into it). The time is the moment the record was made (the request's or the
connection's end, like nginx's ``$time_local``). Formatting runs in the batch the access log
writes once per event-loop turn, never in the request's own path.

``combined`` is nginx's predefined format, byte for byte::

    $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    "$http_referer" "$http_user_agent"

with nginx's escaping of ``"``, ``\\`` and bytes outside printable ASCII as ``\\xHH``.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from revproxy.ops.accesslog import AccessRecord

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Clock:
    """Timestamps of one clock, the seconds part formatted once per second."""

    def __init__(self, which: Literal["utc", "local"]) -> None:
        self._local = which == "local"
        self._second = -1
        self._iso = ""
        self._offset = ""
        self._nginx = ""

    def _tick(self, t: float) -> None:
        second = int(t)
        if second == self._second:
            return
        self._second = second
        tm = time.localtime(second) if self._local else time.gmtime(second)
        off = tm.tm_gmtoff if self._local else 0
        sign = "-" if off < 0 else "+"
        hh, mm = divmod(abs(off) // 60, 60)
        self._offset = "Z" if not self._local else f"{sign}{hh:02d}:{mm:02d}"
        self._iso = (
            f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}"
            f"T{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
        )
        self._nginx = (
            f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year:04d}:"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hh:02d}{mm:02d}"
        )

    def iso(self, t: float) -> str:
        """ISO 8601 / RFC 3339 with milliseconds: ``2024-05-01T12:00:00.123Z``."""
        self._tick(t)
        ms = int((t - int(t)) * 1000)
        return f"{self._iso}.{ms:03d}{self._offset}"

    def nginx(self, t: float) -> str:
        """nginx's ``$time_local``: ``01/May/2024:12:00:00 +0000``."""
        self._tick(t)
        return self._nginx


# --- the values of a record, by field name -----------------------------------------------


def _header(rec: AccessRecord, name: bytes) -> str | None:
    req = rec.request
    if req is None:
        return None
    for n, v in req.headers:
        if n == name:
            return v.decode("latin-1")
    return None


def protocol_of(rec: AccessRecord) -> str:
    req = rec.request
    if req is None:
        return ""
    version = req.http_version.decode("latin-1")
    return "HTTP/2.0" if version == "2" else f"HTTP/{version}"


def request_line(rec: AccessRecord) -> str:
    """nginx's ``$request``: the request line as received."""
    if rec.request is None:
        return "-" if rec.method in ("", "-") else f"{rec.method} {rec.path}"
    return f"{rec.method} {rec.path} {protocol_of(rec)}"


def body_bytes(rec: AccessRecord) -> int:
    return max(0, rec.bytes_out - rec.head_out)


def _client_port(rec: AccessRecord) -> str:
    return str(rec.conn.client[1]) if rec.conn is not None else ""


def _tls_version(rec: AccessRecord) -> str:
    return rec.conn.tls_version if rec.conn is not None else ""


def client_cert(rec: AccessRecord) -> str:
    return rec.conn.client_subject if rec.conn is not None else ""


def _fields(clock: Clock) -> dict[str, Callable[[AccessRecord], object]]:
    return {
        "time": lambda r: clock.iso(r.time),
        "time_local": lambda r: clock.nginx(r.time),
        "msec": lambda r: f"{r.time:.3f}",
        "client": lambda r: r.client,
        "client_port": _client_port,
        "peer": lambda r: r.peer,
        "user": lambda r: r.user,
        "request": request_line,
        "method": lambda r: r.method,
        "path": lambda r: r.path,
        "protocol": protocol_of,
        "host": lambda r: r.host,
        "status": lambda r: r.status,
        "bytes_in": lambda r: r.bytes_in,
        "bytes_out": lambda r: r.bytes_out,
        "body_bytes_sent": body_bytes,
        "referer": lambda r: _header(r, b"referer"),
        "user_agent": lambda r: _header(r, b"user-agent"),
        "duration_ms": lambda r: f"{r.duration_ms:.1f}",
        "upstream_ms": lambda r: f"{r.upstream_ms:.1f}",
        "backend": lambda r: r.backend,
        "route": lambda r: r.route,
        "pool": lambda r: r.pool,
        "listener": lambda r: r.listener,
        "request_id": lambda r: r.id,
        "tls_version": _tls_version,
        "sni": lambda r: r.sni,
        "client_cert": client_cert,
        "authority": lambda r: r.authority,
        "vpce": lambda r: r.vpce,
        "refused": lambda r: r.refused,
        "destination": lambda r: r.destination,
        "resolved": lambda r: r.resolved,
        "cache": lambda r: r.cache,
        "encoding": lambda r: r.encoding,
    }


def nginx_escape(value: str) -> str:
    """nginx's escaping of a logged variable (``ngx_http_log_escape``): ``"``, ``\\``, and
    bytes below 0x20 or above 0x7e as ``\\xHH``."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    out = []
    for b in value.encode("utf-8", "surrogateescape"):
        if b < 0x20 or b > 0x7E or b in (0x22, 0x5C):
            out.append(f"\\x{b:02X}")
        else:
            out.append(chr(b))
    return "".join(out)


def _plain(value: str) -> str:
    """A template value on one line: control characters escaped as ``\\xHH``."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else f"\\x{ord(c):02X}" for c in value)


Formatter = Callable[["AccessRecord"], str]


def formatter(fmt: str, clock: Clock) -> Formatter:
    """The function that turns a record into its line, for an ``access_log_format``."""
    if fmt == "text":
        return lambda r: f"{clock.iso(r.time)} {r.text()}"
    if fmt == "json":
        return lambda r: json.dumps(r.as_dict(clock.iso(r.time)), separators=(",", ":"))
    if fmt == "combined":
        return lambda r: _combined(r, clock)
    return _template(fmt, clock)


def _combined(r: AccessRecord, clock: Clock) -> str:
    referer = _header(r, b"referer")
    agent = _header(r, b"user-agent")
    return (
        f"{r.client} - {nginx_escape(r.user) if r.user else '-'} [{clock.nginx(r.time)}] "
        f'"{nginx_escape(request_line(r))}" {r.status} {body_bytes(r)} '
        f'"{nginx_escape(referer) if referer else "-"}" '
        f'"{nginx_escape(agent) if agent else "-"}"'
    )


def _template(fmt: str, clock: Clock) -> Formatter:
    fields = _fields(clock)
    pieces: list[tuple[str, Callable[[AccessRecord], object] | None]] = []
    for literal, name, _spec, _conv in string.Formatter().parse(fmt):
        pieces.append((literal, fields[name] if name is not None else None))

    def line(r: AccessRecord) -> str:
        out: list[str] = []
        for literal, get in pieces:
            out.append(literal)
            if get is not None:
                value = get(r)
                text = "" if value is None else str(value)
                out.append(_plain(text) if text else "-")
        return "".join(out)

    return line
