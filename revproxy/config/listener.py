"""``[[listener]]`` tables → ``Listener``, and the checks listeners need the whole config for.

Rule of this room: a listener is a bound socket and its mode. An http listener ends TLS (when
it has ``tls``) or speaks plain HTTP — only a plain one answers ACME HTTP-01 challenges or
accepts h2c; a tcp listener relays bytes to its pool and has none of the HTTP keys (with
``tls`` it ends TLS first: certificates and client certificates, but no ALPN, which names HTTP
protocols, and no client_cert_header, which is a request header). Two
listeners never take the same port on the same address (a wildcard bind takes every address
of its family), and nothing else in the config (the admin address) may either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from revproxy.config.access import ACCESS_KEYS, read_access
from revproxy.config.limits import CONN_LIMIT_KEYS, read_conn_limit, read_limit_names
from revproxy.config.model import Bind, CertPair, Listener, ListenerTLS, ProxyProtocolIn
from revproxy.config.pool import _check_ca as ca_file_problem
from revproxy.config.reader import MISSING, Entry, ReadContext, TableReader, defined
from revproxy.config.rules import read_error_pages
from revproxy.config.users import AUTH_KEYS, read_auth
from revproxy.config.values import describe, header_value, parse_bind, parse_network

__all__ = ["ListenerRead", "bound_by", "check_listeners", "read_listener"]

# The TOML keys: the field names of config/model.py minus ``source``.
_LISTENER_KEYS = (
    "name", "bind", "mode", "tls", "redirect_https", "redirect_port", "trusted_proxies",
    "proxy_protocol", "forwarded", "pool", "acme", "h2c", "max_conns", "limits", "conn_limit",
    "egress", "auth", "hsts", "error_pages", "tunnel", *ACCESS_KEYS,
)  # fmt: skip
_TLS_KEYS = (
    "cert_dir", "certs", "unknown_sni", "alpn", "client_ca", "client_cert", "client_cert_header",
)  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_CLIENT_CERT: tuple[Literal["required", "optional"], ...] = ("required", "optional")
_CERT_KEYS = ("cert", "key")
_PROXY_PROTOCOL_KEYS = ("mode", "trusted", "timeout")

_MODES: tuple[Literal["http", "tcp", "forward", "socks5", "tunnel"], ...] = (
    "http", "tcp", "forward", "socks5", "tunnel",
)  # fmt: skip
_UNKNOWN_SNI: tuple[Literal["generated", "reject"], ...] = ("generated", "reject")
_PROXY_MODES: tuple[Literal["off", "optional", "required"], ...] = ("off", "optional", "required")
_ALPN = ("h2", "http/1.1")

# Defaults come from the dataclasses themselves, so config/model.py stays the one place for them.
_LISTENER = Listener(name="", bind=())
_TLS = ListenerTLS()
_PROXY_PROTOCOL = ProxyProtocolIn()


@dataclass
class ListenerRead:
    listener: Listener
    binds: list[tuple[str, Bind]]  # key path of each bind, for clash messages
    table: TableReader


def _read_tls(t: TableReader, mode: str) -> ListenerTLS:
    cert_dir = t.path("cert_dir", None)
    if cert_dir is not None and cert_dir.exists() and not cert_dir.is_dir():
        t.problem("cert_dir", f"{cert_dir} is not a directory")
    pairs: list[CertPair] = []
    for ct in t.tables("certs", _CERT_KEYS):
        cert = ct.path("cert", None, required='the certificate chain file, e.g. "fullchain.pem"')
        key = ct.path("key", None, required='the private key file, e.g. "privkey.pem"')
        if cert is None or key is None:
            continue
        pairs.append(CertPair(cert=cert, key=key))
        check = t.ctx.check_cert_pair
        reason = check(cert, key) if check is not None else ""
        if reason:
            ct.problem_here(reason)
    alpn = t.strings("alpn", _parse_alpn)
    t.unique("alpn", alpn)
    if t.raw("alpn") == []:
        t.problem("alpn", f"must name at least one protocol ({', '.join(_ALPN)})")
    client_ca = t.path("client_ca", None)
    if client_ca is not None:
        reason = ca_file_problem(client_ca)
        if reason:
            t.problem("client_ca", reason)
    for name in ("client_cert", "client_cert_header"):
        if t.has(name) and client_ca is None and t.valid("client_ca"):
            t.problem(name, "needs client_ca (the CAs client certificates are verified against)")
    header = t.string("client_cert_header", None)
    if header is not None and not _TOKEN.fullmatch(header):
        t.problem("client_cert_header", f"{header!r} is not a header name")
        header = None
    if mode == "tcp":
        # The relayed bytes are the client's own protocol: nothing HTTP is offered or added.
        if t.has("alpn"):
            t.problem("alpn", "not on a tcp listener (ALPN would announce HTTP to the client)")
        if t.has("client_cert_header"):
            t.problem(
                "client_cert_header",
                'only for mode = "http" (a tcp listener adds no headers; '
                'pass the subject with the pool\'s send_proxy = "v2")',
            )
        header = None
    return ListenerTLS(
        cert_dir=cert_dir,
        certs=tuple(pairs),
        unknown_sni=t.choice("unknown_sni", _UNKNOWN_SNI, _TLS.unknown_sni),
        alpn=() if mode == "tcp" else tuple(name for _, name in alpn) or _TLS.alpn,
        client_ca=client_ca,
        client_cert=t.choice("client_cert", _CLIENT_CERT, _TLS.client_cert),
        client_cert_header=header.lower() if header else None,
    )


def _parse_alpn(value: str) -> str:
    if value not in _ALPN:
        listed = ", ".join(f'"{name}"' for name in _ALPN)
        raise ValueError(f"expected one of {listed}, got {describe(value)}")
    return value


def _read_proxy_protocol(t: TableReader) -> ProxyProtocolIn:
    mode = t.choice("mode", _PROXY_MODES, _PROXY_PROTOCOL.mode)
    trusted = t.strings("trusted", parse_network)
    if mode != "off" and t.raw("trusted") in (MISSING, []):
        t.problem(
            "trusted",
            f'mode "{mode}" needs the addresses allowed to send PROXY headers '
            '(write e.g. trusted = ["10.0.0.0/8"])',
        )
    return ProxyProtocolIn(
        mode=mode,
        trusted=tuple(network for _, network in trusted),
        timeout=t.duration("timeout", _PROXY_PROTOCOL.timeout),
    )


def _parse_hsts(value: object) -> str:
    """A Strict-Transport-Security value: max-age required (RFC 6797 §6.1.1)."""
    text = header_value(value)
    directives = [d.strip().lower() for d in text.split(";") if d.strip()]
    ages = [d for d in directives if d.split("=", 1)[0].strip() == "max-age"]
    if len(ages) != 1:
        raise ValueError(f'"{text}" needs exactly one max-age (e.g. "max-age=63072000")')
    age = ages[0].split("=", 1)[1].strip().strip('"') if "=" in ages[0] else ""
    if not age.isdigit():
        raise ValueError(f'"{text}": max-age must be a number of seconds')
    known = {"max-age", "includesubdomains", "preload"}
    for d in directives:
        if d.split("=", 1)[0].strip() not in known:
            raise ValueError(
                f'"{text}": unknown directive "{d}" (max-age, includeSubDomains, preload)'
            )
    return text


def read_listener(index: int, entry: Entry, ctx: ReadContext) -> ListenerRead:
    t = TableReader(entry.data, f"listener[{index}]", entry.file, ctx, _LISTENER_KEYS)
    name = t.string("name", "", required='e.g. name = "https"')
    binds = t.strings("bind", parse_bind)
    if t.raw("bind") in (MISSING, []):
        t.problem("bind", 'needs at least one address (write e.g. bind = [":443"])')
    t.unique("bind", binds)
    mode = t.choice("mode", _MODES, _LISTENER.mode)
    tls_table = t.table("tls", _TLS_KEYS)
    tls = _read_tls(tls_table, mode) if tls_table is not None else None
    proxy_table = t.table("proxy_protocol", _PROXY_PROTOCOL_KEYS)
    trusted = t.strings("trusted_proxies", parse_network)
    access = read_access(t)
    conn_limit_table = t.table("conn_limit", CONN_LIMIT_KEYS)
    auth_table = t.table("auth", AUTH_KEYS)
    listener = Listener(
        name=name,
        bind=tuple(bind for _, bind in binds),
        mode=mode,
        tls=tls,
        redirect_https=t.boolean("redirect_https", _LISTENER.redirect_https),
        redirect_port=t.integer("redirect_port", _LISTENER.redirect_port, 1, 65535),
        trusted_proxies=tuple(network for _, network in trusted),
        proxy_protocol=(
            _read_proxy_protocol(proxy_table) if proxy_table is not None else _PROXY_PROTOCOL
        ),
        forwarded=t.boolean("forwarded", _LISTENER.forwarded),
        pool=t.string("pool", _LISTENER.pool),
        acme=t.boolean("acme", _LISTENER.acme),
        h2c=t.boolean("h2c", _LISTENER.h2c),
        max_conns=t.integer("max_conns", _LISTENER.max_conns, 1),
        allow=access.allow,
        deny=access.deny,
        allow_file=access.allow_file,
        deny_file=access.deny_file,
        limits=read_limit_names(t),
        conn_limit=read_conn_limit(conn_limit_table) if conn_limit_table is not None else None,
        egress=t.string("egress", _LISTENER.egress),
        auth=read_auth(auth_table) if auth_table is not None else None,
        hsts=t.parsed("hsts", _parse_hsts, None),
        error_pages=read_error_pages(t),
        tunnel=t.boolean("tunnel", _LISTENER.tunnel),
        source=entry.file,
    )
    if listener.tunnel and (mode != "http" or tls is None):
        # Agents tell themselves apart by ALPN in the ClientHello (docs/tunnel.md).
        t.problem(
            "tunnel",
            'only on a mode = "http" listener with tls (agents are told apart by ALPN; '
            'or give them a listener of their own with mode = "tunnel")',
        )
    if mode != "http":
        for key in ("hsts", "error_pages"):
            if t.has(key):
                t.problem(
                    key, f'only for mode = "http" (a {mode} listener sends no HTTP responses)'
                )
    elif t.has("hsts") and tls is None:
        t.problem(
            "hsts",
            "only on TLS listeners: RFC 6797 §7.2 says a Strict-Transport-Security header "
            "over plain HTTP must be ignored (redirect plain HTTP with redirect_https instead)",
        )
    if mode in ("forward", "socks5"):
        # The origin's way out (config/egress.py checks egress and auth with the whole config).
        if t.has("pool"):
            t.problem("pool", f"not on a {mode} listener: its clients name their destination")
        for key in ("tls", "redirect_https", "redirect_port", "trusted_proxies", "forwarded",
                    "acme", "h2c"):  # fmt: skip
            if t.has(key) and t.raw(key) is not False and t.raw(key) != []:
                t.problem(key, f'only for mode = "http" (a {mode} listener is a forward proxy)')
    elif mode == "tunnel":
        # Agents dial in (docs/tunnel.md): TLS with the tunnel CA under global.state_dir.
        for key in ("pool", "tls", "redirect_https", "redirect_port", "trusted_proxies",
                    "forwarded", "acme", "h2c"):  # fmt: skip
            if t.has(key) and t.raw(key) is not False and t.raw(key) != []:
                t.problem(
                    key,
                    "not on a tunnel listener (its TLS is the tunnel CA's, under "
                    "global.state_dir; pools reach agents with servers = [{ tunnel = ... }])",
                )
    elif mode == "tcp":
        if not t.has("pool"):
            t.problem("pool", "required on a tcp listener (the pool its connections go to)")
        http_only = ("redirect_https", "redirect_port", "trusted_proxies", "forwarded")
        for key in (*http_only, "acme", "h2c"):
            # false and [] say "not this" and are harmless; anything else is a mistake
            if t.has(key) and t.raw(key) is not False and t.raw(key) != []:
                t.problem(key, 'only for mode = "http" (a tcp listener relays bytes untouched)')
    else:
        if t.has("pool"):
            t.problem("pool", 'only for mode = "tcp"; http listeners reach pools through routes')
        if tls is not None and listener.redirect_https:
            t.problem(
                "redirect_https",
                "a TLS listener already serves HTTPS; set redirect_https on the plain listener",
            )
        if tls_table is not None and listener.acme:
            t.problem(
                "acme",
                "only on plain http listeners: ACME HTTP-01 challenges come over plain HTTP "
                "(to port 80); set acme on that listener",
            )
        if tls_table is not None and listener.h2c:
            t.problem(
                "h2c",
                "only on plain http listeners: h2c is HTTP/2 without TLS "
                '(for HTTP/2 over TLS, add "h2" to tls.alpn)',
            )
    return ListenerRead(listener, binds, t)


# --- what needs the whole config -----------------------------------------------------------


def _covers(wide: str, narrow: str) -> bool:
    """Whether binding `wide` takes the port on address `narrow` too."""
    if wide == "":
        return True
    if wide == "0.0.0.0":
        return narrow.count(".") == 3 and narrow.replace(".", "").isdigit()
    # asyncio binds IPv6 sockets IPV6_V6ONLY, so "::" takes only IPv6 addresses.
    return wide == "::" and ":" in narrow


def _clashes(bind: Bind, taken: Bind) -> bool:
    return bind.port == taken.port and (
        bind.host == taken.host or _covers(bind.host, taken.host) or _covers(taken.host, bind.host)
    )


def bound_by(bind: Bind, reads: Sequence[ListenerRead]) -> str:
    """':80 of listener "http" (listener[0].bind in conf/10-a.toml)' if a listener takes
    `bind`'s port on its address, else ""."""
    for read in reads:
        for key, taken in read.binds:
            if _clashes(bind, taken):
                listener = read.listener
                return f'{taken} of listener "{listener.name}" ({key} in {listener.source})'
    return ""


