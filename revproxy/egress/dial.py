"""Toward a destination: resolve, judge every address again, connect from a static source.

Rule of this room: the destination the client named was already allowed by name
(proto/destinations.py ``check_request``); here each address it resolves to is judged against
``deny`` before a connection is attempted, so a name rebound to 127.0.0.1 or 169.254.169.254 is
refused whatever the name (DESIGN decision 9). Outbound sockets are bound to the egress's
``source`` addresses of the destination's family (``balance = "roundrobin"`` rotates them);
an address of a family with no source configured is skipped. Every wait is bounded by
``timeouts.connect``. Errors are values: ``Refused`` says why, with the HTTP status and the
SOCKS5 reply it implies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import socket
from dataclasses import dataclass

from revproxy.config.model import Egress
from revproxy.proto.destinations import DestinationPolicy, parse_deny
from revproxy.proto.socks5 import Reply

__all__ = ["Connected", "Outbound", "Refused", "compile_policy"]

# Refusal reasons past the policy (access log ``refused=``, metrics ``decision``).
RESOLVE = "resolve"  # the name did not resolve
CONNECT = "connect"  # no address could be connected
NO_SOURCE = "no-source"  # no source address of the destination's family
# IP_BIND_ADDRESS_NO_PORT (linux/in.h): Python names it from 3.12 on.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass(frozen=True, slots=True)
class Connected:
    sock: socket.socket
    resolved: str  # "ip:port" connected to
    local: tuple[str, int]  # the proxy's address toward the destination


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # "deny:loopback", "resolve", "connect", ...
    status: int  # the HTTP status a forward client gets
    reply: Reply  # the SOCKS5 reply a socks5 client gets
    resolved: str = ""  # the address refused or failed, when there was one
    detail: str = ""  # for the log


def compile_policy(egress: Egress) -> DestinationPolicy:
    classes: list[str] = []
    networks = []
    for entry in egress.deny:
        parsed = parse_deny(entry) if isinstance(entry, str) else entry
        if isinstance(parsed, str):
            classes.append(parsed)
        else:
            networks.append(parsed)
    return DestinationPolicy(
        rules=egress.destinations,
        ports=egress.ports,
        connect_ports=egress.connect_ports,
        deny_classes=tuple(classes),
        deny_networks=tuple(networks),
    )


def _shown(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class Outbound:
    """One egress section's way out: its policy, its sources, its connect timeout."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.policy = compile_policy(egress)
        self.connect_timeout = egress.timeouts.connect
        v4 = [s for s in egress.source if ipaddress.ip_address(s).version == 4]
        v6 = [s for s in egress.source if ipaddress.ip_address(s).version == 6]
        self._sources: dict[int, list[str]] = {int(socket.AF_INET): v4, int(socket.AF_INET6): v6}
        self._turn: dict[int, itertools.count[int]] = {
            int(socket.AF_INET): itertools.count(),
            int(socket.AF_INET6): itertools.count(),
        }

    def _source(self, family: int) -> str | None:
        """The local address for a connection of ``family``; "" for any (no sources set),
        None when sources are set but none of this family."""
        if not self.egress.source:
            return ""
        options = self._sources.get(family) or []
        if not options:
            return None
        if self.egress.balance == "roundrobin":
            return options[next(self._turn[family]) % len(options)]
        return options[0]

    async def resolve(self, host: str, port: int) -> list[tuple[int, str]] | Refused:
        """(family, address) of ``host`` in resolver order, or why not."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            return [(family, str(ip))]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            return Refused(RESOLVE, 502, Reply.HOST_UNREACHABLE, detail=str(exc) or "timeout")
        out: list[tuple[int, str]] = []
        for family, _, _, _, sockaddr in infos:
            entry = (int(family), str(sockaddr[0]))
            if entry not in out:
                out.append(entry)
        if not out:
            return Refused(RESOLVE, 502, Reply.HOST_UNREACHABLE, detail="no address")
        return out

    async def open(self, host: str, port: int) -> Connected | Refused:
        """A connected non-blocking socket to ``host:port`` from an allowed address, or why
        not (the request itself was allowed by name already)."""
        found = await self.resolve(host, port)
        if isinstance(found, Refused):
            return found
        allowed: list[tuple[int, str]] = []
        refusal: Refused | None = None
        for family, address in found:
            reason = self.policy.check_address(address)
            if reason:
                refusal = refusal or Refused(
                    reason, 403, Reply.NOT_ALLOWED, resolved=_shown(address, port)
                )
            else:
                allowed.append((family, address))
        if not allowed:
            assert refusal is not None
            return refusal
        failure: Refused | None = None
        for family, address in allowed:
            source = self._source(family)
            if source is None:
                failure = failure or Refused(
                    NO_SOURCE, 502, Reply.NETWORK_UNREACHABLE, resolved=_shown(address, port)
                )
                continue
            result = await self._connect(family, address, port, source)
            if isinstance(result, Connected):
                return result
            failure = result
        assert failure is not None
        return failure

    async def _connect(
        self, family: int, address: str, port: int, source: str
    ) -> Connected | Refused:
        loop = asyncio.get_running_loop()
        shown = _shown(address, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source:
                # The port is chosen at connect time, for the 4-tuple: connections from one
                # source to many destinations do not share one set of ephemeral ports.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            async with asyncio.timeout(self.connect_timeout):
                await loop.sock_connect(sock, (address, port))
            local = sock.getsockname()
        except TimeoutError:
            sock.close()
            return Refused(CONNECT, 504, Reply.HOST_UNREACHABLE, shown, "connect timed out")
        except OSError as exc:
            sock.close()
            reply = {
                errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
                errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
            }.get(exc.errno or 0, Reply.CONNECTION_REFUSED)
            return Refused(CONNECT, 502, reply, shown, exc.strerror or str(exc))
        except BaseException:
            sock.close()
            raise
        return Connected(sock, shown, (str(local[0]), int(local[1])))
