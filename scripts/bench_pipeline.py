#!/usr/bin/env python3
"""CPU per request of revproxy's HTTP/1.1 pipeline alone, in process: no sockets, no kernel.

A benchmark, never a test. The real ``HttpConnection``, ``Exchange``, parsers, header policy,
balancing and origin pool run on uvloop; only the transports are replaced by objects that
answer at once, on the next turn of the loop, as a peer that never makes anyone wait would:
the client sends its next request when a whole response arrived, the origin answers when a
whole request arrived. What is left is what Python costs per request — the part of
``scripts/bench``'s CPU-µs per request that is revproxy's own. Usage:

    scripts/bench_pipeline.py [--requests N] [--connections C] [--profile] [--policy]

``--rules`` adds a second route with every HTTP rule (match conditions, header edits,
compression, the cache) that the measured requests do not take: what plain requests pay for
the feature existing in the configuration (docs/http-rules.md).

``--cache`` puts the cache on the measured route and has the origin answer a response fresh
for ten minutes: every request after the first is a cache hit (what a hit costs in Python).

``--policy`` puts the edge policy in the path: an allow list of 100,000 networks on the listener,
a rate limit on the route (kept by the process, never reached) and Basic authentication on the
route, the client sending valid credentials (after the first, remembered, request no hash is
checked).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import email.utils
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from revproxy.config.load import load_config_text
from revproxy.edge.client_side import ConnInfo
from revproxy.edge.generation import build_generation
from revproxy.edge.h1_connection import HttpConnection
from revproxy.net.conn_io import ConnIO
from revproxy.upstream.dialer import BackendConnection

CONFIG = """
[global]
access_log = "off"
[[listener]]
name = "http"
bind = "127.0.0.1:8080"
[[route]]
pool = "origin"
[pool.origin]
servers = ["127.0.0.1:9000"]
keepalive = 256
"""

POLICY = """
[users.bench]
file = "{users}"

[limit.bench]
rate = "1000000000/1h"
"""
# With --policy: the listener's allow list and the route's auth (see the module docstring).
POLICY_LISTENER = 'allow_file = "{allow}"\n'
POLICY_ROUTE = 'auth = { users = "bench" }\nlimits = ["bench"]\n'

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
POLICY_REQUEST = (
    b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Authorization: Basic " + base64.b64encode(b"bench:bench-pw") + b"\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 03:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b"Last-Modified: Sun, 22 Nov 2026 02:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6740f4a0-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)


class Peer:
    """A transport whose far end answers every whole message on the next loop turn."""

    def __init__(self, io: ConnIO, answer: bytes, marker: bytes, budget: list[int]) -> None:
        self.io = io
        self.answer = answer
        self.marker = marker  # how a whole message written to us ends
        self.budget = budget  # requests left to send (client side)
        self.closing = False
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if data.endswith(self.marker):
            if self.budget[0] <= 0:
                self.loop.call_soon(self.io.eof_received)
                return
            self.budget[0] -= 1
            self.loop.call_soon(self.io.data_received, self.answer)

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.io.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def policy_config(directory: Path) -> str:
    """CONFIG with the edge policy of ``--policy`` (files written to ``directory``)."""
    users = directory / "bench.htpasswd"
    users.write_text("bench:" + bcrypt.hashpw(b"bench-pw", bcrypt.gensalt(4)).decode() + "\n")
    rng = random.Random(1)
    nets = [f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
            for _ in range(100_000)]  # fmt: skip
    allow = directory / "allow.txt"
    allow.write_text("\n".join([*nets, "127.0.0.0/8"]) + "\n")
    text = CONFIG.replace('bind = "127.0.0.1:8080"\n', 'bind = "127.0.0.1:8080"\n'
                          + POLICY_LISTENER.format(allow=allow))  # fmt: skip
    text = text.replace('pool = "origin"\n', 'pool = "origin"\n' + POLICY_ROUTE)
    return text + POLICY.format(users=users)


RULES_ROUTE = """
[[route]]
path = "/other/"
pool = "origin"
match = { methods = ["GET"], headers = { "x-api-version" = "~^v[23]$" } }
request_headers = { set = { "X-Env" = "prod" } }
compress = {}
cache = { ttl_max = "60s" }
"""


def cached_response() -> bytes:
    """RESPONSE, dated now and fresh for ten minutes."""
    now = email.utils.formatdate(usegmt=True).encode()
    return RESPONSE.replace(
        b"Date: Sun, 22 Nov 2026 03:00:00 GMT\r\n",
        b"Date: " + now + b"\r\nCache-Control: max-age=600\r\n",
    )


async def run(
    requests: int,
    connections: int,
    policy: bool = False,
    rules: bool = False,
    cache: bool = False,
) -> float:
    answer = RESPONSE
    if policy:
        with tempfile.TemporaryDirectory() as d:
            config = load_config_text([("10-bench.toml", policy_config(Path(d)))])
    else:
        text = CONFIG + (RULES_ROUTE if rules else "")
        if cache:
            text = (
                text.replace(
                    'pool = "origin"\n', 'pool = "origin"\ncache = { ttl_max = "60s" }\n', 1
                )
                + '[cache]\nsize = "64m"\n'
            )
            answer = cached_response()
        config = load_config_text([("10-bench.toml", text)])
    request = POLICY_REQUEST if policy else REQUEST
    gen = build_generation(config, number=1, default_pem=(b"", b""))
    lrt = gen.listeners["http"]
    pr = gen.pools["origin"]
    backend = pr.pool.backends[0]
    per_conn = requests // connections
    tasks = []
    budgets = []
    for _ in range(connections):
        origin_io = ConnIO()
        origin_io.connection_made(Peer(origin_io, answer, b"\r\n\r\n", [1 << 60]))  # type: ignore[arg-type]
        pr.dialer.release(BackendConnection(backend, origin_io, None), True)
        client_io = ConnIO()
        budget = [per_conn - 1]
        budgets.append(budget)
        client_io.connection_made(Peer(client_io, request, b"x" * 100, budget))  # type: ignore[arg-type]
        client_io.data_received(request)
        info = ConnInfo(
            peer=("127.0.0.1", 40000),
            client=("127.0.0.1", 40000),
            local=("127.0.0.1", 8080),
            destination=("127.0.0.1", 8080),
            local_port=8080,
            tls=False,
        )
        conn = HttpConnection(client_io, generation=gen, listener=lrt, info=info)
        tasks.append(conn.run())
    start = time.process_time()
    await asyncio.gather(*tasks)
    elapsed = time.process_time() - start
    served = per_conn * connections
    if any(b[0] for b in budgets):
        raise SystemExit(f"{sum(b[0] for b in budgets)} of {served} requests not served")
    return elapsed / served * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one round, top 25")
    ap.add_argument("--policy", action="store_true", help="allow list + Basic auth in the path")
    ap.add_argument("--rules", action="store_true", help="a second route with every HTTP rule")
    ap.add_argument("--cache", action="store_true", help="every request after the first a hit")
    opts = ap.parse_args()
    import uvloop

    if opts.profile:
        prof = cProfile.Profile()
        prof.enable()
        uvloop.run(run(opts.requests, opts.connections, opts.policy, opts.rules, opts.cache))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    best = min(
        uvloop.run(run(opts.requests, opts.connections, opts.policy, opts.rules, opts.cache))
        for _ in range(opts.rounds)
    )
    print(f"{best:.1f} µs of CPU per proxied request (best of {opts.rounds})")


if __name__ == "__main__":
    main()
