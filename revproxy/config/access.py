"""``allow``, ``deny``, ``allow_file`` and ``deny_file``: the same four keys on listeners and
routes (docs/access-control.md).

Rule of this room: a list file is read whole when the configuration is loaded, one address or
CIDR network per line, ``#`` starting a comment; every bad line is a problem naming the file,
the line and the reason, like any other key. The networks are kept in the configuration, so a
reload (or a change of the file, which the config watch follows) swaps them with everything
else. Deny wins over allow; with an allow list, anything it does not name is refused.
"""

from __future__ import annotations

from pathlib import Path

from revproxy.config.model import Access, Network
from revproxy.config.reader import TableReader
from revproxy.config.values import parse_network

ACCESS_KEYS = ("allow", "deny", "allow_file", "deny_file")


def read_access(t: TableReader) -> Access:
    """The access keys of one listener or route table (its fields of the same names)."""
    allow = [net for _, net in t.strings("allow", parse_network)]
    deny = [net for _, net in t.strings("deny", parse_network)]
    allow_file = t.path("allow_file", None)
    deny_file = t.path("deny_file", None)
    if allow_file is not None:
        allow += _read_list(t, "allow_file", allow_file)
    if deny_file is not None:
        deny += _read_list(t, "deny_file", deny_file)
    return Access(allow=tuple(allow), deny=tuple(deny), allow_file=allow_file, deny_file=deny_file)


def _read_list(t: TableReader, key: str, path: Path) -> list[Network]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        t.problem(key, f"{path} does not exist (one address or CIDR per line, # for comments)")
        return []
    except (OSError, UnicodeDecodeError) as exc:
        t.problem(key, f"cannot read {path}: {exc}")
        return []
    out: list[Network] = []
    bad = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            out.append(parse_network(line))
        except ValueError as value_error:
            bad += 1
            if bad <= MAX_REPORTED:
                t.problem(key, f"{path}:{number}: {value_error}")
    if bad > MAX_REPORTED:
        t.problem(key, f"{path}: {bad - MAX_REPORTED} more bad lines")
    return out


# A broken list file of 100,000 lines must not print 100,000 problems.
MAX_REPORTED = 10
