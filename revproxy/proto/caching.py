"""HTTP caching rules (RFC 9111) for a shared cache: what may be looked up, stored, served.

Rule of this room: pure. Headers in (``list[tuple[bytes, bytes]]``, lower-case names), a
decision out; the time is passed in as float seconds since the epoch. The store that keeps
the responses is ``content/cache.py``; this file only says what the RFC allows it to do.

The subset we implement, and the choices where the RFC leaves one:

- **Requests** (``request_policy``): only GET and HEAD are looked up; HEAD is answered from a
  stored GET response but never stored itself (its response has no content). A request is
  passed by (``Bypass``) when it carries ``Cache-Control: no-store`` (RFC 9111 §5.2.1.5 only
  forbids storing; we also skip the lookup, so the request reaches the origin as the client
  meant), ``Cookie`` or ``Authorization`` unless the route allows them, ``Range`` (we neither
  store 206 nor cut ranges out of stored responses), ``Upgrade`` (a WebSocket handshake is a
  GET), or ``If-Match``/``If-Unmodified-Since``/``If-Range`` (preconditions for the origin to
  judge). ``no-cache``, ``max-age=0`` and ``Pragma: no-cache`` (§5.4, only without
  Cache-Control) mean "revalidate before serving".
- **Responses** (``storable``): statuses 200 203 204 300 301 308 404 405 410 414 501 only
  (the heuristically cacheable ones, RFC 9110 §15.1), and only with explicit freshness — we
  never compute heuristic lifetimes. Never stored: ``no-store``, ``private`` (§5.2.2.7; the
  qualified form ``private="f"`` is treated as unqualified), ``no-cache`` (§5.2.2.4 would
  allow storing and revalidating every time; we do not store, qualified or not), any
  ``Set-Cookie``, ``Vary: *`` (§4.1: "always fails to match"), and a response that is already
  stale when it arrives. §3.5: "A shared cache MUST NOT use a cached response to a request
  with an Authorization header field ... unless ... the response contains a Cache-Control
  field with a response directive ... that allows it to be cached": ``public``, ``s-maxage``
  or ``must-revalidate``.
- **Freshness** (§4.2.1): "If the cache is shared and the s-maxage response directive is
  present, use its value, or If the max-age response directive is present, use its value, or
  If the Expires response header field is present, use its value minus the value of the Date
  response header field", capped at the route's ``ttl_max``. ``stale-while-revalidate`` and
  ``stale-if-error`` (RFC 5861) are capped at ``ttl_max`` too, so nothing served is older
  than twice ``ttl_max``; ``must-revalidate``, ``proxy-revalidate`` and ``s-maxage`` (§5.2.2.10:
  it "implies the semantics of proxy-revalidate") forbid serving stale at all (§4.2.4).
- **Invalid and repeated values** (§4.2.1: "either the first occurrence should be used or the
  response should be considered stale"; "Caches are encouraged to consider responses that
  have invalid freshness information ... to be stale"): the first occurrence of a directive
  is used; an invalid ``max-age``/``s-maxage`` is read as 0 (stale, so not stored); an
  invalid ``stale-while-revalidate``/``stale-if-error`` as 0 (no stale serving); an invalid
  ``Expires`` (``0`` included) as already expired (§5.3); an invalid ``Age`` makes the
  response stale. A delta-seconds above 2^31 is 2^31 (§1.2.2).
- **Age** (§4.2.3): ``corrected_initial_age`` from Age, Date and the request and response
  times; a missing or invalid Date counts as the response time.
- **Vary** (§4.1): a stored response is selected by the values of the request fields it
  names, normalised: field lines combined, list elements trimmed, empty elements dropped
  (``Cookie`` is combined with ``; ``, RFC 9113 §8.2.3). A field absent and a field present
  but empty differ.
- **Revalidation** (§4.3): ``If-None-Match`` from ETag, ``If-Modified-Since`` from
  Last-Modified; a 304's fields replace the stored ones (§3.2) except the framing and coding
  fields the stored content depends on. Unsafe methods invalidate (§4.4).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from revproxy.proto.httpdate import parse_http_date

__all__ = [
    "Bypass",
    "CacheControl",
    "Freshness",
    "Headers",
    "NotStored",
    "RequestPolicy",
    "answers_not_modified",
    "cache_control",
    "cache_key",
    "current_age",
    "invalidates",
    "is_fresh",
    "not_modified_headers",
    "parse_cache_control",
    "request_policy",
    "revalidation_headers",
    "served_headers",
    "storable",
    "storable_headers",
    "updated_headers",
    "vary_key",
    "vary_names",
    "within_stale_if_error",
    "within_swr",
]

Headers = list[tuple[bytes, bytes]]

# §1.2.2: "the cache MUST consider the value to be 2147483648 (2^31)".
DELTA_MAX: Final = 2**31
# RFC 9110 §15.1: "Responses with status codes that are defined as heuristically cacheable
# (e.g., 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, and 501 in this
# specification)" — 206 left out: we do not combine partial content.
CACHEABLE_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
LOOKUP_METHODS: Final = frozenset({b"GET", b"HEAD"})
SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
# §3.1: "Caches MUST NOT store ... the Connection header field and header fields whose names
# are listed in it ... Proxy-Connection ... Keep-Alive ... TE ... Transfer-Encoding ...
# Upgrade".
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding",
     b"upgrade", b"trailer"}
)  # fmt: skip
# §3.2: a 304 updates the stored fields "with the following exceptions: ... Header fields
# that the cache's stored response depends upon ... The Content-Length header field."
NOT_UPDATED: Final = HOP_BY_HOP | {b"content-length", b"content-encoding", b"content-range"}
# RFC 9110 §15.4.5: a 304 carries "Content-Location, Date, ETag, and Vary" and "Cache-Control
# and Expires" when a 200 would.
NOT_MODIFIED_FIELDS: Final = frozenset(
    {b"content-location", b"date", b"etag", b"vary", b"cache-control", b"expires"}
)
_BOOLEANS: Final = {
    b"no-store": "no_store",
    b"no-cache": "no_cache",
    b"private": "private",
    b"public": "public",
    b"must-revalidate": "must_revalidate",
    b"proxy-revalidate": "proxy_revalidate",
    b"only-if-cached": "only_if_cached",
    b"no-transform": "no_transform",
}
_DELTAS: Final = {
    b"max-age": "max_age",
    b"s-maxage": "s_maxage",
    b"stale-while-revalidate": "stale_while_revalidate",
    b"stale-if-error": "stale_if_error",
    b"min-fresh": "min_fresh",
}
_OWS: Final = b" \t"


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheControl:
    """The Cache-Control directives we read, from a request or a response (§5.2).

    A delta-seconds directive is ``None`` when absent; an invalid value reads as 0."""

    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    only_if_cached: bool = False
    no_transform: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    min_fresh: int | None = None


EMPTY_CACHE_CONTROL: Final = CacheControl()


class Bypass(enum.Enum):
    """Why a request goes to the origin without looking in the cache."""

    METHOD = "method"
    NO_STORE = "no-store"
    COOKIE = "cookie"
    AUTHORIZATION = "authorization"
    RANGE = "range"
    UPGRADE = "upgrade"
    PRECONDITION = "precondition"


class NotStored(enum.Enum):
    """Why a response is not stored."""

    STATUS = "status"
    NO_STORE = "no-store"
    PRIVATE = "private"
    NO_CACHE = "no-cache"
    SET_COOKIE = "set-cookie"
    VARY_STAR = "vary-star"
    AUTHORIZATION = "authorization"
    COOKIE = "cookie"
    NO_FRESHNESS = "no-freshness"
    INVALID_AGE = "invalid-age"
    ARRIVED_STALE = "arrived-stale"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPolicy:
    """What the cache may do for one request: pass it by (``bypass``) or look it up."""

    bypass: Bypass | None = None
    must_revalidate: bool = False  # no-cache, max-age=0, Pragma: no-cache
    only_if_cached: bool = False  # §5.2.1.7: answer from the cache or 504
    store: bool = False  # the response may be stored (GET, not HEAD)
    max_age: int | None = None  # §5.2.1.1: the client takes nothing older
    min_fresh: int | None = None  # §5.2.1.3: the client wants this much freshness left

    @property
    def lookup(self) -> bool:
        return self.bypass is None


@dataclass(frozen=True, slots=True, kw_only=True)
class Freshness:
    """How long a stored response stays fresh, and what may be done once it is not."""

    lifetime: float  # freshness_lifetime (§4.2.1), capped at ttl_max
    initial_age: float  # corrected_initial_age (§4.2.3)
    swr: float = 0.0  # stale-while-revalidate seconds (0: none)
    stale_if_error: float | None = None  # stale-if-error seconds, when given
    must_revalidate: bool = False  # must-revalidate / proxy-revalidate / s-maxage: never stale


# --- field values -----------------------------------------------------------------------------


def field_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of field ``name`` (lower case), in order."""
    return [v for n, v in headers if n == name]


