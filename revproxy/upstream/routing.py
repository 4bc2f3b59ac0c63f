"""Routes compiled to a lookup: (host, path, and a route's ``match`` conditions) → route.

Rule of this room: pure and total. The most specific host wins (an exact name, then the
longest wildcard suffix, then routes for any host); within a host, the longest path prefix
wins; then routes with more ``match`` conditions (method, each header, each query parameter,
source networks) come before routes with fewer; ties keep configuration order. A path rule
ending in "/" also takes the same path without it. Paths arrive normalised (proto/target.py),
so what is matched is what the origin serves. A host whose routes have no matching path (or
whose conditions all fail) falls through to less specific hosts. No match is ``None`` — the
pipeline answers it locally (404) and never forwards it anywhere.

Conditions are compiled once per generation (regular expressions included); a listener none
of whose routes has conditions is matched by ``Router.match`` alone, exactly as before they
existed, so plain routing pays nothing for them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote_plus

from revproxy.config.model import FieldMatch, Match, Route
from revproxy.proto.events import Headers
from revproxy.proto.host import host_matches


def _specificity(r: Route) -> tuple[int, int]:
    return (-len(r.path), -(r.match.conditions if r.match is not None else 0))


def _by_path(routes: Iterable[Route]) -> tuple[Route, ...]:
    # Longest path first, then more conditions; sorted() is stable, so ties keep
    # configuration order.
    return tuple(sorted(routes, key=_specificity))


class _Field:
    """One header or query condition: any field of that name equal to a value or matching
    a pattern."""

    __slots__ = ("name", "patterns", "values")

    def __init__(self, spec: FieldMatch) -> None:
        self.name = spec.name
        self.values = frozenset(spec.values)
        self.patterns = tuple(re.compile(p) for p in spec.patterns)

    def test(self, found: Iterable[str]) -> bool:
        for value in found:
            if value in self.values:
                return True
            for pattern in self.patterns:
                if pattern.search(value):
                    return True
        return False


class Conditions:
    """A route's ``match``, compiled: ``test`` is true when every given condition holds."""

    __slots__ = ("headers", "methods", "query", "src")

    def __init__(self, match: Match) -> None:
        self.methods = frozenset(m.encode() for m in match.methods)
        self.headers = tuple(_Field(f) for f in match.headers)
        self.query = tuple(_Field(f) for f in match.query)
        self.src = tuple(match.src)

    def test(self, method: bytes, headers: Headers, target: bytes, client: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        for cond in self.headers:
            name = cond.name.encode()
            if not cond.test(v.decode("latin-1").strip() for n, v in headers if n == name):
                return False
        if self.query:
            pairs = _query_pairs(target)
            for cond in self.query:
                if not cond.test(v for n, v in pairs if n == cond.name):
                    return False
        if self.src:
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                return False
            if not any(address in net for net in self.src):
                return False
        return True


def _query_pairs(target: bytes) -> list[tuple[str, str]]:
    """The query's name=value pairs, each decoded as a form field (``+`` is a space)."""
    cut = target.find(b"?")
    if cut < 0:
        return []
    out = []
    for item in target[cut + 1 :].decode("latin-1").split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        out.append((unquote_plus(name, "latin-1"), unquote_plus(value, "latin-1")))
    return out


def route_order(routes: Sequence[Route]) -> list[Route]:
    """All routes in the order they are tried for a host that matches them all."""

    def key(r: Route) -> tuple[int, int, int, int]:
        if not r.host:
            tier, spec = 2, 0
        elif all(h.startswith("*.") for h in r.host):
            tier, spec = 1, -max(len(h) for h in r.host)
        else:
            tier, spec = 0, 0
        return (tier, spec, *_specificity(r))

    return sorted(routes, key=key)


class Router:
    """Route lookup for one listener."""

    def __init__(self, routes: Sequence[Route]) -> None:
        exact: dict[str, list[Route]] = {}
        wild: dict[str, list[Route]] = {}
        anyhost: list[Route] = []
        for r in routes:
            if not r.host:
                anyhost.append(r)
            for h in r.host:
                if h.startswith("*."):
                    wild.setdefault(h[1:], []).append(r)
                else:
                    exact.setdefault(h, []).append(r)
        self._exact = {h: _by_path(rs) for h, rs in exact.items()}
        # Longest suffix first.
        self._wild = sorted(((s, _by_path(rs)) for s, rs in wild.items()), key=lambda x: -len(x[0]))
        self._any = _by_path(anyhost)
        self.routes = tuple(routes)
        # Compiled conditions by route index; empty when no route has any.
        self.conditions: dict[int, Conditions] = {
            r.index: Conditions(r.match) for r in routes if r.match is not None
        }

    def match(self, host: str, path: str) -> Route | None:
        """``host`` already normalised; ``path`` without the query string."""
        candidates = self._exact.get(host)
        if candidates:
            r = _first_prefix(candidates, path)
            if r is not None:
                return r
        for suffix, rs in self._wild:
            if (
                host.endswith(suffix)
                and "." not in host[: -len(suffix)]
                and len(host) > len(suffix)
            ):
                r = _first_prefix(rs, path)
                if r is not None:
                    return r
        return _first_prefix(self._any, path)

    def match_request(
        self, host: str, path: str, method: bytes, headers: Headers, target: bytes, client: str
    ) -> Route | None:
        """``match`` for a listener whose routes have conditions: the request's method,
        headers, target (for its query) and client address (the policy client) decide too."""
        conds = self.conditions
        args = (method, headers, target, client)
        candidates = self._exact.get(host)
        if candidates:
            r = _first_matching(candidates, path, conds, args)
            if r is not None:
                return r
        for suffix, rs in self._wild:
            if (
                host.endswith(suffix)
                and "." not in host[: -len(suffix)]
                and len(host) > len(suffix)
            ):
                r = _first_matching(rs, path, conds, args)
                if r is not None:
                    return r
        return _first_matching(self._any, path, conds, args)

    def knows_host(self, host: str) -> bool:
        """True when some route names this host (or a route takes any host)."""
        if self._any or host in self._exact:
            return True
        return any(host_matches("*" + s, host) for s, _ in self._wild)


def _first_prefix(routes: Sequence[Route], path: str) -> Route | None:
    for r in routes:
        rp = r.path
        if path.startswith(rp):
            return r
        # A rule ending in "/" also takes the same path without it ("/admin" is "/admin/"):
        # an origin serving "/admin/" answers "/admin" too, with its content or a redirect.
        if len(rp) == len(path) + 1 and rp[-1] == "/" and rp.startswith(path):
            return r
    return None


def _first_matching(
    routes: Sequence[Route],
    path: str,
    conds: dict[int, Conditions],
    args: tuple[bytes, Headers, bytes, str],
) -> Route | None:
    for r in routes:
        rp = r.path
        if path.startswith(rp) or (
            len(rp) == len(path) + 1 and rp[-1] == "/" and rp.startswith(path)
        ):
            c = conds.get(r.index)
            if c is None or c.test(*args):
                return r
    return None
