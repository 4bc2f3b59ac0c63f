"""Routes compiled to a lookup: (host, path) → route.

Rule of this room: pure and total. The most specific host wins (an exact name, then the
longest wildcard suffix, then routes for any host); within a host, the longest path prefix
wins; ties keep configuration order; a path rule ending in "/" also takes the same path without
it. Paths arrive normalised (proto/target.py), so what is matched is what the origin serves. A
host whose routes have no matching path falls through to less specific hosts. No match is
``None`` — the pipeline answers it locally (404) and never forwards it anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from revproxy.config.model import Route
from revproxy.proto.host import host_matches


def _by_path(routes: Iterable[Route]) -> tuple[Route, ...]:
    # Longest path first; sorted() is stable, so ties keep configuration order.
    return tuple(sorted(routes, key=lambda r: -len(r.path)))


def route_order(routes: Sequence[Route]) -> list[Route]:
    """All routes in the order they are tried for a host that matches them all."""

    def key(r: Route) -> tuple[int, int, int]:
        if not r.host:
            tier, spec = 2, 0
        elif all(h.startswith("*.") for h in r.host):
            tier, spec = 1, -max(len(h) for h in r.host)
        else:
            tier, spec = 0, 0
        return (tier, spec, -len(r.path))

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