def _first(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v.strip(_OWS)
    return None


def _has(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(n == name for n, _ in headers)


def split_elements(value: bytes, sep: int = 0x2C) -> list[bytes]:
    """The elements of a list-based field value, split on ``sep`` outside quoted strings,
    trimmed, empty ones dropped (RFC 9110 §5.6.1: "a recipient MUST ... ignore ... empty
    list elements")."""
    out: list[bytes] = []
    start, quoted, escaped = 0, False, False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == sep:
            element = value[start:i].strip(_OWS)
            if element:
                out.append(element)
            start = i + 1
    element = value[start:].strip(_OWS)
    if element:
        out.append(element)
    return out


def _unquote(value: bytes) -> bytes:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        inner = value[1:-1]
        out = bytearray()
        escaped = False
        for c in inner:
            if escaped or c != 0x5C:
                out.append(c)
                escaped = False
            else:
                escaped = True
        return bytes(out)
    return value


def parse_delta(value: bytes) -> int | None:
    """delta-seconds (§1.2.2): ASCII digits, capped at 2^31; else None."""
    if not value or not value.isdigit():  # bytes.isdigit is ASCII only
        return None
    if len(value) > 10:  # longer than 2^31 has digits, and int() of a huge string is slow
        return DELTA_MAX
    return min(int(value), DELTA_MAX)


def parse_cache_control(values: Iterable[bytes]) -> CacheControl:
    """The directives of every Cache-Control field line, combined (§5.2). Names are case
    insensitive; arguments may be tokens or quoted strings; unknown directives are ignored;
    the first occurrence of a directive counts. Never raises."""
    found: dict[str, bool | int] = {}
    for value in values:
        for element in split_elements(value):
            name, eq, arg = element.partition(b"=")
            name = name.strip(_OWS).lower()
            boolean = _BOOLEANS.get(name)
            if boolean is not None:
                found.setdefault(boolean, True)  # a qualified form counts as unqualified
                continue
            delta = _DELTAS.get(name)
            if delta is not None and delta not in found:
                seconds = parse_delta(_unquote(arg.strip(_OWS))) if eq else None
                found[delta] = 0 if seconds is None else seconds  # invalid: stale
    if not found:
        return EMPTY_CACHE_CONTROL
    return CacheControl(**found)  # type: ignore[arg-type]


def cache_control(headers: Iterable[tuple[bytes, bytes]]) -> CacheControl:
    """The Cache-Control of a header list."""
    return parse_cache_control(field_values(headers, b"cache-control"))


# --- requests ---------------------------------------------------------------------------------


def request_policy(
    method: bytes, headers: Headers, *, cookies: bool, authorization: bool
) -> RequestPolicy:
    """Whether the cache looks this request up, and under which constraints.

    ``cookies`` and ``authorization`` are the route's ``cache`` keys: when false, a request
    carrying that field goes to the origin and its response is never stored."""
    if method not in LOOKUP_METHODS:
        return RequestPolicy(bypass=Bypass.METHOD)
    # One pass over the fields: which of the ones the decision reads are present.
    cc_values: list[bytes] = []
    pragma_values: list[bytes] = []
    present: set[bytes] = set()
    for name, value in headers:
        if name in _REQUEST_FIELDS:
            if name == b"cache-control":
                cc_values.append(value)
            elif name == b"pragma":
                pragma_values.append(value)
            else:
                present.add(name)
    if not cc_values and not pragma_values and not present:
        # The usual request: nothing to read (one shared answer per method).
        return _PLAIN_GET if method == b"GET" else _PLAIN_HEAD
    cc = parse_cache_control(cc_values)
    if cc.no_store:
        return RequestPolicy(bypass=Bypass.NO_STORE)
    if not cookies and b"cookie" in present:
        return RequestPolicy(bypass=Bypass.COOKIE)
    if not authorization and b"authorization" in present:
        return RequestPolicy(bypass=Bypass.AUTHORIZATION)
    if b"range" in present or b"if-range" in present:
        return RequestPolicy(bypass=Bypass.RANGE)
    if b"upgrade" in present:
        return RequestPolicy(bypass=Bypass.UPGRADE)
    if b"if-match" in present or b"if-unmodified-since" in present:
        return RequestPolicy(bypass=Bypass.PRECONDITION)
    # §5.4: "When the Cache-Control header field is also present and understood in a request,
    # Pragma is ignored."
    pragmas = [e.lower() for v in pragma_values for e in split_elements(v)]
    pragma_no_cache = not cc_values and b"no-cache" in pragmas
    return RequestPolicy(
        must_revalidate=cc.no_cache or cc.max_age == 0 or pragma_no_cache,
        only_if_cached=cc.only_if_cached,
        store=method == b"GET",
        max_age=cc.max_age,
        min_fresh=cc.min_fresh,
    )


# The request fields request_policy reads.
_REQUEST_FIELDS = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"cookie",
        b"authorization",
        b"range",
        b"if-range",
        b"upgrade",
        b"if-match",
        b"if-unmodified-since",
    }
)
# A GET or HEAD with none of them (RequestPolicy is frozen: one instance serves every such one).
_PLAIN_GET = RequestPolicy(store=True)
_PLAIN_HEAD = RequestPolicy()


