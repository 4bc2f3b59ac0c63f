"""systemd's notification protocol (sd_notify), spoken directly on the NOTIFY_SOCKET.

Rule of this room: never fail the service because systemd is absent or away. Each message is
one datagram of ``KEY=value`` lines sent to the ``AF_UNIX``/``SOCK_DGRAM`` socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); without that variable
every call does nothing. What we send, and when (``Type=notify`` in the unit):

- ``READY=1`` once every listener is bound (and the workers accept);
- ``RELOADING=1`` with ``MONOTONIC_USEC`` when a reload starts, ``READY=1`` when it ends;
- ``STOPPING=1`` when a stop begins; ``STATUS=...`` lines for ``systemctl status``;
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` when the unit sets ``WatchdogSec=``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("revproxy.sdnotify")


class Notifier:
    """Sends notifications to systemd; a no-op outside a notify-type service."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._sock: socket.socket | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keyword names are upper-cased); True when it went out."""
        if self.address is None:
            return False
        data = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, **({"status": status} if status else {}))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(reloading=1, monotonic_usec=usec, status="reloading")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping=1, status=status)

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def start_watchdog(self) -> None:
        if self.watchdog_interval is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._pet())

    async def _pet(self) -> None:
        assert self.watchdog_interval is not None
        while True:
            self.send(watchdog=1)
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