def check_listeners(reads: Sequence[ListenerRead], pools: Sequence[str], ctx: ReadContext) -> None:
    first_name: dict[str, int] = {}
    bound: list[tuple[int, str, Bind]] = []
    for index, read in enumerate(reads):
        listener, t = read.listener, read.table
        if listener.name in first_name:
            other = first_name[listener.name]
            t.problem(
                "name",
                f'duplicate listener name "{listener.name}" '
                f"(first used by listener[{other}] in {reads[other].listener.source})",
            )
        elif listener.name:
            first_name[listener.name] = index
        for key, bind in read.binds:
            for other, other_key, taken in bound:
                if other != index and _clashes(bind, taken):
                    clash = reads[other].listener
                    ctx.add(
                        t.file,
                        key,
                        f'{bind} clashes with {taken} of listener "{clash.name}" '
                        f"({other_key} in {clash.source})",
                    )
                    break
            bound.append((index, key, bind))
        if listener.mode == "tcp" and listener.pool and listener.pool not in pools:
            t.problem("pool", f'no pool named "{listener.pool}" ({defined("pool", pools)})')
    # What redirect_https can send a browser to: an http listener with tls (a tcp one is not).
    has_tls = any(read.listener.mode == "http" and read.listener.tls is not None for read in reads)
    for read in reads:
        listener = read.listener
        if (
            listener.mode == "http"
            and listener.redirect_https
            and listener.redirect_port is None
            and not has_tls
        ):
            read.table.problem(
                "redirect_https",
                "there is no TLS listener to redirect to (add one, or set redirect_port)",
            )


def answers_acme(lst: Listener) -> bool:
    """``listener.acme`` when set; else on for plain HTTP listeners bound to port 80."""
    if lst.mode != "http":
        return False
    if lst.acme is not None:
        return lst.acme
    return lst.tls is None and any(b.port == 80 for b in lst.bind)