def invalidates(method: bytes, status: int) -> bool:
    """§4.4: "A cache MUST invalidate the target URI ... when it receives a non-error status
    code in response to an unsafe request method"."""
    return method not in SAFE_METHODS and 200 <= status < 400


# --- responses --------------------------------------------------------------------------------


def storable(
    status: int,
    response_headers: Headers,
    request_headers: Headers,
    *,
    ttl_max: float,
    now: float,
    request_time: float,
    response_time: float,
    authorization_allowed: bool,
    cookies_allowed: bool = False,
) -> Freshness | NotStored:
    """The freshness of a response the cache may store, or why it may not.

    ``request_time`` and ``response_time`` are when the request was sent to the origin and
    when its response head arrived; ``now`` dates two-digit RFC 850 years. A request with a
    Cookie is refused unless ``cookies_allowed`` (the route's ``cookies``), a second guard
    behind ``request_policy``."""
    if status not in CACHEABLE_STATUSES:
        return NotStored.STATUS
    cc = cache_control(response_headers)
    if cc.no_store or cache_control(request_headers).no_store:
        return NotStored.NO_STORE
    if cc.private:
        return NotStored.PRIVATE
    if cc.no_cache:
        return NotStored.NO_CACHE
    if _has(response_headers, b"set-cookie"):
        return NotStored.SET_COOKIE
    if b"*" in vary_names(response_headers):
        return NotStored.VARY_STAR
    if _has(request_headers, b"authorization") and not (
        authorization_allowed and (cc.public or cc.s_maxage is not None or cc.must_revalidate)
    ):
        return NotStored.AUTHORIZATION
    if not cookies_allowed and _has(request_headers, b"cookie"):
        return NotStored.COOKIE

    clock = int(now)
    date_field = _first(response_headers, b"date")
    date = parse_http_date(date_field, now=clock) if date_field is not None else None
    date_value = float(date) if date is not None else response_time
    lifetime: float
    if cc.s_maxage is not None:
        lifetime = cc.s_maxage
    elif cc.max_age is not None:
        lifetime = cc.max_age
    else:
        expires_field = _first(response_headers, b"expires")
        if expires_field is None:
            return NotStored.NO_FRESHNESS
        expires = parse_http_date(expires_field, now=clock)
        # §5.3: "A cache recipient MUST interpret invalid date formats, especially the value
        # "0", as representing a time in the past (i.e., "already expired")."
        lifetime = max(0.0, expires - date_value) if expires is not None else 0.0
    lifetime = min(lifetime, ttl_max)

    age_field = _first(response_headers, b"age")
    age_value = 0
    if age_field is not None:
        parsed_age = parse_delta(age_field)
        if parsed_age is None:
            return NotStored.INVALID_AGE
        age_value = parsed_age
    # §4.2.3
    apparent_age = max(0.0, response_time - date_value)
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    initial_age = max(apparent_age, corrected_age_value)
    if lifetime <= 0 or initial_age >= lifetime:
        return NotStored.ARRIVED_STALE if lifetime > 0 else NotStored.NO_FRESHNESS

    cap = max(0.0, ttl_max)
    sie = cc.stale_if_error
    return Freshness(
        lifetime=lifetime,
        initial_age=initial_age,
        swr=min(float(cc.stale_while_revalidate or 0), cap),
        stale_if_error=min(float(sie), cap) if sie is not None else None,
        must_revalidate=cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None,
    )


