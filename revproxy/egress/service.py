"""One forward or socks5 listener's service: its egress section, its users, its records.

Rule of this room: built with the generation (``build_service``, plugged in by the runtime),
immutable but for the caches it carries over a reload (verified passwords, Digest nonce counts,
kept when the listener's ``auth`` and users did not change; the way out and the kept
destination connections, kept when the ``[egress.NAME]`` section did not change). Every
request or tunnel, allowed or refused, writes one access-log line — user, client,
destination, resolved address, decision, bytes each way, duration — and is counted in
``revproxy_egress_total``; a refusal also writes one log line saying why.

A reload retires the service (``retire``, by the runtime as it swaps generations): it then
names the listener's service in the new generation, or none when the listener is gone. A
connection accepted under it keeps it for what is in flight (a tunnel, a response), and
judges each new request by ``latest()`` (egress/forward.py).
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from revproxy.config.model import Config, Global, Listener
from revproxy.egress.dial import Outbound
from revproxy.egress.forward import serve_forward
from revproxy.egress.origins import Origin, OriginPool
from revproxy.egress.socks import serve_socks5
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.ops.accesslog import AccessLog, AccessRecord
from revproxy.ops.metrics import RequestMetrics
from revproxy.policy.access import AccessList
from revproxy.policy.auth import Authenticator
from revproxy.proto import httpauth
from revproxy.proto.forward_proxy import PlainExchanges
from revproxy.proto.http1.api import H1ClientAPI, H1ServerAPI, client_class, server_class

__all__ = ["SERVICES", "TUNNELS_OPEN", "ClientConn", "EgressService", "build_service"]

log = logging.getLogger("revproxy.egress")

# Destination verdicts remembered per service (forgotten whole when full).
VERDICTS_KEPT = 4096

# The gauge of tunnels open (CONNECT and SOCKS5), by listener: each serving process counts
# its own, /metrics and the admin's egress rows sum them (runtime/stats.py reads it by name).
TUNNELS_OPEN = "revproxy_egress_tunnels_open"
TUNNELS_OPEN_HELP = "CONNECT and SOCKS5 tunnels open (mode forward, socks5), by listener."

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


def request_id() -> str:
    return f"{_ID_PREFIX}e{next(_ids):x}"


@dataclass(slots=True)
class ClientConn:
    """Who is on the other end of one accepted connection (established by the edge)."""

    client: tuple[str, int]
    peer: str
    authority: str
    vpce: str
    access_log: AccessLog
    metrics: RequestMetrics


class EgressService:
    """Serves the connections of one ``mode = "forward"`` or ``"socks5"`` listener."""

    def __init__(
        self,
        listener: Listener,
        global_: Global,
        outbound: Outbound,
        authenticator: Authenticator | None,
        origins: OriginPool | None = None,
    ) -> None:
        self.listener = listener
        self.name = listener.name
        self.global_ = global_
        self.outbound = outbound
        self.policy = outbound.policy
        self.authenticator = authenticator
        self.idle_timeout = outbound.egress.timeouts.idle
        self.h1_server: type[H1ServerAPI] = server_class(global_.http1_parser)
        self.h1_client: type[H1ClientAPI] = client_class(global_.http1_parser)
        # Kept connections to destinations (HTTP forward), shared by this listener's clients
        # (and handed on by a reload that keeps the egress section: ``build_service``).
        self.origins = origins if origins is not None else OriginPool(self.idle_timeout)
        # Plain exchanges the parsers read whole (proto/forward_proxy.py), by their bytes.
        self.plain = PlainExchanges(self.new_h1_server, self.new_h1_client)
        # (host, port, tunnel) → the policy's verdict: a memo of a pure function, bounded.
        self._verdicts: dict[tuple[str, int, bool], str] = {}
        # Set by the runtime as the generation goes in (``installed``): the listener's
        # allow/deny as the edge applies it, and the generation's access log. A connection
        # that follows a reload to this service is judged and logged by them.
        self.access: AccessList | None = None
        self.access_log: AccessLog | None = None
        # Set by the runtime when a reload retires this service (``retire``).
        self.retired = False
        self.successor: EgressService | None = None

    # --- reloads -------------------------------------------------------------------------

    def installed(self, access: AccessList | None, access_log: AccessLog) -> None:
        """The generation this service belongs to is the current one."""
        self.access = access
        self.access_log = access_log

    def retire(self, successor: EgressService | None) -> None:
        """A reload replaced this service by ``successor`` (the listener's service in the new
        generation), or by nothing (the listener is gone, or no longer of this mode). Idle
        destination connections it kept close, unless ``successor`` took them over."""
        self.retired = True
        self.successor = successor
        if successor is None or successor.origins is not self.origins:
            self.origins.clear()

    def latest(self) -> EgressService | None:
        """The service that judges a new request of a connection accepted under this one:
        itself, or after reloads the listener's current service; None when the listener is
        gone."""
        svc = self
        while svc.retired:
            successor = svc.successor
            if successor is None:
                return None
            svc = successor
        return svc

    def keep(self, origin: Origin) -> None:
        """A destination connection a client connection leaves behind: kept for the
        listener's other clients while the rules it was opened under hold (this service, or
        one that took its connections over), closed otherwise."""
        latest = self.latest()
        if latest is None or latest.origins is not self.origins:
            origin.close()
        else:
            self.origins.give(origin)

    def new_h1_server(self) -> H1ServerAPI:
        return self.h1_server(max_header_size=self.global_.max_header_size)

    def new_h1_client(self) -> H1ClientAPI:
        return self.h1_client(max_header_size=self.global_.max_header_size)

    def check_request(self, host: str, port: int, tunnel: bool) -> str:
        """``DestinationPolicy.check_request``, remembered (the policy never changes)."""
        key = (host, port, tunnel)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self.policy.check_request(host, port, tunnel=tunnel)
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    async def serve(
        self,
        csock: socket.socket,
        *,
        client: tuple[str, int],
        peer: str,
        authority: str,
        vpce: str,
        access_log: AccessLog,
        metrics: RequestMetrics,
    ) -> None:
        conn = ClientConn(client, peer, authority, vpce, access_log, metrics)
        if self.listener.mode == "socks5":
            await serve_socks5(self, csock, conn)
        else:
            await serve_forward(self, csock, conn)

    # --- users ---------------------------------------------------------------------------

    async def authenticate(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        method: bytes,
        target: bytes,
        path: bytes = b"",
    ) -> tuple[str | None, bytes]:
        """(user, b"") when ``Proxy-Authorization`` proves a user (or none is needed:
        ("", b"")), else (None, the Proxy-Authenticate challenge)."""
        auth = self.authenticator
        if auth is None:
            return "", b""
        # The route authenticator reads Authorization; a proxy's credentials come in
        # Proxy-Authorization (RFC 9110 §11.7.2), with the same schemes and arithmetic.
        proxied = [(b"authorization", v) for n, v in headers if n == b"proxy-authorization"]
        known = auth.known(proxied)
        if known is not None:
            return known, b""
        if path and auth.auth.scheme == "digest" and proxied:
            # Digest's uri is the request target; for absolute-form curl (and Squid, which
            # accepts it) sends the path alone. Either names this request.
            creds = httpauth.parse_digest(proxied[0][1])
            if creds is not None and creds.uri.encode("latin-1", "replace") == path:
                target = path
        verdict = await auth.check(proxied, method, target)
        return verdict.user, verdict.challenge

    def known_user(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The user ``Proxy-Authorization`` proves without a coroutine: "" when no ``auth``
        is set, the user a value already proved (Basic), or None (``authenticate`` decides)."""
        auth = self.authenticator
        if auth is None:
            return ""
        return auth.known(
            [(b"authorization", v) for n, v in headers if n == b"proxy-authorization"]
        )

    async def check_password(self, user: str, password: str) -> bool:
        """RFC 1929: the user and password a SOCKS5 client sent, checked as Basic."""
        auth = self.authenticator
        if auth is None:
            return True
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        found, _ = await self.authenticate(
            [(b"proxy-authorization", f"Basic {token}".encode())], b"CONNECT", b""
        )
        return found is not None and found == user

    # --- records -------------------------------------------------------------------------

    def record(self, conn: ClientConn, method: str) -> AccessRecord:
        return AccessRecord(
            id=request_id(),
            client=conn.client[0],
            peer=conn.peer,
            listener=self.name,
            sni="",
            host="",
            method=method,
            path="",
            status=0,
            bytes_in=0,
            bytes_out=0,
            route="",
            pool=self.outbound.egress.name,
            backend="-",
            duration_ms=0.0,
            upstream_ms=0.0,
            authority=conn.authority,
            vpce=conn.vpce,
        )

    def refused(self, rec: AccessRecord, reason: str, detail: str = "") -> None:
        """The log line of a refusal (the access-log line is written by ``finish``)."""
        rec.refused = reason
        log.info(
            "id=%s listener=%s user=%s client=%s destination=%s resolved=%s decision=%s%s",
            rec.id,
            self.name,
            rec.user or "-",
            rec.client,
            rec.destination or "-",
            rec.resolved or "-",
            reason,
            f" ({detail})" if detail else "",
        )

    def tunnels_open(self, conn: ClientConn, change: int) -> None:
        """A tunnel of this listener opened (+1) or ended (-1)."""
        gauge = conn.metrics.registry.gauge(TUNNELS_OPEN, TUNNELS_OPEN_HELP, ("listener",))
        gauge.inc((self.name,), change)

    @staticmethod
    def finish(conn: ClientConn, rec: AccessRecord, *, request: bool) -> None:
        """Write ``rec``: one access-log line, the egress decision counter, and for a relayed
        HTTP request the request counters too."""
        conn.access_log.record(rec)
        if request:
            conn.metrics.record(rec)
        conn.metrics.egress_decision(rec)


