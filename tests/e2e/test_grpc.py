"""gRPC through the proxy, end to end: grpcio client and server (Python, no protoc), the client
over TLS to the proxy (ALPN h2), the server behind an h2c pool and behind an h2 pool over
verified TLS.

All four RPC kinds; status, message and trailing metadata reaching the client; deadlines
(``grpc-timeout``) honoured by the proxy itself; an unavailable origin or an HTTP/1.1 pool
answered with a gRPC status the client library understands (UNAVAILABLE), not an HTML page.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from h2_peers import RawH2, get
from harness import Proxy, closed_port, free_port, make_cert, toml_path

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# How long /svc/Slow sits before answering (longer than every deadline in the tests).
SLOW = 5.0
# Bound of every call a test makes (the library's own deadline).
CALL_TIMEOUT = 10.0
RELEASE = threading.Event()


def _ident(b: bytes) -> bytes:
    return b


def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    ctx.set_trailing_metadata((("x-trailer", "t1"), ("x-bin-bin", b"\x00\x01")))
    return b"echo:" + req


def server_stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(req or b"5")):
        yield b"%d" % i


def client_stream(it: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
    return b"|".join(it)


def bidi(it: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
    for m in it:
        yield m.upper()


def slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    RELEASE.wait(SLOW)
    return req


def fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: é")
    raise AssertionError("unreachable")


def big(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    return req * 4


def start_server(tls: tuple[Path, Path] | None = None) -> tuple[grpc.Server, int]:
    handler = grpc.method_handlers_generic_handler(
        "svc",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
            "Count": grpc.unary_stream_rpc_method_handler(server_stream, _ident, _ident),
            "Join": grpc.stream_unary_rpc_method_handler(client_stream, _ident, _ident),
            "Shout": grpc.stream_stream_rpc_method_handler(bidi, _ident, _ident),
            "Slow": grpc.unary_unary_rpc_method_handler(slow, _ident, _ident),
            "Fail": grpc.unary_unary_rpc_method_handler(fail, _ident, _ident),
            "Big": grpc.unary_unary_rpc_method_handler(big, _ident, _ident),
        },
    )
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(16), options=options)
    server.add_generic_rpc_handlers((handler,))
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = grpc.ssl_server_credentials([(tls[1].read_bytes(), tls[0].read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


@dataclass
class Site:
    port: int
    cert: Path
    proxy: Proxy

    def channel(self, host: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(self.cert.read_bytes())
        options = [
            ("grpc.ssl_target_name_override", host),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=options)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("grpc")
    names = ["grpc.test", "secure.test", "down.test", "h1.test"]
    cert, key = make_cert(d, "site", names)
    origin_cert, origin_key = make_cert(d, "origin", ["origin.test"])
    plain, plain_port = start_server()
    secure, secure_port = start_server((origin_cert, origin_key))
    port = free_port()
    conf = f"""
[global]
access_log = "stdout"
[[listener]]
name = "tls"
bind = "127.0.0.1:{port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
[[route]]
host = ["grpc.test"]
pool = "grpc"
[[route]]
host = ["secure.test"]
pool = "secure"
[[route]]
host = ["down.test"]
pool = "down"
[[route]]
host = ["h1.test"]
pool = "h1"
[pool.grpc]
servers = ["127.0.0.1:{plain_port}"]
protocol = "h2c"
[pool.secure]
servers = ["127.0.0.1:{secure_port}"]
protocol = "h2"
tls = {{ sni = "origin.test", ca = {toml_path(origin_cert)} }}
[pool.down]
servers = ["127.0.0.1:{closed_port()}"]
protocol = "h2c"
[pool.h1]
servers = ["127.0.0.1:{closed_port()}"]
"""
    try:
        with Proxy(d, conf, ports=[port]) as proxy:
            yield Site(port, cert, proxy)
    finally:
        RELEASE.set()
        plain.stop(0)
        secure.stop(0)


@pytest.fixture(params=["grpc.test", "secure.test"])
def channel(site: Site, request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    ch = site.channel(request.param)
    try:
        yield ch
    finally:
        ch.close()


def test_unary_with_trailing_metadata(channel: grpc.Channel) -> None:
    reply, call = channel.unary_unary("/svc/Echo").with_call(b"hi", timeout=CALL_TIMEOUT)
    assert reply == b"echo:hi"
    trailers = dict(call.trailing_metadata() or ())
    assert trailers["x-trailer"] == "t1"
    assert trailers["x-bin-bin"] == b"\x00\x01"
    assert call.code() is grpc.StatusCode.OK


def test_server_streaming(channel: grpc.Channel) -> None:
    got = list(channel.unary_stream("/svc/Count")(b"50", timeout=CALL_TIMEOUT))
    assert got == [b"%d" % i for i in range(50)]


def test_client_streaming(channel: grpc.Channel) -> None:
    parts = (b"part%d" % i for i in range(100))
    reply = channel.stream_unary("/svc/Join")(parts, timeout=CALL_TIMEOUT)
    assert reply == b"|".join(b"part%d" % i for i in range(100))


def test_bidi_streaming_interleaves(channel: grpc.Channel) -> None:
    sent: list[bytes] = []
    lock = threading.Condition()

    def messages() -> Iterator[bytes]:
        for i in range(20):
            with lock:
                sent.append(b"m%d" % i)
            yield b"m%d" % i

    replies = channel.stream_stream("/svc/Shout")(messages(), timeout=CALL_TIMEOUT)
    assert list(replies) == [b"M%d" % i for i in range(20)]


def test_large_messages_cross_flow_control(channel: grpc.Channel) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, answered 8 MiB
    reply = channel.unary_unary("/svc/Big")(payload, timeout=CALL_TIMEOUT)
    assert reply == payload * 4


def test_status_and_message_reach_the_client(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/svc/Fail")(b"", timeout=CALL_TIMEOUT)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such thing: é"


def test_client_deadline(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/svc/Slow")(b"z", timeout=0.5)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_proxy_itself_honours_grpc_timeout(site: Site) -> None:
    """A client that sets grpc-timeout but does not enforce it gets DEADLINE_EXCEEDED from the
    proxy, Trailers-Only, when the time is up."""
    ctx = ssl.create_default_context(cafile=str(site.cert))
    with RawH2(site.port, tls=ctx, server_hostname="grpc.test") as c:
        head = [
            *get("grpc.test", "/svc/Slow", "POST"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"300m"),
        ]
        started = time.monotonic()
        sid = c.request(head, b"\x00\x00\x00\x00\x01z")
        status, headers, body = c.response(sid)
        assert time.monotonic() - started < SLOW
        assert status == 200 and body == b""
        assert headers[b"grpc-status"] == b"4"


def test_unavailable_origin_is_grpc_unavailable(site: Site) -> None:
    ch = site.channel("down.test")
    try:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/svc/Echo")(b"hi", timeout=CALL_TIMEOUT)
    finally:
        ch.close()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "502" in (err.value.details() or "")


def test_http11_pool_is_grpc_unavailable(site: Site) -> None:
    ch = site.channel("h1.test")
    try:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/svc/Echo")(b"hi", timeout=CALL_TIMEOUT)
    finally:
        ch.close()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "HTTP/1.1" in (err.value.details() or "")


def test_many_concurrent_calls_share_one_connection(site: Site) -> None:
    ch = site.channel("grpc.test")
    try:
        echo = ch.unary_unary("/svc/Echo")
        with futures.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda i: echo(b"%d" % i, timeout=CALL_TIMEOUT), range(200)))
    finally:
        ch.close()
    assert replies == [b"echo:%d" % i for i in range(200)]