def current_age(freshness: Freshness, stored_at: float, now: float) -> float:
    """§4.2.3: ``corrected_initial_age + resident_time``; ``stored_at`` is the response time."""
    return freshness.initial_age + max(0.0, now - stored_at)


def is_fresh(freshness: Freshness, age: float) -> bool:
    """§4.2: "response_is_fresh = (freshness_lifetime > current_age)"."""
    return freshness.lifetime > age


def within_swr(freshness: Freshness, age: float) -> bool:
    """Stale, but within stale-while-revalidate (RFC 5861 §3): may be served while one
    revalidation runs in the background."""
    if freshness.must_revalidate or is_fresh(freshness, age):
        return False
    return age < freshness.lifetime + freshness.swr


def within_stale_if_error(freshness: Freshness, age: float) -> bool:
    """Stale, but within stale-if-error (RFC 5861 §4): may be served when the origin fails."""
    if freshness.must_revalidate or freshness.stale_if_error is None:
        return False
    return age < freshness.lifetime + freshness.stale_if_error


# --- Vary -------------------------------------------------------------------------------------


def vary_names(headers: Headers) -> tuple[bytes, ...]:
    """The request field names a response varies on, lower case, sorted, once each; ``*``
    is kept as ``b"*"``."""
    names = {e.lower() for v in field_values(headers, b"vary") for e in split_elements(v)}
    return tuple(sorted(names))


