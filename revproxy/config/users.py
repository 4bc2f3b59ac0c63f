"""``[users.NAME]`` tables and the ``auth`` key of routes.

Rule of this room: a users file is read whole when the configuration is loaded, like a list
file, and every line that cannot be used is a problem naming the file and line. htpasswd lines
must hold a hash that is still safe — bcrypt (``$2y$``, ``$2b$``, ``$2a$``: Apache's
``htpasswd -B``, ``revproxy passwd``) or argon2id — and plain text, MD5-crypt (``$apr1$``), SHA-1
(``{SHA}``) and DES crypt are refused with a way out. htdigest lines (``user:realm:HA1``) are
what Squid's ``digest_file_auth`` and Apache's ``htdigest`` read. The kind is told by the lines
themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from revproxy.config.model import Auth, UserEntry, Users
from revproxy.config.reader import Entry, ReadContext, TableReader
from revproxy.config.values import describe

USERS_KEYS = ("file",)
AUTH_KEYS = (
    "users", "scheme", "realm", "nonce_ttl", "nonce_max_uses", "pass_credentials", "user_header",
)  # fmt: skip
_SCHEMES: tuple[Literal["basic", "digest"], ...] = ("basic", "digest")
_AUTH = Auth(users="")

_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_ARGON2ID = re.compile(r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+")
_HA1 = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A broken file of thousands of lines must not print thousands of problems.
MAX_REPORTED = 10


def read_users(name: str, entry: Entry, ctx: ReadContext) -> Users:
    t = TableReader(entry.data, f"users.{name}", entry.file, ctx, USERS_KEYS)
    path = t.path("file", None, required='the htpasswd or htdigest file, e.g. "staff.htpasswd"')
    if path is None:
        return Users(name=name, file=Path(), source=entry.file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        t.problem("file", f"{path} does not exist (make it with: revproxy passwd {path} USER)")
        return Users(name=name, file=path, source=entry.file)
    except (OSError, UnicodeDecodeError) as exc:
        t.problem("file", f"cannot read {path}: {exc}")
        return Users(name=name, file=path, source=entry.file)
    kind, entries, problems = parse_users_file(text)
    for number, reason in problems[:MAX_REPORTED]:
        t.problem("file", f"{path}:{number}: {reason}")
    if len(problems) > MAX_REPORTED:
        t.problem("file", f"{path}: {len(problems) - MAX_REPORTED} more bad lines")
    return Users(name=name, file=path, kind=kind, entries=entries, source=entry.file)


def parse_users_file(
    text: str,
) -> tuple[Literal["htpasswd", "htdigest"], tuple[UserEntry, ...], list[tuple[int, str]]]:
    """(kind, entries, [(line number, reason)]) of an htpasswd or htdigest file."""
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    digest = bool(lines) and all(_HA1.fullmatch(line.rsplit(":", 1)[-1]) for _, line in lines)
    digest = digest and all(line.count(":") >= 2 for _, line in lines)
    entries: list[UserEntry] = []
    problems: list[tuple[int, str]] = []
    seen: set[tuple[str, str | None]] = set()
    for number, line in lines:
        if digest:
            rest, _, ha1 = line.rpartition(":")
            user, _, realm = rest.partition(":")
            entry = UserEntry(user=user, secret=ha1, realm=realm)
        else:
            user, sep, secret = line.partition(":")
            if not sep or not user:
                problems.append((number, "expected user:hash"))
                continue
            reason = _weak_hash(secret)
            if reason:
                problems.append((number, f"user {user!r}: {reason}"))
                continue
            entry = UserEntry(user=user, secret=secret)
        if (entry.user, entry.realm) in seen:
            problems.append((number, f"user {entry.user!r} listed twice"))
            continue
        seen.add((entry.user, entry.realm))
        entries.append(entry)
    return ("htdigest" if digest else "htpasswd"), tuple(entries), problems


def _weak_hash(secret: str) -> str:
    """Why an htpasswd hash is refused, or "" when it is bcrypt or argon2id."""
    if _BCRYPT.fullmatch(secret) or _ARGON2ID.fullmatch(secret):
        return ""
    fix = "store bcrypt instead (htpasswd -B, or revproxy passwd)"
    if secret.startswith("$apr1$") or secret.startswith("$1$"):
        return f"MD5-crypt is refused: {fix}"
    if secret.startswith("{SHA}"):
        return f"unsalted SHA-1 is refused: {fix}"
    if secret.startswith("$argon2"):
        return f"only the argon2id variant is accepted: {fix}"
    if secret.startswith("$"):
        return f"unknown hash scheme {secret.split('$')[1]!r}: {fix}"
    return f"not a bcrypt or argon2id hash (plain text and DES crypt are refused): {fix}"


def read_auth(t: TableReader) -> Auth:
    """A route's ``auth = { users = "staff", scheme = "basic", ... }``."""
    users = t.string("users", None, required='the [users.NAME] table, e.g. users = "staff"')
    realm = t.string("realm", _AUTH.realm)
    if realm is not None and ('"' in realm or "\\" in realm or not realm.isprintable()):
        t.problem("realm", f"{describe(realm)}: no quotes, backslashes or control characters")
    header = t.string("user_header", None)
    if header is not None and not _HEADER_NAME.fullmatch(header):
        t.problem("user_header", f"{describe(header)} is not a header name")
    return Auth(
        users=users or "",
        scheme=t.choice("scheme", _SCHEMES, _AUTH.scheme),
        realm=realm or _AUTH.realm,
        nonce_ttl=t.duration("nonce_ttl", _AUTH.nonce_ttl),
        nonce_max_uses=t.integer("nonce_max_uses", _AUTH.nonce_max_uses, 1),
        pass_credentials=t.boolean("pass_credentials", _AUTH.pass_credentials),
        user_header=header.lower() if header else None,
    )
