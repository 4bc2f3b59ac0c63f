"""Access-log lines to syslog: RFC 5424 messages, one datagram each.

Rule of this room: sending never blocks and never fails a request. The socket is a datagram
socket (the local ``/dev/log``, another Unix socket, or UDP) set non-blocking; a datagram the
daemon cannot take right now is dropped and counted, and a missing socket is looked for again
on the next batch. Every worker process has its own socket (opened on first use).

RFC 5424 §6: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG``, with
PRI = facility * 8 + severity (access lines are ``info``, 6) and the message as UTF-8.
"""

from __future__ import annotations

import logging
import os
import socket

from revproxy.config.accesslog import FACILITIES, SyslogTarget

log = logging.getLogger("revproxy.accesslog")

SEVERITY_INFO = 6
APP_NAME = "revproxy"
MSGID = "access"
# Larger datagrams are cut: RFC 5426 §3.2 asks receivers for 480 bytes at least and 2048
# where they can; rsyslog takes 8 KiB by default.
MAX_DATAGRAM = 8192


class SyslogSender:
    """Sends lines as RFC 5424 messages to one syslog target."""

    def __init__(self, target: SyslogTarget, facility: str) -> None:
        self._target = target
        self._pri = FACILITIES[facility] * 8 + SEVERITY_INFO
        self._host = socket.gethostname().split(".")[0] or "-"
        self._sock: socket.socket | None = None
        self._pid = 0
        self.dropped = 0

    def _socket(self) -> socket.socket | None:
        pid = os.getpid()
        if self._sock is not None and self._pid == pid:
            return self._sock
        self.close()  # inherited from the master: each process has its own
        t = self._target
        try:
            if t.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                address: object = t.address
            else:
                info = socket.getaddrinfo(t.address, t.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                address = info[4]
            try:
                sock.setblocking(False)
                sock.connect(address)  # type: ignore[arg-type]
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            log.warning("syslog %s unreachable: %s", _label(t), exc)
            return None
        self._sock, self._pid = sock, pid
        return sock

    def send(self, stamps: list[str], lines: list[str]) -> None:
        """Send each line with its RFC 3339 timestamp."""
        sock = self._socket()
        if sock is None:
            self.dropped += len(lines)
            return
        head = f"<{self._pri}>1 "
        tail = f" {self._host} {APP_NAME} {os.getpid()} {MSGID} - "
        for stamp, line in zip(stamps, lines, strict=True):
            data = (head + stamp + tail + line).encode("utf-8", "replace")[:MAX_DATAGRAM]
            try:
                sock.send(data)
            except BlockingIOError:
                self.dropped += 1
            except OSError:  # the daemon went away (ECONNREFUSED, ENOENT ...): reopen later
                self.dropped += 1
                self.close()
                return

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _label(t: SyslogTarget) -> str:
    return f"unix:{t.address}" if t.transport == "unix" else f"udp://{t.address}:{t.port}"