def vary_key(names: tuple[bytes, ...], request_headers: Headers) -> tuple[bytes | None, ...]:
    """The normalised values of ``names`` in a request (None where absent), §4.1."""
    out: list[bytes | None] = []
    for name in names:
        values = field_values(request_headers, name)
        if not values:
            out.append(None)
        elif name == b"cookie":
            out.append(b"; ".join(e for v in values for e in split_elements(v, 0x3B)))
        else:
            out.append(b",".join(e for v in values for e in split_elements(v)))
    return tuple(out)


# --- stored, revalidated, served --------------------------------------------------------------


def _connection_names(headers: Headers) -> set[bytes]:
    return {e.lower() for v in field_values(headers, b"connection") for e in split_elements(v)}


def storable_headers(headers: Headers) -> Headers:
    """The fields a cache keeps (§3.1): hop-by-hop ones and those named in Connection gone."""
    drop = HOP_BY_HOP | _connection_names(headers)
    return [(n, v) for n, v in headers if n not in drop]


def revalidation_headers(stored_headers: Headers) -> Headers:
    """The conditional fields of a revalidation request (§4.3.1): If-None-Match from the
    stored ETag, If-Modified-Since from a valid Last-Modified. Empty when the stored
    response has no validator (the request is then unconditional)."""
    out: Headers = []
    etag = _first(stored_headers, b"etag")
    if etag:
        out.append((b"if-none-match", etag))
    last_modified = _first(stored_headers, b"last-modified")
    if last_modified and parse_http_date(last_modified) is not None:
        out.append((b"if-modified-since", last_modified))
    return out


