"""A route's and a listener's HTTP rules, compiled once per generation (docs/http-rules.md).

Rule of this room: the exchange asks one dictionary lookup per request whether its route has
rules (``Generation.route_rules``); a route without any has no entry, so plain proxying pays
nothing. What a rule does to a message is pure and lives in ``proto/rewrite.py``; this module
only holds the compiled pieces and the values templates read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from revproxy.config.model import ErrorPage, Listener, Route, RouteCache
from revproxy.content.static import StaticSite
from revproxy.edge.content import CompressRule
from revproxy.proto.events import Headers
from revproxy.proto.rewrite import Edits, compile_edits

__all__ = ["ListenerRules", "RouteRules", "compile_route_rules", "listener_rules", "with_hsts"]


@dataclass(eq=False, slots=True)
class RouteRules:
    """What a route adds to forwarding; each part None when the route does not use it."""

    request_edits: Edits | None = None
    response_edits: Edits | None = None
    strip_prefix: bytes | None = None
    add_prefix: bytes | None = None
    error_pages: dict[int, ErrorPage] = field(default_factory=dict)
    compress: CompressRule | None = None
    cache: RouteCache | None = None
    static: StaticSite | None = None

    @property
    def rewrites_target(self) -> bool:
        return self.strip_prefix is not None or self.add_prefix is not None


@dataclass(eq=False, slots=True)
class ListenerRules:
    hsts: bytes | None = None
    error_pages: dict[int, ErrorPage] = field(default_factory=dict)


def _edits(route: Route, which: str) -> Edits | None:
    e = route.request_headers if which == "request" else route.response_headers
    if e is None:
        return None
    return compile_edits(e.set, e.add, e.remove)


def compile_route_rules(routes: tuple[Route, ...]) -> dict[int, RouteRules]:
    """Rules of the routes that have any, by route index."""
    out: dict[int, RouteRules] = {}
    for r in routes:
        rules = RouteRules(
            request_edits=_edits(r, "request"),
            response_edits=_edits(r, "response"),
            strip_prefix=r.strip_prefix.encode() if r.strip_prefix else None,
            add_prefix=r.add_prefix.encode() if r.add_prefix else None,
            error_pages={p.status: p for p in r.error_pages},
            compress=CompressRule.of(r.compress) if r.compress is not None else None,
            cache=r.cache,
            static=StaticSite(r.static.root, r.static.index) if r.static is not None else None,
        )
        if (
            rules.request_edits is not None
            or rules.response_edits is not None
            or rules.rewrites_target
            or rules.error_pages
            or rules.compress is not None
            or rules.cache is not None
            or rules.static is not None
        ):
            out[r.index] = rules
    return out


def listener_rules(lst: Listener) -> ListenerRules | None:
    if lst.hsts is None and not lst.error_pages:
        return None
    return ListenerRules(
        hsts=lst.hsts.encode("latin-1") if lst.hsts is not None else None,
        error_pages={p.status: p for p in lst.error_pages},
    )


def with_hsts(headers: Headers, value: bytes) -> Headers:
    """``headers`` with our Strict-Transport-Security (an origin's own is replaced)."""
    out = [h for h in headers if h[0] != b"strict-transport-security"]
    out.append((b"strict-transport-security", value))
    return out
