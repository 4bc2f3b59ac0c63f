"""The reverse tunnel's own rules (docs/tunnel.md), sans-I/O: enrolment tokens, the hello an
agent connection starts with, how a stream names what it opens, enrolment messages, liveness
and the agent's back-off.

Rule of this room: values in, values or bytes out; no sockets, clock or randomness (time and
random numbers are passed in). Everything an agent or a proxy reads from the other side is
checked here, and a wrong value raises ``TunnelFormatError`` with the reason.

The wire, in one paragraph: the agent dials the proxy's tunnel listener over TLS. With ALPN
``revproxy-enroll/1`` (no client certificate yet) one JSON line goes each way: the token and a
certificate request, then the signed certificate and the tunnel CA. With ALPN
``revproxy-tunnel/1`` (the enrolled certificate) the roles reverse: the proxy is the HTTP/2
client. Its first request is the hello (``GET /.revproxy/hello``, naming the serving process
it reached, ``revproxy-worker: 1/2``); the agent answers with what it exposes and what the
connection is for (``mux``: shared by HTTP streams; ``spare``: kept for one long TCP flow;
``surplus``: not needed, closed). Every other stream is an extended CONNECT (RFC 8441) with
``:protocol = revproxy-tcp`` and ``:path = /EXPOSE``: the agent connects to that expose's
target and the stream's DATA are its bytes, both ways, until END_STREAM.

Egress over the tunnel (agent.toml ``[[forward]]``) goes the other way, and the agent is the
HTTP/2 server on its shared connections, which cannot open a stream toward the proxy. So each
forwarded connection is a connection of its own: the agent dials the tunnel listener with
ALPN ``revproxy-egress/1`` and its enrolled certificate, sends one JSON line naming the egress
section and the destination (``{"egress": "partners", "destination": "db.example.com:5432"}``),
and the proxy answers one JSON line: ``{"ok": "203.0.113.7:5432"}`` (the address it
connected to) or ``{"error": "...", "reason": "deny:loopback"}``, then closes. After ``ok``
the connection's bytes are the destination's, both ways, until each side's end. A forwarded
connection is long-lived (a database session) and one flow, so it pays one TLS handshake and
shares no window with any other flow.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass

__all__ = [
    "EGRESS_ALPN",
    "ENROLL_ALPN",
    "HELLO_PATH",
    "STREAM_PROTOCOL",
    "TUNNEL_ALPN",
    "Expose",
    "Hello",
    "Liveness",
    "Role",
    "Token",
    "TunnelFormatError",
    "backoff",
    "decode_egress_reply",
    "decode_egress_request",
    "decode_enrol_reply",
    "decode_enrol_request",
    "encode_egress_reply",
    "encode_egress_request",
    "encode_enrol_reply",
    "encode_enrol_request",
    "expose_of_path",
    "parse_destination",
    "path_of_expose",
]

TUNNEL_ALPN = "revproxy-tunnel/1"
ENROLL_ALPN = "revproxy-enroll/1"
EGRESS_ALPN = "revproxy-egress/1"
# The :protocol of a stream that carries the bytes of one connection to an expose.
STREAM_PROTOCOL = b"revproxy-tcp"
HELLO_PATH = b"/.revproxy/hello"
# A token is this prefix, then base64url of a small JSON object.
TOKEN_PREFIX = "rpt1."
# An enrolment message is one line of JSON, at most this long (a CSR is ~1 KiB).
MAX_ENROL_LINE = 64 * 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class TunnelFormatError(ValueError):
    """Bytes or a value from the other side (or a user) that break the tunnel's rules."""


def check_name(kind: str, name: str) -> str:
    """A tunnel or expose name: letters, digits, "_", "-", "." (at most 63)."""
    if not _NAME.fullmatch(name):
        raise TunnelFormatError(
            f'{kind} name "{name}" must be letters, digits, "_", "-" and "." (at most 63)'
        )
    return name


# --- enrolment tokens ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """What ``revproxy tunnel enroll`` prints: the tunnel's name, a one-time secret, and the
    SHA-256 of the tunnel listener's certificate (the agent pins it before it trusts the
    proxy's answer)."""

    name: str
    secret: str
    pin: str  # hex SHA-256 of the DER server certificate

    def encode(self) -> str:
        body = json.dumps({"n": self.name, "s": self.secret, "p": self.pin}, separators=(",", ":"))
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Token:
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise TunnelFormatError(f"not an enrolment token (they start with {TOKEN_PREFIX!r})")
        raw = text[len(TOKEN_PREFIX) :]
        try:
            body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            data = json.loads(body)
        except (binascii.Error, ValueError):
            raise TunnelFormatError("the token is damaged (copy it whole)") from None
        if not isinstance(data, dict):
            raise TunnelFormatError("the token is damaged (copy it whole)")
        name, secret, pin = data.get("n"), data.get("s"), data.get("p")
        if not (isinstance(name, str) and isinstance(secret, str) and isinstance(pin, str)):
            raise TunnelFormatError("the token is damaged (copy it whole)")
        if len(secret) < 16 or not _HEX64.fullmatch(pin):
            raise TunnelFormatError("the token is damaged (copy it whole)")
        return cls(check_name("tunnel", name), secret, pin)