def build_service(
    listener: Listener, config: Config, previous: object | None, nonce_key: bytes
) -> EgressService:
    """The service of ``listener`` (mode forward or socks5) in a new generation."""
    try:
        egress = config.egress_named(listener.egress or "")
    except KeyError:
        raise ConfigError(
            [ConfigProblem(listener.source, f"listener.{listener.name}.egress", "no such egress")]
        ) from None
    authenticator: Authenticator | None = None
    if listener.auth is not None:
        users = next((u for u in config.users if u.name == listener.auth.users), None)
        if users is None:
            raise ConfigError(
                [ConfigProblem(listener.source, f"listener.{listener.name}.auth", "no such users")]
            )
        old = previous.authenticator if isinstance(previous, EgressService) else None
        if old is not None and old.auth == listener.auth and old.users == users:
            authenticator = old
        else:
            authenticator = Authenticator(listener.auth, users, nonce_key)
    if isinstance(previous, EgressService) and previous.outbound.egress == egress:
        # The same section: the same way out (its turn of sources goes on) and the same kept
        # destination connections (their addresses were judged by these very rules).
        return EgressService(
            listener, config.global_, previous.outbound, authenticator, previous.origins
        )
    return EgressService(listener, config.global_, Outbound(egress), authenticator)


# Listener modes this part serves → their builder (runtime/frontend.py hands this to
# edge/generation.py's build_generation).
SERVICES = {"forward": build_service, "socks5": build_service}
