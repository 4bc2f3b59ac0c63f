"""Users files (config/users.py) and route authentication (policy/auth.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher

from revproxy.config.load import load_config_text
from revproxy.config.model import Auth, Users
from revproxy.config.users import parse_users_file
from revproxy.errors import ConfigError
from revproxy.policy.auth import Authenticator, nonce_key
from revproxy.proto import httpauth

BCRYPT = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
ARGON = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("argon-pw")


def basic(user: str, password: str) -> list[tuple[bytes, bytes]]:
    token = base64.b64encode(f"{user}:{password}".encode())
    return [(b"authorization", b"Basic " + token)]


def authenticator(text: str, **auth: object) -> Authenticator:
    kind, entries, problems = parse_users_file(text)
    assert problems == []
    users = Users(name="staff", file=Path("staff"), kind=kind, entries=entries)
    return Authenticator(Auth(users="staff", **auth), users, nonce_key(b"secret"))  # type: ignore[arg-type]


def check(
    a: Authenticator, headers: list[tuple[bytes, bytes]], target: bytes = b"/x"
) -> str | None:
    return asyncio.run(a.check(headers, b"GET", target)).user


def test_basic_with_bcrypt_and_argon2id() -> None:
    a = authenticator(f"alice:{BCRYPT}\nbob:{ARGON}\n", realm="Staff only")
    assert check(a, basic("alice", "s3cret")) == "alice"
    assert check(a, basic("bob", "argon-pw")) == "bob"
    assert check(a, basic("alice", "wrong")) is None
    assert check(a, basic("mallory", "s3cret")) is None
    assert check(a, []) is None
    verdict = asyncio.run(a.check([], b"GET", b"/"))
    assert verdict.challenge == b'Basic realm="Staff only", charset="UTF-8"'


def test_a_verified_password_is_remembered_a_wrong_one_is_not() -> None:
    a = authenticator(f"alice:{BCRYPT}\n")
    assert check(a, basic("alice", "s3cret")) == "alice"
    assert len(a._known) == 1
    check(a, basic("alice", "nope"))
    assert len(a._known) == 1
    assert a.known(basic("alice", "s3cret")) == "alice"  # the same value again: no hash
    assert a.known(basic("alice", "nope")) is None
    assert a.known([]) is None


def test_digest_md5_from_an_htdigest_file() -> None:
    line = f"mufasa:staff:{httpauth.ha1('mufasa', 'staff', 'Circle of Life')}"
    a = authenticator(line, scheme="digest", realm="staff")
    assert a.algorithm == "MD5"
    challenge = asyncio.run(a.check([], b"GET", b"/dir/")).challenge
    nonce = challenge.split(b'nonce="')[1].split(b'"')[0].decode()

    def answer(
        nc: int, password: str = "Circle of Life", uri: str = "/dir/"
    ) -> list[tuple[bytes, bytes]]:
        h1 = httpauth.ha1("mufasa", "staff", password)
        creds = httpauth.DigestCredentials(
            user="mufasa", realm="staff", nonce=nonce, uri=uri, response="", algorithm="MD5",
            qop="auth", nc=nc, cnonce="abc", opaque="",
        )  # fmt: skip
        response = httpauth.expected_response(creds, h1, "GET")
        value = (
            f'Digest username="mufasa", realm="staff", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", qop=auth, nc={nc:08x}, cnonce="abc", algorithm=MD5'
        )
        return [(b"authorization", value.encode())]

    assert check(a, answer(1), b"/dir/") == "mufasa"
    assert check(a, answer(1), b"/dir/") is None  # the same count again: a replay
    assert check(a, answer(2), b"/dir/") == "mufasa"
    assert check(a, answer(3, password="wrong"), b"/dir/") is None
    assert check(a, answer(4, uri="/other"), b"/dir/") is None  # uri is not the target
    assert check(a, answer(51), b"/dir/") is None  # nonce_max_uses = 50


def test_users_files_refuse_weak_hashes() -> None:
    text = "\n".join(
        ["plain:secret", "md5:$apr1$abc$def", "sha:{SHA}abc=",
         "argon2i:$argon2i$v=19$m=8,t=1,p=1$a$b", f"ok:{BCRYPT}", f"ok:{BCRYPT}"]
    )  # fmt: skip
    kind, entries, problems = parse_users_file(text)
    assert kind == "htpasswd" and [e.user for e in entries] == ["ok"]
    reasons = dict(problems)
    assert "plain text" in reasons[1] and "MD5-crypt" in reasons[2]
    assert "SHA-1" in reasons[3] and "argon2id" in reasons[4] and "twice" in reasons[6]


def test_htdigest_files_are_told_by_their_lines() -> None:
    kind, entries, problems = parse_users_file(f"a:realm one:{hashlib.md5(b'x').hexdigest()}\n")
    assert kind == "htdigest" and entries[0].realm == "realm one" and problems == []


def load(tmp_path: Path, users_file: str, auth: str) -> None:
    (tmp_path / "staff").write_text(users_file)
    text = f"""
[[listener]]
name = "web"
bind = ":8080"

[users.staff]
file = "staff"

[[route]]
respond = {{ status = 200 }}
auth = {auth}
"""
    load_config_text([("conf/10-test.toml", text)], base_dir=tmp_path)


@pytest.mark.parametrize(
    ("users_file", "auth", "message"),
    [
        (f"a:{BCRYPT}\n", '{ users = "nobody" }', 'no users named "nobody"'),
        (f"a:{BCRYPT}\n", '{ users = "staff", scheme = "digest" }', "needs an htdigest file"),
        ("a:r:" + "0" * 32 + "\n", '{ users = "staff" }', 'use scheme = "digest"'),
        ("a:r:" + "0" * 32 + "\n", '{ users = "staff", scheme = "digest", realm = "x" }',
         'no user of'),
        ("a:$apr1$x$y\n", '{ users = "staff" }', "staff:1: user 'a': MD5-crypt is refused"),
        (f"a:{BCRYPT}\n", '{ users = "staff", user_header = "X User" }', "not a header name"),
    ],
    ids=["no-such-users", "digest-needs-htdigest", "basic-needs-htpasswd", "realm",
         "md5-crypt", "header-name"],
)  # fmt: skip
def test_config_problems(tmp_path: Path, users_file: str, auth: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, users_file, auth)
    assert any(message in str(p) for p in caught.value.problems), caught.value.problems
