"""Configuration as frozen, typed data.

Rule of this room: a field name is the TOML key it comes from (``global`` is the one exception,
spelt ``global_`` because it is a Python keyword). Objects here are immutable and hold no live
state; ``config_load.py`` builds them and validates everything, ``generation.py`` turns them
into live objects. Durations are seconds (``float``); sizes are bytes (``int``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from revproxy.proto.destinations import DEFAULT_DENY, Rule

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BalanceName = Literal["roundrobin", "leastconn", "source", "uri", "random"]
BALANCE_NAMES: tuple[BalanceName, ...] = ("roundrobin", "leastconn", "source", "uri", "random")


@dataclass(frozen=True, slots=True, kw_only=True)
class Global:
    workers: int | Literal["auto"] = 1
    # "stdout" | "off" | a file path | "syslog" | "syslog:udp://HOST:PORT" | "syslog:unix:PATH"
    access_log: str = "stdout"
    # "text" | "json" | "combined" (nginx's) | a template with named fields (config/accesslog.py)
    access_log_format: str = "text"
    # The clock of the access log's timestamps (every line has one).
    log_time: Literal["utc", "local"] = "utc"
    # The syslog facility of access-log lines sent to syslog.
    facility: str = "local0"
    http1_parser: Literal["auto", "httptools", "h11"] = "auto"
    shutdown_timeout: float = 30.0
    # Time a client has to send a whole request head before it gets 408 (slowloris defence).
    header_timeout: float = 10.0
    # Time an idle client keep-alive connection is kept open between requests.
    keepalive_timeout: float = 60.0
    # Largest request or response head accepted (request over it: 431).
    max_header_size: int = 16384
    # Largest request body accepted (0 = no limit; bodies are streamed, never buffered).
    max_body_size: int = 0
    # Bytes one connection may hold for a peer that does not take them, each way: reading
    # from the other side stops past it (and, for a response, once the client's socket is full).
    buffer_size: int = 64 * 1024
    # All bytes held for slow readers in one process; past it the slowest are cut (0 = none).
    max_buffer_memory: int = 256 * 1024 * 1024
    # %2F, %5C, %00 and a literal backslash in a request path: refused with 400, or kept
    # (upper-cased) for origins that need them (proto/target.py).
    path_escaped_slashes: Literal["reject", "keep"] = "reject"
    # Request headers whose names contain "_": dropped (nginx's default) or kept
    # (proto/forwarding.py says why dropping is safer).
    underscores_in_headers: Literal["drop", "keep"] = "drop"
    # Where generated state lives (the generated default certificate of the demo, ...).
    state_dir: Path | None = None
    # Reload automatically when conf/*.toml change (debounced).
    watch: bool = True
    # Written at start (the master's pid) for `revproxy reload` and the certbot hook.
    pid_file: Path | None = None
    # HTTP/2 SETTINGS offered to clients.
    h2: H2Settings = field(default_factory=lambda: H2Settings())
    # Rate and connection limits count IPv6 clients by this prefix (one host has a /64).
    client_ipv6_prefix: int = 64
    # DNS servers (address, port) that resolve origin names; empty: the system's.
    resolvers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Settings:
    max_concurrent_streams: int = 100
    initial_window_size: int = 65535
    max_frame_size: int = 16384
    max_header_list_size: int = 16384
    # A client that resets more streams than this per second is sent GOAWAY (CVE-2023-44487).
    max_resets_per_second: int = 200
    # A client that sends more frames that carry no request than this per second (PING,
    # SETTINGS, PRIORITY, empty DATA, WINDOW_UPDATE on closed streams, ...) is sent GOAWAY
    # ENHANCE_YOUR_CALM (CVE-2019-9512/9513/9515/9518). Browsers, curl and nghttp2 send a
    # handful per connection (one or two SETTINGS, a PING now and then, a few PRIORITY); gRPC
    # clients ping for keepalive (seconds apart) and to size their windows: grpc-core spaces
    # those from 100 ms, grpc-go sends one per round trip while data arrives and its window is
    # under 16 MiB — past 1000 a second only on a path under a millisecond (raise this for such
    # clients). At 1000 a flooding connection costs about a millisecond of work a second.
    max_control_frames_per_second: int = 1000
    # Idle connections are pinged, then closed when the ping is not answered in time.
    ping_interval: float = 60.0
    ping_timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicAuth:
    user: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Admin:
    # Unix socket for `revproxy ctl` (mode 0660); None = no socket.
    socket: Path | None = None
    # Optional HTTP address serving /metrics and /stats.
    bind: Bind | None = None
    auth: BasicAuth | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Acme:
    # Challenge answers: files certbot --webroot wrote here (default) ...
    webroot: Path | None = Path("/var/lib/revproxy/acme")
    # ... or forwarded to certbot --standalone on this address while it runs.
    forward: str | None = None  # "127.0.0.1:8081"
    email: str | None = None
    certbot: str = "certbot"
    config_dir: Path = Path("/etc/letsencrypt")
    work_dir: Path = Path("/var/lib/letsencrypt")
    logs_dir: Path = Path("/var/log/letsencrypt")
    server: str | None = None  # ACME directory URL; None = certbot's default


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind:
    host: str  # "" = every address
    port: int

    def __str__(self) -> str:
        if not self.host:
            return f":{self.port}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyProtocolIn:
    mode: Literal["off", "optional", "required"] = "off"
    trusted: tuple[Network, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerTLS:
    cert_dir: Path | None = None
    certs: tuple[CertPair, ...] = ()
    unknown_sni: Literal["generated", "reject"] = "generated"
    # Offered in this order; "h2" is served by h2_proxy.py, "http/1.1" by http_proxy.py.
    # A tcp listener offers none (its reader sets ()).
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    # Client certificates: verified against these CAs (PEM); "required" refuses a handshake
    # without one, "optional" lets it in (with no subject in the log and no header).
    client_ca: Path | None = None
    client_cert: Literal["required", "optional"] = "required"
    # Request header naming the verified client's subject (RFC 4514) toward origins; a
    # client's own header of that name is always removed.
    client_cert_header: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """Who may come in (``allow``/``deny`` on a listener or a route): networks written in the
    configuration and read from ``allow_file``/``deny_file`` (kept to be watched)."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    allow_file: Path | None = None
    deny_file: Path | None = None

    @property
    def restricted(self) -> bool:
        """Whether anything is checked at all."""
        return bool(self.allow or self.deny or self.allow_file or self.deny_file)

    @property
    def allow_listed(self) -> bool:
        """With an allow list (even an empty file), only what it names comes in."""
        return bool(self.allow or self.allow_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    name: str
    bind: tuple[Bind, ...]
    # "forward" (HTTP forward proxy + CONNECT) and "socks5" serve an [egress.NAME] (egress/).
    mode: Literal["http", "tcp", "forward", "socks5", "tunnel"] = "http"
    tls: ListenerTLS | None = None
    redirect_https: bool = False
    # Port named in redirects to HTTPS; default: the first port of the first TLS listener.
    redirect_port: int | None = None
    trusted_proxies: tuple[Network, ...] = ()
    proxy_protocol: ProxyProtocolIn = field(default_factory=ProxyProtocolIn)
    # Add an RFC 7239 Forwarded header toward origins (X-Forwarded-* are always set).
    forwarded: bool = False
    pool: str | None = None  # mode = "tcp" only
    # Answer ACME HTTP-01 challenges on this plain listener; None = on when bound to port 80.
    acme: bool | None = None
    # Accept HTTP/2 with prior knowledge (h2c) on this plain listener.
    h2c: bool = False
    # Most client connections served at once (None = no limit).
    max_conns: int | None = None
    # allow/deny (config/access.py): networks, with those read from the files kept here too.
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    allow_file: Path | None = None
    deny_file: Path | None = None
    # [limit.NAME] tables counting this listener's requests (HTTP) or new connections (TCP,
    # TLS passthrough) per client (policy/limits.py).
    limits: tuple[str, ...] = ()
    # Concurrent connections (and HTTP/2 streams) per client.
    conn_limit: ConnLimit | None = None
    # mode = "forward" / "socks5": the [egress.NAME] its clients may reach, and who they are
    # (Proxy-Authorization and 407; SOCKS5: RFC 1929).
    egress: str | None = None
    auth: Auth | None = None
    # Strict-Transport-Security on every response of a TLS listener (RFC 6797).
    hsts: str | None = None
    # Files served for locally generated error statuses (a route's own come first).
    error_pages: tuple[ErrorPage, ...] = ()
    # An http listener with tls that also takes the reverse tunnel's agents (docs/tunnel.md):
    # a ClientHello offering revproxy-tunnel/1 (or -egress/1, -enroll/1) goes to the tunnel.
    tunnel: bool = False
    source: str = ""  # file it was read from

    @property
    def access(self) -> Access:
        return Access(
            allow=self.allow, deny=self.deny, allow_file=self.allow_file, deny_file=self.deny_file
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressTimeouts:
    connect: float = 5.0
    # A tunnel (CONNECT, SOCKS5) or a forward connection with no byte either way this long ends.
    idle: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Egress:
    """``[egress.NAME]``: where the origin's outbound calls may go (proto/destinations.py)."""

    name: str
    # Nothing: nothing is allowed (default deny); "*": anything deny does not refuse.
    destinations: tuple[Rule, ...] = ()
    # (low, high) port ranges every request must use; CONNECT and SOCKS5 also connect_ports.
    ports: tuple[tuple[int, int], ...] = ((80, 80), (443, 443), (1025, 65535))
    connect_ports: tuple[tuple[int, int], ...] = ((443, 443),)
    # Classes ("loopback", "private", "link-local", "metadata") and networks, checked on the
    # resolved address.
    deny: tuple[str | Network, ...] = DEFAULT_DENY
    # Local addresses outbound connections are bound to (the static egress IPs).
    source: tuple[str, ...] = ()
    balance: Literal["first", "roundrobin"] = "first"
    timeouts: EgressTimeouts = field(default_factory=EgressTimeouts)
    file: str = ""  # file it was read from (``source`` is a key here)


@dataclass(frozen=True, slots=True, kw_only=True)
class Respond:
    status: int = 200
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldMatch:
    """One ``match.headers`` or ``match.query`` condition: the field ``name`` (header names
    lower case) equals one of ``values`` or matches one of ``patterns`` (regular expressions,
    written ``"~..."`` in the file)."""

    name: str
    values: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """``[[route]] match``: conditions besides host and path; all given must hold."""

    methods: tuple[str, ...] = ()
    headers: tuple[FieldMatch, ...] = ()
    query: tuple[FieldMatch, ...] = ()
    src: tuple[Network, ...] = ()

    @property
    def conditions(self) -> int:
        """How many conditions: more is more specific (upstream/routing.py's order)."""
        return bool(self.methods) + len(self.headers) + len(self.query) + bool(self.src)


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderEdits:
    """``request_headers`` / ``response_headers``: removed, then set (replacing), then added.
    Values are templates: ``{client_ip}``, ``{request_id}``, ``{host}``, ``{user}``
    (proto/rewrite.py)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorPage:
    """A file served for a locally generated error status (read whole at load)."""

    status: int
    file: Path
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Compress:
    """``[[route]] compress`` (content/compress.py, proto/encoding.py)."""

    encodings: tuple[str, ...] = ("zstd", "br", "gzip")
    types: tuple[str, ...] = ()  # empty: proto/encoding.DEFAULT_TYPES
    min_size: int = 1024
    level: int | None = None  # None: each codec's default


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteCache:
    """``[[route]] cache`` (content/cache.py): opt in to the instance's ``[cache]``."""

    ttl_max: float = 60.0
    # Requests with Cookie / Authorization may be served and stored (off: they bypass).
    cookies: bool = False
    authorization: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Static:
    """``[[route]] static``: files under ``root`` (content/static.py)."""

    root: Path
    index: str | None = "index.html"


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    """``[cache]``: the memory every worker's cache may use, and its largest object."""

    size: int = 256 * 1024 * 1024
    max_object: int = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    host: tuple[str, ...] = ()  # lower-case names, "*.example.com" wildcards; empty = any host
    path: str = "/"
    pool: str | None = None
    redirect: str | None = None
    redirect_status: int = 308
    respond: Respond | None = None
    listeners: tuple[str, ...] = ()  # empty = every http listener
    # TLS passthrough: connections whose ClientHello names one of these go to `pool` undecrypted.
    sni: tuple[str, ...] = ()
    passthrough: bool = False
    # Forward the normalised path (proto/target.py); false keeps the client's raw path for
    # origins that need it (matching always uses the normalised one).
    normalize_path: bool = True
    # allow/deny (config/access.py), as on listeners.
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    allow_file: Path | None = None
    deny_file: Path | None = None
    # Users who may pass, and how they prove it (policy/auth.py); None: anyone.
    auth: Auth | None = None
    # Overrides of global.max_body_size and of the pool's timeouts for this route (None: theirs).
    max_body_size: int | None = None
    timeouts: RouteTimeouts | None = None
    # [limit.NAME] tables counting this route's requests (policy/limits.py).
    limits: tuple[str, ...] = ()
    # HTTP rules (config/rules.py, docs/http-rules.md).
    match: Match | None = None
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    strip_prefix: str | None = None
    add_prefix: str | None = None
    error_pages: tuple[ErrorPage, ...] = ()
    compress: Compress | None = None
    cache: RouteCache | None = None
    static: Static | None = None
    index: int = 0  # position in the merged config, for messages and stable ordering
    source: str = ""

    @property
    def access(self) -> Access:
        return Access(
            allow=self.allow, deny=self.deny, allow_file=self.allow_file, deny_file=self.deny_file
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    address: str  # host name or IP literal, no brackets
    port: int
    weight: int = 1
    backup: bool = False
    name: str | None = None
    max_conns: int | None = None
    # ``{ tunnel = "home/web" }``: the expose "web" of the agents enrolled as "home"
    # (docs/tunnel.md); ``address`` is then that same path and ``port`` 0.
    tunnel: str | None = None
    # ``resolve = "all"``: every address the name resolves to is a server of its own
    # (upstream/discovery.py); ``"one"``: one server whose addresses are tried in turn.
    resolve: Literal["one", "all"] = "one"
    # ``{ srv = "_http._tcp.app.internal" }``: a server per SRV target address, with the
    # record's port and weight; ``address`` is then that same name and ``port`` 0.
    srv: str | None = None

    @property
    def discovered(self) -> bool:
        """Its servers are found by DNS at run time (``resolve = "all"`` or ``srv``)."""
        return self.srv is not None or self.resolve == "all"

    def __str__(self) -> str:
        if self.tunnel is not None:
            return f"tunnel:{self.tunnel}"
        if self.srv is not None:
            return f"srv:{self.srv}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect: float = 5.0
    response: float = 60.0
    idle: float = 60.0
    # Upgraded connections (WebSocket) and L4 tunnels: no bytes either way for this long.
    tunnel: float = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """Active checks: HTTP GET `path` (expect `expect`), or a TCP connect when `tcp`."""

    path: str = "/"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    expect: str = "2xx"  # "2xx", "200", "200-399", "2xx,3xx"
    tcp: bool = False
    host: str | None = None  # Host header (default: the server's address)


@dataclass(frozen=True, slots=True, kw_only=True)
class Passive:
    """Consecutive connect failures / timeouts that mark a server down until `cooldown`."""

    failures: int = 3
    cooldown: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolTLS:
    """Re-encryption toward the origin servers."""

    sni: str | None = None
    verify: bool = True
    ca: Path | None = None  # None = the system's trust store
    # A client certificate (chain) and its key presented to origins that ask for one
    # (authenticated origin pulls); both or neither.
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    name: str
    servers: tuple[Server, ...]
    balance: BalanceName = "roundrobin"
    timeouts: Timeouts = field(default_factory=Timeouts)
    send_proxy: Literal["v1", "v2"] | None = None
    # Response headers removed before the client sees them (lower-case), on top of the
    # built-in origin identity headers.
    hide_headers: tuple[str, ...] = ()
    server_header: str = "remove"  # "keep" | "remove" | a replacement value
    # How often host names in `servers` are resolved again.
    resolve_interval: float = 30.0
    # Idle keep-alive connections kept per server.
    keepalive: int = 32
    health: Health | None = None
    passive: Passive | None = field(default_factory=Passive)
    # A server coming back ramps its weight up over this long (0 = at once).
    slow_start: float = 0.0
    protocol: Literal["http1", "h2", "h2c"] = "http1"
    tls: PoolTLS | None = None
    # The Host (HTTP/2: :authority) sent to the origin instead of the client's, which goes
    # in X-Forwarded-Host.
    host_header: str | None = None
    # TOML key ``source``: local addresses every connection to the servers is bound to, one
    # family's in turn (``source`` below is the file, as on every section).
    source_addresses: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEntry:
    """One line of a users file: an htpasswd password hash, or an htdigest HA1 for a realm."""

    user: str
    secret: str  # "$2y$…" (bcrypt), "$argon2id$…", or a hex HA1
    realm: str | None = None  # htdigest only


@dataclass(frozen=True, slots=True, kw_only=True)
class Users:
    """``[users.NAME] file = "staff.htpasswd"`` (or an htdigest file), read whole."""

    name: str
    file: Path
    kind: Literal["htpasswd", "htdigest"] = "htpasswd"
    entries: tuple[UserEntry, ...] = ()
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTimeouts:
    """``timeouts = { response = "…", idle = "…" }`` on a route: None keeps the pool's."""

    response: float | None = None
    idle: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """``auth = { users = "staff", scheme = "basic" }`` on a route (policy/auth.py)."""

    users: str
    scheme: Literal["basic", "digest"] = "basic"
    realm: str = "restricted"
    # Digest (RFC 7616): how long a nonce is good for, and how many requests may use it.
    nonce_ttl: float = 1800.0
    nonce_max_uses: int = 50
    # Send the Authorization header on to the origin (removed by default).
    pass_credentials: bool = False
    # Send the user's name to the origin in this header (a client's own is removed).
    user_header: str | None = None


LimitAction = Literal["reject", "log"]
StoreErrorAction = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """``[limit.NAME] rate = "100/10s"``: at most ``requests`` per ``period`` (sliding, see
    proto/ratelimit.py) plus ``burst``, counted per ``key`` (policy/limits.py)."""

    name: str
    requests: int
    period: float
    burst: int = 0
    # "client" | "user" | "client+route" | "header:<lower-case name>"
    key: str = "client"
    action: LimitAction = "reject"  # "log": count and log what would be refused, refuse nothing
    # RateLimit-Policy and RateLimit headers (draft-ietf-httpapi-ratelimit-headers) on 429s.
    headers: bool = False
    # None: the instance keeps the counters (shared by its workers); "redis://…": Redis does.
    store: str | None = None
    on_store_error: StoreErrorAction = "allow"
    source: str = ""

    @property
    def identity(self) -> str:
        """What the counters are kept under: a reload that changes none of it keeps them."""
        return f"{self.name}|{self.requests}/{self.period:g}+{self.burst}|{self.key}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnLimit:
    """``conn_limit = { per_client = 50, streams_per_client = 200 }`` on a listener."""

    per_client: int | None = None
    streams_per_client: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Tunnel:
    """``[tunnel.NAME]``: the agents enrolled as NAME may register (docs/tunnel.md)."""

    name: str
    # HTTP/2 receive window per stream on the agent connections (the bandwidth-delay
    # product of the link; the connection's window covers every stream's).
    stream_window: int = 4 * 1024 * 1024
    # Streams one agent connection carries at once.
    max_streams: int = 100
    # Pings: one every ``ping_interval``; ``ping_misses`` unanswered in a row is a dead agent.
    ping_interval: float = 10.0
    ping_misses: int = 3
    # The [egress.NAME] sections its agents' [[forward]]s may leave through.
    egress: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    global_: Global = field(default_factory=Global)
    listeners: tuple[Listener, ...] = ()
    routes: tuple[Route, ...] = ()
    pools: tuple[Pool, ...] = ()
    admin: Admin = field(default_factory=Admin)
    acme: Acme = field(default_factory=Acme)
    users: tuple[Users, ...] = ()
    limits: tuple[Limit, ...] = ()
    egress: tuple[Egress, ...] = ()
    tunnels: tuple[Tunnel, ...] = ()
    cache: CacheSettings = field(default_factory=CacheSettings)
    files: tuple[Path, ...] = ()

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def limit(self, name: str) -> Limit:
        for lim in self.limits:
            if lim.name == name:
                return lim
        raise KeyError(name)

    def egress_named(self, name: str) -> Egress:
        for egress in self.egress:
            if egress.name == name:
                return egress
        raise KeyError(name)

    def tunnel(self, name: str) -> Tunnel | None:
        for t in self.tunnels:
            if t.name == name:
                return t
        return None

    def listener(self, name: str) -> Listener:
        for lst in self.listeners:
            if lst.name == name:
                return lst
        raise KeyError(name)
