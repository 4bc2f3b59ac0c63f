"""Access log: one line per request (HTTP) or per connection (TCP).

Rule of this room: formatting and writing stay off the hot path — records are queued and
written in one batch per event-loop turn. Text by default, JSON optional.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
from dataclasses import asdict, dataclass
from typing import IO, Literal


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
        )


class AccessLog:
    def __init__(self, target: str, fmt: Literal["text", "json"] = "text") -> None:
        self.enabled = target != "off"
        self._fmt = fmt
        self._stream: IO[str] | None = None
        self._own = False
        if target == "stdout":
            self._stream = sys.stdout
        elif self.enabled:
            self._stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._own = True
        self._pending: list[AccessRecord] = []
        self._scheduled = False

    def record(self, rec: AccessRecord) -> None:
        if not self.enabled:
            return
        self._pending.append(rec)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._stream is None:
            return
        recs, self._pending = self._pending, []
        if self._fmt == "json":
            lines = [json.dumps(asdict(r), separators=(",", ":")) for r in recs]
        else:
            lines = [r.text() for r in recs]
        try:
            self._stream.flush()  # anything written through the text layer goes first
            fd = self._stream.fileno()
            for chunk in _chunks(lines):
                _write_all(fd, chunk)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._own and self._stream is not None:
            self._stream.close()


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