def updated_headers(stored: Headers, from_304: Headers) -> Headers:
    """The stored fields updated by a 304 (§3.2): "the cache MUST add each header field in
    the provided response to the stored response, replacing field values that are already
    present", except the framing and coding fields the stored content depends on."""
    skip = NOT_UPDATED | _connection_names(from_304)
    new = [(n, v) for n, v in from_304 if n not in skip]
    replaced = {n for n, _ in new}
    return [(n, v) for n, v in stored if n not in replaced] + new


def served_headers(stored: Headers, age: int) -> Headers:
    """The stored fields with ``Age`` set (§5.1), in place of any stored one."""
    value = b"%d" % max(0, min(age, DELTA_MAX))
    out: Headers = []
    placed = False
    for n, v in stored:
        if n == b"age":
            if not placed:
                out.append((b"age", value))
                placed = True
        else:
            out.append((n, v))
    if not placed:
        out.append((b"age", value))
    return out


def _weak_match(a: bytes, b: bytes) -> bool:
    """RFC 9110 §8.8.3.2: weak comparison ignores the W/ prefix."""
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def answers_not_modified(request_headers: Headers, stored_headers: Headers) -> bool:
    """Whether a client's own conditional GET is answered 304 from a stored response
    (§4.3.2, RFC 9110 §13.2.2): If-None-Match by weak comparison when present, else
    If-Modified-Since against Last-Modified."""
    inm = field_values(request_headers, b"if-none-match")
    if inm:
        etag = _first(stored_headers, b"etag")
        tags = [t for v in inm for t in split_elements(v)]
        if b"*" in tags:
            return True
        return etag is not None and any(_weak_match(t, etag) for t in tags)
    ims_field = _first(request_headers, b"if-modified-since")
    lm_field = _first(stored_headers, b"last-modified")
    if ims_field is None or lm_field is None:
        return False
    ims, lm = parse_http_date(ims_field), parse_http_date(lm_field)
    return ims is not None and lm is not None and lm <= ims


def not_modified_headers(stored: Headers, age: int) -> Headers:
    """The fields of a 304 answered from a stored response (RFC 9110 §15.4.5), with Age."""
    return served_headers([(n, v) for n, v in stored if n in NOT_MODIFIED_FIELDS], age)


# --- the key ----------------------------------------------------------------------------------


def cache_key(scheme: bytes, host: bytes, target: bytes) -> bytes:
    """The primary cache key (§2): scheme, host (lower case) and the target as routed (the
    caller has normalised it)."""
    return b"%s://%s%s" % (scheme.lower(), host.lower(), target)