# --- enrolment messages ----------------------------------------------------------------------


def _line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _object(line: bytes) -> dict[str, object]:
    if len(line) > MAX_ENROL_LINE:
        raise TunnelFormatError(f"enrolment message over {MAX_ENROL_LINE} bytes")
    try:
        data = json.loads(line)
    except ValueError:
        raise TunnelFormatError("enrolment message is not JSON") from None
    if not isinstance(data, dict):
        raise TunnelFormatError("enrolment message is not a JSON object")
    return data


def encode_enrol_request(token: Token, csr_pem: str) -> bytes:
    return _line({"name": token.name, "secret": token.secret, "csr": csr_pem})


def decode_enrol_request(line: bytes) -> tuple[str, str, str]:
    """(name, secret, CSR PEM) from the agent's line."""
    data = _object(line)
    name, secret, csr = data.get("name"), data.get("secret"), data.get("csr")
    if not (isinstance(name, str) and isinstance(secret, str) and isinstance(csr, str)):
        raise TunnelFormatError("enrolment request lacks name, secret or csr")
    return check_name("tunnel", name), secret, csr


def encode_enrol_reply(*, cert: str = "", ca: str = "", error: str = "") -> bytes:
    if error:
        return _line({"error": error})
    return _line({"cert": cert, "ca": ca})


def decode_enrol_reply(line: bytes) -> tuple[str, str]:
    """(certificate PEM, CA PEM); TunnelFormatError with the proxy's reason when refused."""
    data = _object(line)
    error = data.get("error")
    if isinstance(error, str):
        raise TunnelFormatError(f"the proxy refused: {error}")
    cert, ca = data.get("cert"), data.get("ca")
    if not (isinstance(cert, str) and isinstance(ca, str)):
        raise TunnelFormatError("enrolment reply lacks cert or ca")
    return cert, ca


# --- egress over the tunnel ------------------------------------------------------------------

# An egress request or reply is one line of JSON, at most this long.
MAX_EGRESS_LINE = 4096
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")
_V6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")


def parse_destination(text: str) -> tuple[str, int]:
    """``"db.example.com:5432"`` or ``"[2001:db8::1]:5432"`` → (host, port), the host
    lower-case and without brackets. TunnelFormatError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise TunnelFormatError(
            f'destination "{text}" is not HOST:PORT (e.g. "db.example.com:5432")'
        )
    if not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise TunnelFormatError(f'destination "{text}": the port must be 1 to 65535')
    if host.startswith("["):
        if not host.endswith("]") or not _V6.fullmatch(host[1:-1]) or ":" not in host:
            raise TunnelFormatError(f'destination "{text}": write an IPv6 address as [ADDRESS]')
        host = host[1:-1]
    elif not _HOST.fullmatch(host):
        raise TunnelFormatError(f'destination "{text}": "{host}" is not a host name or address')
    return host.lower(), int(port)


def _small(line: bytes, what: str) -> dict[str, object]:
    if len(line) > MAX_EGRESS_LINE:
        raise TunnelFormatError(f"{what} over {MAX_EGRESS_LINE} bytes")
    try:
        data = json.loads(line)
    except ValueError:
        raise TunnelFormatError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise TunnelFormatError(f"{what} is not a JSON object")
    return data


def encode_egress_request(egress: str, destination: str) -> bytes:
    return _line({"egress": egress, "destination": destination})


def decode_egress_request(line: bytes) -> tuple[str, str, int]:
    """(egress section, host, port) from the agent's line."""
    data = _small(line, "egress request")
    egress, destination = data.get("egress"), data.get("destination")
    if not (isinstance(egress, str) and isinstance(destination, str)):
        raise TunnelFormatError("egress request lacks egress or destination")
    host, port = parse_destination(destination)
    return check_name("egress", egress), host, port


def encode_egress_reply(*, resolved: str = "", error: str = "", reason: str = "") -> bytes:
    if error:
        return _line({"error": error, "reason": reason})
    return _line({"ok": resolved})


