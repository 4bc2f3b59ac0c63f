"""Access log: one line per request (HTTP) or per connection (TCP).

Rule of this room: formatting and writing stay off the hot path — records are queued and
written in one batch per event-loop turn; the request's path only stamps the time and keeps
references (its request head, its connection's facts) that the formatter reads later.
Recording never fails a request: a target that cannot be written drops lines, it never
raises. Formats are ``ops/logformat.py``'s, syslog is ``ops/syslog.py``'s; a file is opened
``O_APPEND`` and reopened by ``reopen()`` (SIGUSR1, ``revproxy ctl reopen-logs``: logrotate's
``postrotate``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal, Protocol

from revproxy.config.accesslog import parse_syslog_target
from revproxy.ops.logformat import Clock, body_bytes, client_cert, formatter, protocol_of
from revproxy.ops.syslog import SyslogSender

if TYPE_CHECKING:
    from revproxy.proto.events import RequestReceived

log = logging.getLogger("revproxy.accesslog")


class ConnFacts(Protocol):
    """What the log reads of a client connection (edge/client_side.py's ``ConnInfo``)."""

    client: tuple[str, int]
    tls_version: str
    client_subject: str


@dataclass(slots=True, kw_only=True)
class AccessRecord:
    id: str
    client: str  # the client's address as established (socket or trusted PROXY header)
    peer: str  # the address of the TCP peer (differs behind a load balancer)
    listener: str
    sni: str
    host: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    route: str
    pool: str
    backend: str  # "-" when answered locally
    duration_ms: float
    upstream_ms: float
    authority: str = ""  # PROXY v2 AUTHORITY TLV
    vpce: str = ""  # PROXY v2 AWS VPC endpoint id
    refused: str = ""  # why the edge policy refused it ("deny", "auth", "limit:NAME")
    user: str = ""  # who the request proved to be (route auth, or a forward/socks5 listener's)
    # Egress (mode forward / socks5): the host:port the client asked for, and the address the
    # proxy connected to (or the one it refused: "-" when none was resolved).
    destination: str = ""
    resolved: str = ""
    # Response services (docs/http-rules.md): what the cache did ("hit", "miss", "bypass",
    # "stale", "revalidated", "coalesced", "refresh") and the encoding the response was
    # compressed with, or why not ("skip:REASON", "passed:saturated").
    cache: str = ""
    encoding: str = ""
    # Read by the formatter, not on the request's path: the request head (referer, user
    # agent, protocol), the connection (client port, TLS version, client certificate), the
    # bytes of the response head within bytes_out (nginx's $body_bytes_sent excludes them),
    # and the wall-clock time the record was made (set by AccessLog.record).
    request: RequestReceived | None = None
    conn: ConnFacts | None = None
    head_out: int = 0
    time: float = 0.0

    def text(self) -> str:
        def q(s: str) -> str:
            return s.replace("\\", "\\\\").replace('"', '\\"') if s else "-"

        return (
            f"{self.client} peer={self.peer} id={self.id} listener={self.listener} "
            f"sni={q(self.sni)} "
            f'host={q(self.host)} "{self.method} {q(self.path)}" {self.status} '
            f"in={self.bytes_in} out={self.bytes_out} route={q(self.route)} pool={q(self.pool)} "
            f"backend={q(self.backend)} time={self.duration_ms:.1f}ms "
            f"upstream={self.upstream_ms:.1f}ms"
            + (f" authority={self.authority}" if self.authority else "")
            + (f" vpce={self.vpce}" if self.vpce else "")
            + (f" user={q(self.user)}" if self.user else "")
            + (f" destination={q(self.destination)}" if self.destination else "")
            + (f" resolved={q(self.resolved)}" if self.destination else "")
            + (f" refused={self.refused}" if self.refused else "")
            + (f" cache={self.cache}" if self.cache else "")
            + (f" encoding={self.encoding}" if self.encoding else "")
            + (f" client_cert={q(subject)}" if (subject := client_cert(self)) else "")
        )

    def as_dict(self, time_text: str) -> dict[str, object]:
        """The record as JSON values (``access_log_format = "json"``)."""
        d: dict[str, object] = {"time": time_text}
        for name in _JSON_FIELDS:
            d[name] = getattr(self, name)
        if self.cache:
            d["cache"] = self.cache
        if self.encoding:
            d["encoding"] = self.encoding
        conn = self.conn
        if conn is not None:
            d["client_port"] = conn.client[1]
            if conn.tls_version:
                d["tls_version"] = conn.tls_version
            if conn.client_subject:
                d["client_cert"] = conn.client_subject
        req = self.request
        if req is not None:
            d["protocol"] = protocol_of(self)
            d["body_bytes_sent"] = body_bytes(self)
            for n, v in req.headers:
                if n == b"referer":
                    d["referer"] = v.decode("latin-1")
                elif n == b"user-agent":
                    d["user_agent"] = v.decode("latin-1")
        return d


_JSON_FIELDS = (
    "id", "client", "peer", "listener", "sni", "host", "method", "path", "status", "bytes_in",
    "bytes_out", "route", "pool", "backend", "duration_ms", "upstream_ms", "authority", "vpce",
    "refused", "user", "destination", "resolved",
)  # fmt: skip


class AccessLog:
    def __init__(
        self,
        target: str,
        fmt: str = "text",
        *,
        log_time: Literal["utc", "local"] = "utc",
        facility: str = "local0",
    ) -> None:
        self.enabled = target != "off"
        self.target = target
        self._clock = Clock(log_time)
        self._format = formatter(fmt, self._clock)
        self._stream: IO[str] | None = None
        self._fd = -1  # a file of our own, opened O_APPEND
        self._syslog: SyslogSender | None = None
        if target == "stdout":
            self._stream = sys.stdout
        elif self.enabled:
            syslog = parse_syslog_target(target)  # checked by the configuration
            if syslog is not None:
                self._syslog = SyslogSender(syslog, facility)
            else:
                self._open()
        self._pending: list[AccessRecord] = []
        self._scheduled = False

    def _open(self) -> bool:
        try:
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            log.error("access log %s cannot be opened: %s (lines are dropped)", self.target, exc)
            return False
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        return True

    def reopen(self) -> bool:
        """Open the file again by its name (after logrotate moved it); True when done or
        nothing to do. Lines already queued go to the old file first."""
        if not self.enabled or self._stream is not None or self._syslog is not None:
            return True  # stdout and syslog have nothing to reopen
        self.flush()
        return self._open()

    def record(self, rec: AccessRecord) -> None:
        if not self.enabled:
            return
        rec.time = time.time()
        self._pending.append(rec)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        recs, self._pending = self._pending, []
        fmt = self._format
        try:
            lines = [fmt(r) for r in recs]
        except Exception:  # a record built by hand with odd values: never fail the caller
            log.exception("access log: a record could not be formatted")
            return
        if self._syslog is not None:
            self._syslog.send([self._clock.iso(r.time) for r in recs], lines)
            return
        try:
            if self._stream is not None:
                self._stream.flush()  # anything written through the text layer goes first
                fd = self._stream.fileno()
            elif self._fd >= 0:
                fd = self._fd
            else:
                return
            for chunk in _chunks(lines):
                _write_all(fd, chunk)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._syslog is not None:
            self._syslog.close()


# Several worker processes share one log (stdout pipe or O_APPEND file). A write() of at most
# PIPE_BUF bytes to a pipe is atomic (POSIX), and an O_APPEND write lands whole at the end:
# batches are cut at line boundaries into writes of at most this size so lines never interleave.
ATOMIC_WRITE = 4096


def _chunks(lines: list[str]) -> list[bytes]:
    out: list[bytes] = []
    buf = bytearray()
    for line in lines:
        data = line.encode("utf-8", "replace") + b"\n"
        if buf and len(buf) + len(data) > ATOMIC_WRITE:
            out.append(bytes(buf))
            buf.clear()
        buf += data
    if buf:
        out.append(bytes(buf))
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]
