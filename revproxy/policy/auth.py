"""Users and authentication on a route: Basic (RFC 7617) or Digest (RFC 7616).

Rule of this room: a request either proves a user of the route's ``[users.NAME]`` or is
answered 401 with a fresh challenge (407 and ``Proxy-Authenticate`` when the forward proxy asks,
later); the answer never says whether the user exists. Password hashes are checked off the event
loop (bcrypt and argon2 hash in C with the GIL released) and a verified password is remembered
for the generation, so a keep-alive client does not pay a bcrypt per request; a wrong one is
not remembered (it costs the attacker the same hash every time). Digest nonces are stateless
HMACs over their issue time (proto/httpauth.py) keyed by a secret all workers share, so any
worker checks any nonce; the use count of a nonce is remembered per worker (``nonce_max_uses``
then holds per worker, within ``nonce_ttl``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import argon2
import bcrypt

from revproxy.config.model import Auth, Users
from revproxy.proto import httpauth

# The reason a refusal is logged and counted under (access log ``refused=``, metrics).
AUTH = "auth"
# Verified (user, password) pairs remembered per route and generation, and Digest nonces whose
# use counts are remembered: bounded, the oldest forgotten first.
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    user: str | None  # who the request proved to be; None: refused
    challenge: bytes  # the WWW-Authenticate value to answer with when refused


class Authenticator:
    """One route's ``auth``: the users it accepts and how they prove it."""

    def __init__(self, auth: Auth, users: Users, nonce_key: bytes) -> None:
        self.auth = auth
        self.users = users
        self.kind = users.kind
        self._secrets = {
            (e.user, e.realm): e.secret
            for e in users.entries
            if users.kind == "htpasswd" or e.realm == auth.realm
        }
        self._nonce_key = nonce_key
        # Authorization values that proved a user: the request of a keep-alive client that
        # sends the same value again costs one lookup. (The values are what every request of
        # those clients carries through this process anyway; they live for the generation.)
        self._known: dict[bytes, str] = {}
        self._counts: OrderedDict[str, int] = OrderedDict()  # nonce -> highest nc seen
        # htdigest files store MD5 HA1s (Apache, Squid); SHA-256 ones are 64 hex digits.
        self.algorithm = "SHA-256" if any(len(s) == 64 for s in self._secrets.values()) else "MD5"

    def known(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Basic: the user an ``Authorization`` value already proved, without a coroutine or a
        hash check (None: ``check`` must decide)."""
        if self.auth.scheme != "basic" or not self._known:
            return None
        for name, value in headers:
            if name == b"authorization":
                return self._known.get(value)
        return None

    async def check(
        self, headers: Iterable[tuple[bytes, bytes]], method: bytes, target: bytes
    ) -> Verdict:
        """The user ``headers`` prove (their ``Authorization``), or the challenge to send."""
        value = next((v for n, v in headers if n == b"authorization"), None)
        if self.auth.scheme == "basic":
            return await self._basic(value)
        return self._digest(value, method, target)

    # --- Basic ------------------------------------------------------------------------------

    def basic_challenge(self) -> bytes:
        return httpauth.basic_challenge(self.auth.realm)

    async def _basic(self, value: bytes | None) -> Verdict:
        creds = httpauth.parse_basic(value) if value is not None else None
        if creds is None or value is None:
            return Verdict(None, self.basic_challenge())
        key = value
        user = self._known.get(key)
        if user is not None:
            return Verdict(user, b"")
        secret = self._secrets.get((creds.user, None))
        if secret is None:
            # The same work as a known user, so the time does not tell who exists.
            await asyncio.to_thread(_verify, _UNKNOWN_USER_HASH, creds.password)
            return Verdict(None, self.basic_challenge())
        if not await asyncio.to_thread(_verify, secret, creds.password):
            return Verdict(None, self.basic_challenge())
        if len(self._known) >= CACHE_SIZE:
            self._known.clear()
        self._known[key] = creds.user
        return Verdict(creds.user, b"")

    # --- Digest -----------------------------------------------------------------------------

    def digest_challenge(self, *, stale: bool = False) -> bytes:
        nonce = httpauth.make_nonce(self._nonce_key, self.auth.realm, time.time())
        return httpauth.digest_challenge(
            self.auth.realm, nonce, algorithm=self.algorithm, stale=stale
        )

    def _digest(self, value: bytes | None, method: bytes, target: bytes) -> Verdict:
        creds = httpauth.parse_digest(value) if value is not None else None
        if creds is None or creds.realm != self.auth.realm or creds.algorithm != self.algorithm:
            return Verdict(None, self.digest_challenge())
        age = httpauth.nonce_age(self._nonce_key, self.auth.realm, creds.nonce, time.time())
        if age is None:
            return Verdict(None, self.digest_challenge())
        if age > self.auth.nonce_ttl:
            return Verdict(None, self.digest_challenge(stale=True))
        # RFC 7616 §3.4: the request-uri must be the request's own target.
        if creds.uri.encode("latin-1", "replace") != target:
            return Verdict(None, self.digest_challenge())
        secret = self._secrets.get((creds.user, self.auth.realm))
        method_text = method.decode("latin-1")
        if secret is None or not httpauth.response_matches(creds, secret, method_text):
            return Verdict(None, self.digest_challenge())
        last = self._counts.get(creds.nonce, 0)
        if creds.nc <= last:  # a replay
            return Verdict(None, self.digest_challenge())
        if creds.nc > self.auth.nonce_max_uses:
            return Verdict(None, self.digest_challenge(stale=True))
        self._counts[creds.nonce] = creds.nc
        self._counts.move_to_end(creds.nonce)
        if len(self._counts) > CACHE_SIZE:
            self._counts.popitem(last=False)
        return Verdict(creds.user, b"")


_argon2 = argon2.PasswordHasher()
# A bcrypt hash of nothing anyone knows, checked for unknown users (cost 5, as htpasswd -B).
_UNKNOWN_USER_HASH = bcrypt.hashpw(b"no such user", bcrypt.gensalt(5)).decode("ascii")


def _verify(secret: str, password: str) -> bool:
    """Whether ``password`` matches an htpasswd hash (bcrypt or argon2id); runs in a thread."""
    data = password.encode("utf-8")
    if secret.startswith("$argon2"):
        try:
            return bool(_argon2.verify(secret, data))
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False
    try:
        # Apache writes "$2y$"; the bcrypt package reads the same hash as "$2b$".
        return bcrypt.checkpw(data, secret.replace("$2y$", "$2b$", 1).encode("ascii"))
    except ValueError:
        return False


def nonce_key(secret: bytes) -> bytes:
    """The Digest nonce key all workers share, derived from a secret the master hands them."""
    return hashlib.sha256(b"revproxy digest nonce key v1\0" + secret).digest()
