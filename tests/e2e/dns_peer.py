"""A tiny authoritative DNS server for the tests: UDP on a loopback port, records the test
changes while it runs (A, AAAA, SRV), every question it was asked, and a switch that makes it
answer SERVFAIL. Messages are read and written with dnspython; the rest is ours.

pebble-challtestsrv (the ACME tests' DNS server) serves A and AAAA the same way but no SRV;
the discovery tests use it where they can (tests/e2e/test_discovery.py).
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 1


class DnsPeer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.records: dict[tuple[str, str], list[str]] = {}  # (name, type) → rdata texts
        self.questions: list[tuple[str, str]] = []
        self.servfail = False
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.address = (host, int(self._sock.getsockname()[1]))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-peer", daemon=True)

    @property
    def resolver(self) -> str:
        """As ``[global] resolvers`` takes it."""
        return f"{self.address[0]}:{self.address[1]}"

    def set(self, name: str, rdtype: str, *rdata: str) -> None:
        """Replace the records of ``name`` and type (none: remove them). SRV rdata is
        "PRIORITY WEIGHT PORT TARGET."."""
        with self._lock:
            key = (name.lower().rstrip("."), rdtype)
            if rdata:
                self.records[key] = list(rdata)
            else:
                self.records.pop(key, None)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        with self._lock:
            self.questions.append((name, rdtype))
            rdata = list(self.records.get((name, rdtype), ()))
            exists = any(n == name for n, _ in self.records)
        if rdata:
            rrset = dns.rrset.from_text_list(q.name, TTL, dns.rdataclass.IN, q.rdtype, rdata)
            response.answer.append(rrset)
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def __enter__(self) -> DnsPeer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()