def decode_egress_reply(line: bytes) -> str:
    """The address the proxy connected to; TunnelFormatError with its reason when refused."""
    if not line.endswith(b"\n"):
        raise TunnelFormatError("the proxy closed the connection before answering")
    data = _small(line, "egress reply")
    error = data.get("error")
    if isinstance(error, str):
        raise TunnelFormatError(f"the proxy refused: {error}")
    resolved = data.get("ok")
    if not isinstance(resolved, str):
        raise TunnelFormatError("egress reply lacks ok or error")
    return resolved


# --- the hello -------------------------------------------------------------------------------


class Role(enum.Enum):
    MUX = "mux"  # shared by the HTTP streams of the pools
    SPARE = "spare"  # kept for one long TCP flow (mode = "tcp" exposes), then closed
    SURPLUS = "surplus"  # this serving process has enough of this agent's connections


@dataclass(frozen=True, slots=True)
class Expose:
    name: str
    mode: str  # "http" | "tcp"


@dataclass(frozen=True, slots=True)
class Hello:
    """The agent's answer to the hello: the connection's role, its slot among the agent's
    connections to that serving process (a reconnect to the same slot replaces the old one),
    the agent's session (one per agent process) and what it exposes."""

    role: Role
    slot: int
    session: str
    exposes: tuple[Expose, ...]

    def headers(self) -> list[tuple[bytes, bytes]]:
        listed = ",".join(f"{e.name}={e.mode}" for e in self.exposes)
        return [
            (b"revproxy-role", self.role.value.encode()),
            (b"revproxy-slot", str(self.slot).encode()),
            (b"revproxy-session", self.session.encode()),
            (b"revproxy-exposes", listed.encode()),
        ]

    @classmethod
    def parse(cls, headers: list[tuple[bytes, bytes]]) -> Hello:
        fields = {n.decode("latin-1"): v.decode("latin-1") for n, v in headers}
        try:
            role = Role(fields.get("revproxy-role", ""))
        except ValueError:
            raise TunnelFormatError("hello without a valid revproxy-role") from None
        slot_text = fields.get("revproxy-slot", "")
        if not slot_text.isdigit() or len(slot_text) > 4:
            raise TunnelFormatError("hello without a valid revproxy-slot")
        session = fields.get("revproxy-session", "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session):
            raise TunnelFormatError("hello without a valid revproxy-session")
        exposes: list[Expose] = []
        for item in filter(
            None, (s.strip() for s in fields.get("revproxy-exposes", "").split(","))
        ):
            name, _, mode = item.partition("=")
            if mode not in ("http", "tcp"):
                raise TunnelFormatError(f"expose {item!r}: mode must be http or tcp")
            exposes.append(Expose(check_name("expose", name), mode))
        return cls(role, int(slot_text), session, tuple(exposes))


def worker_header(index: int, count: int) -> tuple[bytes, bytes]:
    """The serving process a connection reached: ``revproxy-worker: INDEX/COUNT``."""
    return (b"revproxy-worker", f"{index}/{count}".encode())


def parse_worker(headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    for name, value in headers:
        if name == b"revproxy-worker":
            index, sep, count = value.partition(b"/")
            if sep and index.isdigit() and count.isdigit() and int(index) < int(count) <= 4096:
                return int(index), int(count)
    raise TunnelFormatError("hello without a valid revproxy-worker")


def path_of_expose(expose: str) -> bytes:
    return b"/" + expose.encode()


def expose_of_path(path: bytes) -> str:
    if not path.startswith(b"/"):
        raise TunnelFormatError(f"stream path {path!r} names no expose")
    try:
        return check_name("expose", path[1:].decode("ascii"))
    except UnicodeDecodeError:
        raise TunnelFormatError(f"stream path {path!r} names no expose") from None


# --- liveness --------------------------------------------------------------------------------


@dataclass(slots=True)
class Liveness:
    """One connection's pings: one every ``interval``; ``misses`` unanswered in a row and the
    connection is dead. Anything received from the peer counts as an answer."""

    interval: float
    misses: int
    last_heard: float
    unanswered: int = 0
    next_ping: float = 0.0

    def heard(self, now: float) -> None:
        self.last_heard = now
        self.unanswered = 0

    def due(self, now: float) -> bool:
        """Whether to send a ping now (counts it as unanswered until something arrives)."""
        if now < self.next_ping:
            return False
        if now - self.last_heard < self.interval:
            self.next_ping = self.last_heard + self.interval
            return False
        self.unanswered += 1
        self.next_ping = now + self.interval
        return True

    @property
    def dead(self) -> bool:
        return self.unanswered > self.misses


def backoff(attempt: int, rand: float, *, first: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): doubling from ``first`` up to
    ``cap``, each drawn in [half, whole] of that (``rand`` in [0, 1)): agents cut off together
    do not all come back in the same instant. It never gives up."""
    base: float = min(cap, first * float(2 ** min(attempt, 30)))
    return base * (0.5 + 0.5 * rand)
