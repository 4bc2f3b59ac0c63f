"""DNS discovery: what the names of a pool's servers resolve to, and the servers that makes.

Rule of this room: a name is asked, never trusted to stay. ``Lookup`` asks the DNS servers
``[global] resolvers`` names (dnspython, over UDP with TCP on truncation), or the system's
when none is named (``getaddrinfo`` for addresses, so ``/etc/hosts`` counts; resolv.conf's
servers for SRV). ``members`` turns one configured server into the servers it stands for:

- ``{ address = "app.internal:8080", resolve = "all" }``: one member per A/AAAA address,
  with the configured port, weight, backup and max_conns;
- ``{ srv = "_http._tcp.app.internal" }``: one member per address of each SRV target, with
  the record's port and weight (scaled into 1..256 when larger); the targets of the lowest
  priority are primaries, those of higher priorities backups (RFC 2782: used only when the
  lower ones cannot be).

A name that does not exist or has no such record has no members (the servers it had leave
the pool); a lookup that fails (time-out, SERVFAIL, refused) raises ``DiscoveryError`` and the
caller keeps the members it had: a DNS server's bad minute must not empty a pool. The pool
applies the result (``Pool.set_found``); the runtime asks (``runtime/frontend.py``), once per
instance, in the master.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from revproxy.config.model import Server
from revproxy.upstream.pool import Member

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.exception

# dnspython is imported by the lookups that need it (named resolvers, SRV), not with this
# module: an instance that discovers nothing never loads it (about 5 MiB per process).

# Largest weight a server may have (config/pool.py); SRV weights above it are scaled down.
MAX_WEIGHT = 256


class DiscoveryError(Exception):
    """A lookup failed without an answer (not: the name has no such record)."""


@dataclass(frozen=True, slots=True)
class SrvTarget:
    priority: int
    weight: int
    port: int
    target: str  # without the final dot


class Lookup:
    """Address and SRV lookups against ``resolvers`` ((address, port) pairs; empty: the
    system's), each bounded by ``timeout`` seconds."""

    def __init__(self, resolvers: Sequence[tuple[str, int]] = (), timeout: float = 5.0) -> None:
        self.named = tuple(resolvers)
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _dns(self) -> dns.asyncresolver.Resolver:
        import dns.asyncresolver
        import dns.nameserver
        import dns.resolver

        if self._resolver is None:
            if self.named:
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = [dns.nameserver.Do53Nameserver(h, port) for h, port in self.named]
            else:
                try:
                    r = dns.asyncresolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise DiscoveryError(f"no DNS server configured: {exc}") from None
            r.lifetime = self.timeout
            r.timeout = min(self.timeout, 2.0)
            self._resolver = r
        return self._resolver

    async def addresses(self, name: str) -> tuple[str, ...]:
        """The IPv4 and IPv6 addresses of ``name``, sorted (empty: it has none)."""
        if not self.named:
            return await _system_addresses(name, self.timeout)
        import dns.exception
        import dns.resolver

        found: list[str] = []
        failures: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._dns().resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                failures.append(_why(exc))
                continue
            found.extend(rr.address for rr in answer)
        if failures and not found:
            raise DiscoveryError(failures[0])
        return tuple(sorted(set(found), key=_address_order))

    async def srv(self, name: str) -> list[SrvTarget]:
        """The SRV records of ``name`` (empty: it has none; a target of "." says "no
        service here" and is left out)."""
        import dns.exception
        import dns.resolver

        try:
            answer = await self._dns().resolve(name, "SRV", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DiscoveryError(_why(exc)) from None
        out = []
        for rr in answer:
            target = rr.target.to_text(omit_final_dot=True)
            if target and target != ".":
                out.append(SrvTarget(rr.priority, rr.weight, rr.port, target.lower()))
        return sorted(out, key=lambda t: (t.priority, t.target, t.port))


async def members(server: Server, lookup: Lookup) -> tuple[Member, ...]:
    """The servers ``server`` (``resolve = "all"`` or ``srv``) stands for right now."""
    if server.srv is None:
        return tuple(
            Member(
                host=address,
                port=server.port,
                weight=server.weight,
                backup=server.backup,
                max_conns=server.max_conns,
                hostname=server.address,
            )
            for address in await lookup.addresses(server.address)
        )
    targets = await lookup.srv(server.srv)
    if not targets:
        return ()
    best = min(t.priority for t in targets)
    heaviest = max(t.weight for t in targets)
    addresses = await asyncio.gather(*(lookup.addresses(t.target) for t in targets))
    out = []
    for t, found in zip(targets, addresses, strict=True):
        weight = t.weight if heaviest <= MAX_WEIGHT else round(t.weight * MAX_WEIGHT / heaviest)
        for address in found:
            out.append(
                Member(
                    host=address,
                    port=t.port,
                    weight=max(weight, 1),
                    backup=server.backup or t.priority != best,
                    max_conns=server.max_conns,
                    hostname=t.target,
                )
            )
    return tuple(out)


async def _system_addresses(name: str, timeout: float) -> tuple[str, ...]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return ()
        raise DiscoveryError(exc.strerror or str(exc)) from None
    except (OSError, TimeoutError) as failure:
        raise DiscoveryError(str(failure) or "timed out") from None
    return tuple(sorted({str(i[4][0]) for i in infos}, key=_address_order))


def _address_order(address: str) -> tuple[int, str]:
    return (1 if ":" in address else 0, address)


def _why(exc: dns.exception.DNSException) -> str:
    import dns.exception
    import dns.resolver

    if isinstance(exc, dns.exception.Timeout):
        return "no answer in time"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "every DNS server failed (SERVFAIL or refused)"
    return str(exc) or type(exc).__name__
