"""``revproxy passwd FILE USER``: create or update a user in an htpasswd or htdigest file.

Rule of this room: the file is rewritten whole and atomically (a temporary file beside it,
then a rename), keeping every other line as it was and the file's mode (0640 for a new one);
the password is asked twice on a terminal, or read as one line from standard input (scripts).
htpasswd entries are bcrypt (``$2y$``, as ``htpasswd -B`` writes them, cost 10 by default);
``--digest --realm R`` writes ``user:realm:HA1`` lines as ``htdigest`` does (MD5, or
``--sha256``). Messages go to standard error; exit 2 for a bad argument or file.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

import bcrypt

from revproxy.config.users import parse_users_file
from revproxy.proto.httpauth import ha1

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_COST = 10
NEW_FILE_MODE = 0o640


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "passwd", help="create or update a user in an htpasswd (bcrypt) or htdigest file"
    )
    p.add_argument("file", help="the users file ([users.NAME] file = ...)")
    p.add_argument("user")
    p.add_argument("--digest", action="store_true", help="write an htdigest line (Digest auth)")
    p.add_argument("--realm", help="the realm of an htdigest line (required with --digest)")
    p.add_argument("--sha256", action="store_true", help="htdigest: SHA-256 instead of MD5")
    p.add_argument("--cost", type=int, default=DEFAULT_COST, help="bcrypt cost (4-16)")
    p.set_defaults(func=cmd_passwd)


def cmd_passwd(args: argparse.Namespace) -> int:
    user: str = args.user
    if not user or ":" in user or not user.isprintable():
        return _fail(f"user {user!r}: no colon or control characters, not empty")
    if args.digest and not args.realm:
        return _fail("--digest needs --realm (the realm of the route's auth)")
    if not 4 <= args.cost <= 16:
        return _fail("--cost: between 4 and 16")
    path = Path(args.file)
    lines: list[str] = []
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(f"{path}: {exc}")
        kind, _, _ = parse_users_file(text)
        if text.strip() and (kind == "htdigest") != bool(args.digest):
            hint = "use --digest" if kind == "htdigest" else "leave out --digest"
            return _fail(f"{path} is an {kind} file ({hint})")
        lines = text.splitlines()
    password = _ask_password()
    if password is None:
        return _fail("the passwords did not match")
    if args.digest:
        prefix = f"{user}:{args.realm}:"
        algorithm = "SHA-256" if args.sha256 else "MD5"
        line = prefix + ha1(user, args.realm, password, algorithm)
    else:
        prefix = f"{user}:"
        hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(args.cost)).decode()
        line = prefix + "$2y$" + hashed[4:]  # Apache's prefix; the same hash
    kept = [old for old in lines if not old.startswith(prefix)]
    updated = len(kept) != len(lines)
    kept.append(line)
    try:
        _write(path, "\n".join(kept) + "\n")
    except OSError as os_error:
        return _fail(f"{path}: {os_error}")
    print(f"{'updated' if updated else 'added'} {user} in {path}", file=sys.stderr)
    return EXIT_OK


def _ask_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _write(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _fail(message: str) -> int:
    print(f"revproxy passwd: {message}", file=sys.stderr)
    return EXIT_USAGE
