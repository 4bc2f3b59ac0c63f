"""The ACME HTTP-01 side route: ``GET /.well-known/acme-challenge/<token>`` on plain listeners.

Rule of this room: a challenge request is answered before any redirect or host route, and it
can never reach a file outside the webroot. The decision is a pure function of the method and
the raw request target (`parse_challenge`); only a token that is plain base64url survives it,
so ``..``, ``%2e%2e``, ``%2F``, an empty or over-long token all end in 404 without touching
the file system. RFC 8555 section 8.1: a token "MUST NOT contain any characters outside the
base64url alphabet"; section 8.3: the client answers at
``http://<domain>/.well-known/acme-challenge/<token>`` with the key authorization.

Two ways to answer, chosen by ``[acme]``:

- ``webroot`` (the default): the file certbot ``--webroot`` wrote to
  ``<webroot>/.well-known/acme-challenge/<token>``, read with a size bound, never through a
  symlink, and only if it is a regular file.
- ``forward``: a one-shot HTTP/1.1 request to certbot ``--standalone`` on that address while
  it runs; its status and body are relayed (bounded), 502 when nothing listens there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from revproxy.config.model import Acme
from revproxy.errors import RevproxyError
from revproxy.proto.events import DataReceived, MessageEnded, ResponseReceived
from revproxy.proto.http1.exact import H1Client

log = logging.getLogger("revproxy.acme")

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
# Where certbot --webroot writes a token, relative to the webroot.
CHALLENGE_DIR = Path(".well-known") / "acme-challenge"
# Tokens are 43 characters at Let's Encrypt (256 bits, base64url); allow generous headroom.
MAX_TOKEN_LENGTH = 128
# A key authorization is "<token>.<thumbprint>" (~90 bytes); anything much larger is not one.
MAX_ANSWER_SIZE = 4096
# How long certbot --standalone has to connect and answer a forwarded challenge.
FORWARD_TIMEOUT = 5.0
# Largest response head accepted from certbot --standalone.
FORWARD_MAX_HEAD = 8192

_TOKEN = re.compile(rb"[A-Za-z0-9_-]+")
_CONTENT_TYPE = (b"content-type", b"application/octet-stream")


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A request for the challenge path. ``token`` is None when it names no valid token:
    such a request is answered 404 without looking anywhere."""

    token: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeAnswer:
    status: int
    body: bytes | None = None  # None: the generated error page for `status`
    headers: tuple[tuple[bytes, bytes], ...] = ()


NOT_FOUND = ChallengeAnswer(status=404)


def parse_challenge(method: bytes, target: bytes) -> Challenge | None:
    """Whether (`method`, raw `target`) asks for an ACME challenge, and for which token.

    None: not a challenge request (route it as usual). Only GET and HEAD are challenges. The
    target is compared undecoded: percent-encoding is never a valid token character, so an
    encoded slash or dot simply makes the token invalid.
    """
    if method not in (b"GET", b"HEAD"):
        return None
    path = target.split(b"?", 1)[0]
    if not path.startswith(CHALLENGE_PREFIX):
        return None
    token = path[len(CHALLENGE_PREFIX) :]
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        return Challenge(token=None)
    return Challenge(token=token.decode("ascii"))


def token_path(webroot: Path, token: str) -> Path:
    """Where certbot --webroot writes `token` (which must already be a valid token)."""
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(token.encode("ascii", "replace")):
        raise ValueError(f"not an ACME token: {token!r}")
    return webroot / CHALLENGE_DIR / token


def read_token_file(webroot: Path, token: str) -> bytes | None:
    """The key authorization certbot wrote for `token`, or None (missing, odd or too big)."""
    path = token_path(webroot, token)
    try:
        # O_NOFOLLOW: a symlink planted in the challenge folder cannot lead outside it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            log.warning("acme challenge %s is a symlink; not served", path)
        else:
            log.warning("acme challenge %s cannot be read: %s", path, exc.strerror or exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("acme challenge %s is not a regular file; not served", path)
            return None
        if st.st_size > MAX_ANSWER_SIZE:
            log.warning("acme challenge %s is %d bytes; not served", path, st.st_size)
            return None
        data = os.read(fd, MAX_ANSWER_SIZE + 1)
    except OSError as exc:
        log.warning("acme challenge %s cannot be read: %s", path, exc.strerror or exc)
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_ANSWER_SIZE:
        return None
    return data


def split_forward(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8081"`` / ``"[::1]:8081"`` → (host, port); ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def forward_challenge(address: str, token: str, host: str) -> ChallengeAnswer:
    """Ask certbot --standalone on `address` for `token`; relay its status and body."""
    target = CHALLENGE_PREFIX + token.encode("ascii")
    try:
        f_host, f_port = split_forward(address)
    except ValueError as exc:
        log.error("acme forward: %s", exc)
        return ChallengeAnswer(status=502)
    client = H1Client(max_header_size=FORWARD_MAX_HEAD)
    writer: asyncio.StreamWriter | None = None
    status = 0
    body = bytearray()
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT):
            reader, writer = await asyncio.open_connection(f_host, f_port)
            authority = (host or f_host).encode("ascii", "replace")
            headers = [(b"host", authority), (b"connection", b"close")]
            writer.write(client.send_request(b"GET", target, headers) + client.send_end())
            await writer.drain()
            while True:
                data = await reader.read(65536)
                events = client.receive_data(data)
                for ev in events:
                    if isinstance(ev, ResponseReceived):
                        status = ev.status
                    elif isinstance(ev, DataReceived):
                        body += ev.data
                        if len(body) > MAX_ANSWER_SIZE:
                            raise RevproxyError("answer larger than a key authorization")
                    elif isinstance(ev, MessageEnded):
                        return ChallengeAnswer(
                            status=status, body=bytes(body), headers=(_CONTENT_TYPE,)
                        )
                if not data:
                    raise RevproxyError("closed before the end of the answer")
    except (OSError, TimeoutError, RevproxyError) as failure:
        reason = str(failure) or type(failure).__name__
        log.warning(
            "acme forward to %s for token %s failed (is certbot --standalone running?): %s",
            address,
            token,
            reason,
        )
        return ChallengeAnswer(status=502)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def challenge_answer(
    acme: Acme, method: bytes, target: bytes, host: str
) -> ChallengeAnswer | None:
    """The answer to an ACME challenge request, or None when the request is not one."""
    challenge = parse_challenge(method, target)
    if challenge is None:
        return None
    token = challenge.token
    if token is None:
        return NOT_FOUND
    if acme.forward:
        return await forward_challenge(acme.forward, token, host)
    if acme.webroot is None:
        return NOT_FOUND
    data = await asyncio.to_thread(read_token_file, acme.webroot, token)
    if data is None:
        log.info("acme challenge for token %s: no file in %s", token, acme.webroot)
        return NOT_FOUND
    return ChallengeAnswer(status=200, body=data, headers=(_CONTENT_TYPE,))
