"""The master-worker channel: JSON lines over a Unix socketpair, sockets passed alongside.

Rule of this room: the wire only. A message is one JSON object on one line; file descriptors
(listening sockets) travel as SCM_RIGHTS ancillary data with the first bytes of the line that
claims them (``nfds``), and are handed to that message in order. ``post`` never blocks and keeps
order; nothing here knows what the messages mean (``workers.py`` does).
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import json
import logging
import os
import pickle
import socket
from collections.abc import Sequence
from typing import Any

from revproxy.config.model import Config

log = logging.getLogger("revproxy.workers")

# Largest number of descriptors passed in one message (every socket of every listener).
MAX_FDS = 512

Message = dict[str, Any]


def pack_config(config: Config) -> str:
    return base64.b64encode(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def unpack_config(blob: str) -> Config:
    # The channel is a socketpair between this process and its own parent: trusted.
    config = pickle.loads(base64.b64decode(blob))
    if not isinstance(config, Config):
        raise TypeError("the master sent something that is not a Config")
    return config


class Channel:
    """JSON lines over a Unix stream socket; file descriptors travel with their line.

    ``post`` queues (never blocks) and keeps order; a writer task sends. Received descriptors
    are handed to the message whose ``nfds`` claims them, in order.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._out: asyncio.Queue[tuple[bytes, list[int]] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._buf = bytearray()
        self._fds: list[int] = []
        self._msgs: list[Message] = []
        self.closed = False

    def post(self, msg: Message, fds: Sequence[int] = ()) -> None:
        if self.closed:
            return
        if fds:
            msg = {**msg, "nfds": len(fds)}
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        self._out.put_nowait((line, list(fds)))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._out.get()
            if item is None:
                return
            data, fds = item
            try:
                if fds:
                    sent = await self._sendmsg(data, fds)
                    data = data[sent:]
                if data:
                    await loop.sock_sendall(self.sock, data)
            except OSError as exc:
                log.debug("channel send failed: %s", exc)
                self.closed = True
                return

    async def _sendmsg(self, data: bytes, fds: list[int]) -> int:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        while True:
            try:
                return self.sock.sendmsg([data], anc)
            except (BlockingIOError, InterruptedError):
                await _ready(self.sock, write=True)

    async def recv(self) -> tuple[Message, list[int]]:
        """The next message and the descriptors it carries; EOFError when the peer is gone."""
        while not self._msgs:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(MAX_FDS * 4)
                )
            except (BlockingIOError, InterruptedError):
                await _ready(self.sock, write=False)
                continue
            except OSError as exc:
                raise EOFError(str(exc)) from None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                raise EOFError("channel closed")
            self._buf += data
            while (end := self._buf.find(b"\n")) >= 0:
                self._msgs.append(json.loads(self._buf[:end]))
                del self._buf[: end + 1]
        msg = self._msgs.pop(0)
        n = int(msg.get("nfds", 0))
        taken, self._fds = self._fds[:n], self._fds[n:]
        return msg, taken

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._writer
        self.closed = True
        self.sock.close()


async def _ready(sock: socket.socket, *, write: bool) -> None:
    """Wait until ``sock`` can be written (or read)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def flatten(listeners: dict[str, list[socket.socket]]) -> tuple[list[list[Any]], list[int]]:
    """[[address, number of sockets], ...] and the descriptors in the same order."""
    layout: list[list[Any]] = []
    fds: list[int] = []
    for addr, socks in listeners.items():
        layout.append([addr, len(socks)])
        fds.extend(s.fileno() for s in socks)
    return layout, fds


def unflatten(layout: list[list[Any]], fds: list[int]) -> dict[str, list[socket.socket]]:
    out: dict[str, list[socket.socket]] = {}
    i = 0
    for addr, n in layout:
        out[str(addr)] = [socket.socket(fileno=fd) for fd in fds[i : i + int(n)]]
        i += int(n)
    for fd in fds[i:]:
        os.close(fd)
    return out
