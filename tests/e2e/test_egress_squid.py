"""Squid 5.7 as the reference: the seed's ACLs (Safe_ports, CONNECT only to SSL_ports, deny
to_localhost, an allow list) in Squid and the same policy in an ``[egress.NAME]``, the same
request list through both, the same allow/deny answers.

Allowed means the proxy tried the destination (200, or 502/503 for a name that does not
resolve); denied is a 403. The destination is a harness origin on 127.0.0.1, allowed in both
by its address before the loopback deny (Squid: ``http_access allow destip`` before ``deny
to_localhost``; revproxy: an address written in ``destinations`` is not refused by a class).
"""

from __future__ import annotations

import pytest
from egress_peers import squid
from harness import LOOPBACK, Origin, Proxy, curl, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def _answer(proxy_port: int, url: str, *, tunnel: bool) -> int:
    """The proxy's answer to one request: the status curl got from it (CONNECT: the
    CONNECT's status), 0 when the request went through a tunnel that failed later."""
    args = ["-o", "/dev/null", "-w", "%{http_connect} %{http_code}", "--max-time", "15",
            "--proxy", f"http://{LOOPBACK}:{proxy_port}"]  # fmt: skip
    if tunnel:
        args.append("-p")
    res = curl(*args, url, timeout=20)
    connect, code = res.stdout.decode().split()
    return int(connect if tunnel else code)


def test_same_answers_as_squid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = free_port()
    with Origin("dest") as origin:
        o = origin.port
        acls = f"""
acl Safe_ports port 80 443 1025-65535
acl SSL_ports port 443 {o}
acl CONNECT method CONNECT
acl destip dst 127.0.0.1/32
acl dests dstdomain .payments.invalid api.partner.invalid
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow destip
http_access deny to_localhost
http_access allow dests
http_access deny all
"""
        port = free_port()
        config = f"""
[[listener]]
name = "egress"
bind = ["{LOOPBACK}:{port}"]
mode = "forward"
egress = "seed"

[egress.seed]
destinations = ["127.0.0.1", "*.payments.invalid", "api.partner.invalid"]
ports = [80, 443, "1025-65535"]
connect_ports = [443, {o}]
deny = ["loopback", "private", "link-local", "metadata"]
"""
        requests = [
            (f"http://127.0.0.1:{o}/ok", False),  # allowed by address
            (f"http://127.0.0.1:{o}/tunnel", True),  # CONNECT to an SSL_port
            ("http://127.0.0.1:81/", False),  # not a Safe_port
            (f"http://127.0.0.1:{other}/", True),  # CONNECT to a port not in SSL_ports
            (f"http://127.0.0.2:{o}/", False),  # loopback, not listed
            # (Addresses off loopback — metadata, private — are not in this list: a proxy that
            # allowed one would send a packet off the machine. tests/proto covers them.)
            (f"http://x.payments.invalid:{o}/", False),  # allowed by name (does not resolve)
            ("http://api.partner.invalid/", False),  # allowed by name
            ("http://evil.invalid/", False),  # not listed
            ("http://127.0.0.1:22/", False),  # not a Safe_port
        ]
        with squid(acls) as squid_port, Proxy(tmp_path, config, ports=[port]):
            ours = [_answer(port, url, tunnel=t) for url, t in requests]
            theirs = [_answer(squid_port, url, tunnel=t) for url, t in requests]
    denied_ours = [code == 403 for code in ours]
    denied_squid = [code == 403 for code in theirs]
    assert denied_ours == denied_squid, list(zip(requests, ours, theirs, strict=True))
    assert denied_ours == [False, False, True, True, True, False, False, True, True]
    assert ours[0] == theirs[0] == 200 and ours[1] == theirs[1] == 200
