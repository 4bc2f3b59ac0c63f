#!/usr/bin/env python3
"""A bare HTTP/1.1 forwarder: the floor a Python proxy pays to parse and forward, nothing else.

Two modes, for ``scripts/bench`` only:

- ``--mode h11``: asyncio streams and h11 on both sides (the core's reference: revproxy must
  stay within 10 % of this);
- ``--mode httptools``: ``asyncio.Protocol`` and httptools (llhttp) on both sides, heads
  written by hand (what the fast path can hope to approach).

Each client connection gets one keep-alive connection to the origin, opened at its first
request. No routing, header policy, timeouts, logs or limits, and no HEAD/1xx/upgrade handling:
it trusts its origin and skips every check a proxy must make, so never put it in front of
anything. Usage: ``bare_forwarder.py --mode h11|httptools --listen PORT --origin HOST:PORT
[--loop uvloop|asyncio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any, cast

READ_SIZE = 256 * 1024

# --- h11 over asyncio streams -----------------------------------------------------------------


async def _next_event(conn: Any, reader: asyncio.StreamReader) -> Any:
    import h11

    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        conn.receive_data(await reader.read(READ_SIZE))


async def serve_h11(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: tuple[str, int]
) -> None:
    import h11

    server = h11.Connection(h11.SERVER)
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while True:
            req = await _next_event(server, reader)
            if not isinstance(req, h11.Request):
                return
            if upstream is None:
                upstream = await asyncio.open_connection(*origin)
            up_reader, up_writer = upstream
            client = h11.Connection(h11.CLIENT)
            up_writer.write(
                client.send(h11.Request(method=req.method, target=req.target, headers=req.headers))
            )
            while not isinstance(ev := await _next_event(server, reader), h11.EndOfMessage):
                up_writer.write(client.send(h11.Data(data=ev.data)))
                await up_writer.drain()
            up_writer.write(client.send(h11.EndOfMessage()))
            while not isinstance(resp := await _next_event(client, up_reader), h11.Response):
                pass  # 1xx: not relayed
            writer.write(
                server.send(
                    h11.Response(
                        status_code=resp.status_code, headers=resp.headers, reason=resp.reason
                    )
                )
            )
            while not isinstance(ev := await _next_event(client, up_reader), h11.EndOfMessage):
                writer.write(server.send(h11.Data(data=ev.data)))
                await writer.drain()
            writer.write(server.send(h11.EndOfMessage()))
            await writer.drain()
            if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
                up_writer.close()
                upstream = None
            if server.our_state is not h11.DONE or server.their_state is not h11.DONE:
                return
            server.start_next_cycle()
    except (ConnectionError, h11.ProtocolError):
        return
    finally:
        writer.close()
        if upstream is not None:
            upstream[1].close()


# --- httptools over asyncio.Protocol ----------------------------------------------------------


def _head(start: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return start + b"".join([b"%s: %s\r\n" % h for h in headers]) + b"\r\n"


class _Side(asyncio.Protocol):
    """One connection: parses what arrives and hands it to ``peer`` re-serialised."""

    def __init__(self, parser_class: Any) -> None:
        self.parser = parser_class(self)
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False
        self.out: list[bytes] = []  # what to send before the transport exists

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.out.append(data)
        else:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.out:
            self.transport.writelines(self.out)
            self.out.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if name.lower() == b"transfer-encoding":
            self.chunked = True

    def on_body(self, body: bytes) -> None:
        assert self.peer is not None
        self.peer.send(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)

    def on_message_complete(self) -> None:
        assert self.peer is not None
        if self.chunked:
            self.peer.send(b"0\r\n\r\n")
        self.headers, self.chunked = [], False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Upstream(_Side):
    def __init__(self, downstream: _Side) -> None:
        import httptools

        super().__init__(httptools.HttpResponseParser)
        self.peer = downstream
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_headers_complete(self) -> None:
        assert self.peer is not None
        status = self.parser.get_status_code()
        self.peer.send(_head(b"HTTP/1.1 %d %s\r\n" % (status, self.reason), self.headers))
        self.reason = b""


class _Downstream(_Side):
    def __init__(self, origin: tuple[str, int]) -> None:
        import httptools

        super().__init__(httptools.HttpRequestParser)
        self.origin = origin
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.close()

    def on_headers_complete(self) -> None:
        if self.peer is None:
            upstream = self.peer = _Upstream(self)
            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.create_connection(lambda: upstream, *self.origin))
            task.add_done_callback(self._connected)
        method = self.parser.get_method()
        self.peer.send(_head(b"%s %s HTTP/1.1\r\n" % (method, self.url), self.headers))
        self.url = b""


async def main(opts: argparse.Namespace) -> None:
    host, port = opts.origin.rsplit(":", 1)
    origin = (host, int(port))
    if opts.mode == "h11":
        server = await asyncio.start_server(
            lambda r, w: serve_h11(r, w, origin), "127.0.0.1", opts.listen, backlog=1024
        )
    else:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Downstream(origin), "127.0.0.1", opts.listen, backlog=1024
        )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["h11", "httptools"], required=True)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--origin", required=True, help="HOST:PORT")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(main(args))
