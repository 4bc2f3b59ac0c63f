"""ACME side route: which requests are challenges, which files answer them, and how the plain
listener puts the challenge before redirects and host routes.

The decision is table-tested as a pure function; file serving runs against a real temporary
webroot (symlinks, folders, oversized files); the route runs in a real revproxy `Instance` on
loopback, spoken to with raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from revproxy.certs.acme import (
    MAX_ANSWER_SIZE,
    MAX_TOKEN_LENGTH,
    Challenge,
    challenge_answer,
    parse_challenge,
    read_token_file,
    split_forward,
    token_path,
)
from revproxy.config.listener import answers_acme
from revproxy.config.model import Acme, Bind, Config, Global, Listener, ListenerTLS, Respond, Route
from revproxy.runtime.supervisor import Instance

TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
KEY_AUTH = f"{TOKEN}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI".encode()
P = "/.well-known/acme-challenge/"


# --- the decision -------------------------------------------------------------------------

CASES: list[tuple[str, str, Challenge | None]] = [
    # (method, target, expected)
    ("GET", P + TOKEN, Challenge(token=TOKEN)),
    ("HEAD", P + TOKEN, Challenge(token=TOKEN)),
    ("GET", P + "a", Challenge(token="a")),
    ("GET", P + "A-z_0-9", Challenge(token="A-z_0-9")),
    ("GET", P + TOKEN + "?x=1", Challenge(token=TOKEN)),  # the query is not part of the path
    ("GET", P + "x" * MAX_TOKEN_LENGTH, Challenge(token="x" * MAX_TOKEN_LENGTH)),
    # under the prefix but not a token: 404 without looking anywhere
    ("GET", P, Challenge(token=None)),  # empty
    ("GET", P + "?x", Challenge(token=None)),
    ("GET", P + "x" * (MAX_TOKEN_LENGTH + 1), Challenge(token=None)),  # too long
    ("GET", P + "..", Challenge(token=None)),
    ("GET", P + "../../etc/passwd", Challenge(token=None)),
    ("GET", P + "%2e%2e", Challenge(token=None)),
    ("GET", P + "%2E%2E%2Fetc%2Fpasswd", Challenge(token=None)),
    ("GET", P + "a%2Fb", Challenge(token=None)),
    ("GET", P + "a%2fb", Challenge(token=None)),
    ("GET", P + "a/b", Challenge(token=None)),
    ("GET", P + TOKEN + "/", Challenge(token=None)),
    ("GET", P + ".hidden", Challenge(token=None)),
    ("GET", P + "a.b", Challenge(token=None)),
    ("GET", P + "a=", Challenge(token=None)),  # base64url here is unpadded
    ("GET", P + "a+b", Challenge(token=None)),  # "+" is base64, not base64url
    ("GET", P + "a%00", Challenge(token=None)),
    ("GET", P + "a\\b", Challenge(token=None)),
    ("GET", P + "é", Challenge(token=None)),
    ("GET", P + "a;b", Challenge(token=None)),
    # not challenges: routed as usual
    ("POST", P + TOKEN, None),
    ("PUT", P + TOKEN, None),
    ("GET", "/", None),
    ("GET", "/.well-known/acme-challenge", None),  # no slash after the prefix
    ("GET", "/.well-known/acme-challengeX/" + TOKEN, None),
    ("GET", "/.well-known/ACME-CHALLENGE/" + TOKEN, None),  # paths are case-sensitive
    ("GET", "/.well-known%2Facme-challenge/" + TOKEN, None),
    ("GET", "//.well-known/acme-challenge/" + TOKEN, None),
    ("GET", "/x/.well-known/acme-challenge/" + TOKEN, None),
    ("GET", "*", None),
]


@pytest.mark.parametrize(("method", "target", "expected"), CASES)
def test_parse_challenge(method: str, target: str, expected: Challenge | None) -> None:
    assert parse_challenge(method.encode(), target.encode("utf-8")) == expected


def test_token_path_refuses_what_parse_refuses() -> None:
    root = Path("/srv/acme")
    assert token_path(root, TOKEN) == root / ".well-known" / "acme-challenge" / TOKEN
    for bad in ("", "..", "a/b", "x" * (MAX_TOKEN_LENGTH + 1), "é"):
        with pytest.raises(ValueError):
            token_path(root, bad)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("[::1]:8081", ("::1", 8081)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_split_forward(address: str, expected: tuple[str, int]) -> None:
    assert split_forward(address) == expected


@pytest.mark.parametrize("address", ["", "8081", ":8081", "host:", "host:0", "host:65536", "h:x"])
def test_split_forward_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        split_forward(address)


# --- the webroot --------------------------------------------------------------------------


def _write_token(webroot: Path, token: str, data: bytes) -> Path:
    folder = webroot / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / token
    path.write_bytes(data)
    return path


def test_reads_the_token_file(tmp_path: Path) -> None:
    _write_token(tmp_path, TOKEN, KEY_AUTH)
    assert read_token_file(tmp_path, TOKEN) == KEY_AUTH


def test_missing_token_or_webroot(tmp_path: Path) -> None:
    assert read_token_file(tmp_path, TOKEN) is None
    assert read_token_file(tmp_path / "nowhere", TOKEN) is None


def test_symlinked_token_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"private key")
    folder = tmp_path / "root" / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True)
    (folder / TOKEN).symlink_to(secret)
    assert read_token_file(tmp_path / "root", TOKEN) is None


def test_folder_and_oversized_token_are_not_served(tmp_path: Path) -> None:
    folder = tmp_path / ".well-known" / "acme-challenge"
    (folder / "adir").mkdir(parents=True)
    assert read_token_file(tmp_path, "adir") is None
    _write_token(tmp_path, "big", b"x" * (MAX_ANSWER_SIZE + 1))
    assert read_token_file(tmp_path, "big") is None
    _write_token(tmp_path, "fits", b"x" * MAX_ANSWER_SIZE)
    assert read_token_file(tmp_path, "fits") == b"x" * MAX_ANSWER_SIZE


def test_fifo_does_not_block(tmp_path: Path) -> None:
    folder = tmp_path / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "fifo")
    assert read_token_file(tmp_path, "fifo") is None


def test_challenge_answer_webroot(tmp_path: Path) -> None:
    _write_token(tmp_path, TOKEN, KEY_AUTH)
    acme = Acme(webroot=tmp_path)

    async def main() -> None:
        ok = await challenge_answer(acme, b"GET", (P + TOKEN).encode(), "example.com")
        assert ok is not None and ok.status == 200 and ok.body == KEY_AUTH
        missing = await challenge_answer(acme, b"GET", (P + "other").encode(), "example.com")
        assert missing is not None and missing.status == 404
        bad = await challenge_answer(acme, b"GET", (P + "..%2F").encode(), "example.com")
        assert bad is not None and bad.status == 404
        assert await challenge_answer(acme, b"GET", b"/index.html", "example.com") is None

    asyncio.run(main())


# --- forwarding to certbot --standalone ---------------------------------------------------


@contextlib.asynccontextmanager
async def fake_standalone(answers: dict[str, bytes]) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 server like certbot --standalone: known tokens 200, others 404."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        target = head.split(b" ")[1].decode()
        body = answers.get(target.rsplit("/", 1)[-1])
        status = b"200 OK" if body is not None else b"404 Not Found"
        body = body if body is not None else b"nope"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body
        )  # fmt: skip
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


def test_forward_relays_status_and_body() -> None:
    async def main() -> None:
        async with fake_standalone({TOKEN: KEY_AUTH}) as (address, heads):
            acme = Acme(webroot=None, forward=address)
            ok = await challenge_answer(acme, b"GET", (P + TOKEN).encode(), "example.com")
            assert ok is not None and (ok.status, ok.body) == (200, KEY_AUTH)
            assert heads[0].startswith(f"GET {P}{TOKEN} HTTP/1.1\r\n".encode())
            assert b"host: example.com" in heads[0].lower()
            missing = await challenge_answer(acme, b"GET", (P + "unknown").encode(), "e.com")
            assert missing is not None and missing.status == 404
            bad = await challenge_answer(acme, b"GET", (P + "a%2Fb").encode(), "e.com")
            assert bad is not None and bad.status == 404
            assert len(heads) == 2  # the invalid token never left revproxy

    asyncio.run(main())


def test_forward_to_nothing_is_502() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def main() -> None:
            acme = Acme(forward=f"127.0.0.1:{port}")
            answer = await challenge_answer(acme, b"GET", (P + TOKEN).encode(), "example.com")
            assert answer is not None and answer.status == 502

        asyncio.run(main())


# --- which listeners answer ---------------------------------------------------------------


def _listener(**kw: object) -> Listener:
    defaults: dict[str, object] = {"name": "l", "bind": (Bind(host="", port=80),)}
    defaults.update(kw)
    return Listener(**defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        (_listener(), True),  # plain, port 80: on by default
        (_listener(bind=(Bind(host="127.0.0.1", port=8080),)), False),
        (_listener(bind=(Bind(host="", port=8080), Bind(host="", port=80))), True),
        (_listener(acme=False), False),
        (_listener(bind=(Bind(host="", port=8080),), acme=True), True),
        (_listener(tls=ListenerTLS()), False),  # TLS on port 80 is not HTTP-01
        (_listener(mode="tcp"), False),
        (_listener(mode="tcp", acme=True), False),
    ],
)
def test_answers_acme(listener: Listener, expected: bool) -> None:
    assert answers_acme(listener) is expected


# --- through a running instance -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _get(port: int, target: str, method: str = "GET", host: str = "example.com") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode()


def test_listener_answers_challenge_before_redirect_and_routes(tmp_path: Path) -> None:
    webroot = tmp_path / "acme"
    _write_token(webroot, TOKEN, KEY_AUTH)
    outside = tmp_path / "outside"
    outside.write_bytes(b"must never be served")
    binds = [Bind(host="127.0.0.1", port=_free_port()) for _ in range(3)]
    catch_all = Route(path="/", respond=Respond(status=200, body="routed\n"), index=0)
    config = Config(
        global_=Global(access_log="off"),
        listeners=(
            Listener(name="redirecting", bind=(binds[0],), redirect_https=True, redirect_port=8443,
                     acme=True),
            Listener(name="routing", bind=(binds[1],), acme=True),
            Listener(name="no-acme", bind=(binds[2],)),  # not port 80: off by default
        ),
        routes=(catch_all,),
        acme=Acme(webroot=webroot),
    )  # fmt: skip
    results: dict[str, tuple[int, dict[str, str], bytes]] = {}

    async def main() -> None:
        instance = Instance(lambda: config)
        await instance.start()
        try:
            redirecting, routing, no_acme = (b.port for b in binds)

            def run() -> None:
                results["ok"] = _exchange(redirecting, _get(redirecting, P + TOKEN))
                results["head"] = _exchange(redirecting, _get(redirecting, P + TOKEN, "HEAD"))
                results["missing"] = _exchange(redirecting, _get(redirecting, P + "nope"))
                results["dots"] = _exchange(redirecting, _get(redirecting, P + "..%2Foutside"))
                results["post"] = _exchange(redirecting, _get(redirecting, P + TOKEN, "POST"))
                results["other"] = _exchange(redirecting, _get(redirecting, "/page?q=1"))
                results["routed-ok"] = _exchange(routing, _get(routing, P + TOKEN))
                results["routed-missing"] = _exchange(routing, _get(routing, P + "nope"))
                results["routed-other"] = _exchange(routing, _get(routing, "/page"))
                results["off"] = _exchange(no_acme, _get(no_acme, P + TOKEN))

            await asyncio.to_thread(run)
        finally:
            instance.request_stop()
            await instance.shutdown()

    asyncio.run(main())

    status, headers, body = results["ok"]
    assert (status, body) == (200, KEY_AUTH)
    assert headers["content-type"] == "application/octet-stream"
    status, headers, body = results["head"]
    assert (status, body, headers["content-length"]) == (200, b"", str(len(KEY_AUTH)))
    assert results["missing"][0] == 404
    status, _, body = results["dots"]
    # An encoded slash never reaches the webroot: refused before routing (proto/target.py).
    assert status == 400 and b"never" not in body
    status, headers, _ = results["post"]
    assert status == 308  # not a challenge: redirected like any other request
    status, headers, _ = results["other"]
    assert (status, headers["location"]) == (308, "https://example.com:8443/page?q=1")
    assert results["routed-ok"][::2] == (200, KEY_AUTH)
    assert results["routed-missing"][0] == 404
    assert results["routed-other"][2] == b"routed\n"
    assert results["off"][2] == b"routed\n"
