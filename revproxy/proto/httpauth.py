"""HTTP authentication, sans-I/O: Basic (RFC 7617) and Digest (RFC 7616) credentials read from
an ``Authorization`` or ``Proxy-Authorization`` value, the challenges that ask for them, and
the Digest arithmetic.

Rule of this room: parse, compute and compare; never look a user up and never read a clock —
the policy layer passes the stored secret (a bcrypt or argon2 hash for Basic, the HA1 of an
htdigest line for Digest) and the time in. Every parse of a client's value is total: a
malformed one is ``None``, and the answer is a fresh challenge (401 or 407), never an error.

Digest nonces are stateless: ``nonce = base64(issued || HMAC-SHA-256(key, realm || issued))``,
so any worker (and, with a shared key, any instance) can check that a nonce is ours and how old
it is without remembering it; the use count (``nc``) is what a store must remember per nonce
(RFC 7616 §3.4: a server "SHOULD" reject a reused nonce-count). Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

# RFC 7616 §3.3: the algorithms a server may offer; SHA-256 first, MD5 for old clients.
ALGORITHMS: Final = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}
_ISSUED = struct.Struct(">d")  # the nonce's issue time, as sent
_MAC_SIZE: Final = 16  # bytes of the HMAC kept in a nonce


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The fields of a Digest ``Authorization`` the check needs (RFC 7616 §3.4)."""

    user: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str  # "MD5" or "SHA-256" (RFC 7616 names)
    qop: str  # "auth" (auth-int is not offered)
    nc: int  # nonce count
    cnonce: str
    opaque: str


def parse_basic(value: bytes) -> BasicCredentials | None:
    """``Basic dXNlcjpwYXNz`` → (user, password); None when it is not well-formed Basic."""
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return BasicCredentials(user, password)


def basic_challenge(realm: str) -> bytes:
    """RFC 7617 §2: ``Basic realm="…", charset="UTF-8"``."""
    return b'Basic realm="' + _quoted(realm) + b'", charset="UTF-8"'


def parse_digest(value: bytes) -> DigestCredentials | None:
    """A Digest ``Authorization`` value's fields; None when one that the check needs is
    missing or malformed (RFC 7616 §3.4: username, realm, nonce, uri, response, qop, nc,
    cnonce)."""
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"digest":
        return None
    try:
        fields = _auth_params(rest.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    needed = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
    if any(not fields.get(k) for k in needed):
        return None
    algorithm = fields.get("algorithm", "MD5").upper()
    nc = fields["nc"]
    if algorithm not in ALGORITHMS or len(nc) != 8 or fields["qop"] != "auth":
        return None
    try:
        count = int(nc, 16)
    except ValueError:
        return None
    return DigestCredentials(
        user=fields["username"],
        realm=fields["realm"],
        nonce=fields["nonce"],
        uri=fields["uri"],
        response=fields["response"].lower(),
        algorithm=algorithm,
        qop="auth",
        nc=count,
        cnonce=fields["cnonce"],
        opaque=fields.get("opaque", ""),
    )


def _auth_params(text: str) -> dict[str, str]:
    """RFC 9110 §11.2 auth-params: ``name=token`` or ``name="quoted string"``, comma-separated."""
    fields: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise ValueError("auth-param without a value")
        name = text[i:eq].strip().lower()
        if not name or name in fields:
            raise ValueError("empty or repeated auth-param")
        i = eq + 1
        if i < n and text[i] == '"':
            i += 1
            value = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
            if i >= n:
                raise ValueError("unterminated quoted string")
            i += 1
            fields[name] = "".join(value)
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            fields[name] = text[i:end].strip()
            i = end
    return fields


def ha1(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """What an htdigest line stores: H(user:realm:password)."""
    return _h(algorithm, f"{user}:{realm}:{password}")


def expected_response(creds: DigestCredentials, stored_ha1: str, method: str) -> str:
    """RFC 7616 §3.4.1 with qop=auth: KD(HA1, nonce:nc:cnonce:qop:H(method:uri))."""
    ha2 = _h(creds.algorithm, f"{method}:{creds.uri}")
    nc = f"{creds.nc:08x}"
    return _h(creds.algorithm, f"{stored_ha1}:{creds.nonce}:{nc}:{creds.cnonce}:auth:{ha2}")


def response_matches(creds: DigestCredentials, stored_ha1: str, method: str) -> bool:
    """Whether the client proved it knows the password behind ``stored_ha1`` (constant time)."""
    return hmac.compare_digest(expected_response(creds, stored_ha1, method), creds.response)


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


# --- nonces --------------------------------------------------------------------------------


def make_nonce(key: bytes, realm: str, now: float) -> str:
    """A nonce this server can verify later without remembering it (see the module's rule)."""
    issued = _ISSUED.pack(now)
    mac = hmac.new(key, realm.encode("utf-8") + issued, hashlib.sha256).digest()[:_MAC_SIZE]
    return base64.urlsafe_b64encode(issued + mac).decode("ascii").rstrip("=")


def nonce_age(key: bytes, realm: str, nonce: str, now: float) -> float | None:
    """Seconds since ``nonce`` was made, or None when it is not one of ours for ``realm``."""
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _ISSUED.size + _MAC_SIZE:
        return None
    issued, mac = raw[: _ISSUED.size], raw[_ISSUED.size :]
    good = hmac.new(key, realm.encode("utf-8") + issued, hashlib.sha256).digest()[:_MAC_SIZE]
    if not hmac.compare_digest(mac, good):
        return None
    age = now - _ISSUED.unpack(issued)[0]
    return age if age >= 0 else None


def digest_challenge(
    realm: str, nonce: str, *, algorithm: str = "SHA-256", stale: bool = False, opaque: str = ""
) -> bytes:
    """RFC 7616 §3.3: one ``WWW-Authenticate`` (or ``Proxy-Authenticate``) value per algorithm."""
    parts = [
        b'Digest realm="' + _quoted(realm) + b'"',
        b'qop="auth"',
        b"algorithm=" + algorithm.encode("ascii"),
        b'nonce="' + nonce.encode("ascii") + b'"',
    ]
    if opaque:
        parts.append(b'opaque="' + _quoted(opaque) + b'"')
    if stale:
        parts.append(b"stale=true")
    return b", ".join(parts)


def _quoted(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
