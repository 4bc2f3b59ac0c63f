"""The embedded default: a demo origin on loopback and the config that fronts it.

Rule of this room: everything `revproxy run --demo` needs, generated on first run under the
state directory (a self-signed certificate for localhost), nothing read from /etc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import h11

from revproxy.certs.files import generate_self_signed, load_cert_pair

DEMO_HTTPS_PORT = 8443
DEMO_HTTP_PORT = 8080


async def _serve_demo_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Request):
                seen = {n.decode(): v.decode("latin-1") for n, v in ev.headers}
                body = (
                    "Hello from the demo origin, reached through revproxy.\n"
                    f"You asked for {ev.target.decode('latin-1')} on {seen.get('host', '?')}.\n"
                    f"X-Forwarded-For: {seen.get('x-forwarded-for', '-')}\n"
                    f"X-Forwarded-Proto: {seen.get('x-forwarded-proto', '-')}\n"
                ).encode()
                headers = [
                    ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", str(len(body))),
                    ("server", "demo-origin/1.0"),
                ]
                writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=body)) or b"")
                continue
            if isinstance(ev, h11.EndOfMessage):
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            return
    except (h11.ProtocolError, ConnectionError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start_demo_origin() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(_serve_demo_origin, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    return server, port


def demo_config(state_dir: Path, origin_port: int) -> list[tuple[str, str]]:
    """The embedded configuration, as (file name, TOML) pairs; makes the certificate if needed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    cert, key = state_dir / "demo-cert.pem", state_dir / "demo-key.pem"
    try:
        load_cert_pair(cert, key)
    except Exception:
        generate_self_signed(["localhost", "127.0.0.1", "::1"], cert, key)
    text = f"""
[global]
workers = 1
access_log = "stdout"

[[listener]]
name = "https"
bind = ["127.0.0.1:{DEMO_HTTPS_PORT}"]
tls = {{ certs = [{{ cert = {json.dumps(str(cert))}, key = {json.dumps(str(key))} }}] }}

[[listener]]
name = "http"
bind = ["127.0.0.1:{DEMO_HTTP_PORT}"]
redirect_https = true

[[route]]
host = "localhost"
pool = "demo"

[pool.demo]
servers = ["127.0.0.1:{origin_port}"]
"""
    return [("<embedded demo>", text)]
