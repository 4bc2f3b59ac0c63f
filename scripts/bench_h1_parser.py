#!/usr/bin/env python3
"""Microbenchmark of one proxied HTTP/1.1 exchange through the parsers and the header policy.

Runs, in one process and without I/O, what the pipeline does for a request on a keep-alive
connection (``edge/h1_connection.py``, ``exchange.py``, ``upstream/dialer.py``), step by step:

    server parse       H1Server.receive_data(request)          → RequestReceived, MessageEnded
    request_headers    forwarding.request_headers(...)          (X-Forwarded-* appended)
    client serialise   H1Client.send_request + send_end
    client parse       H1Client.receive_data(response head + body)
                                                  → ResponseReceived, DataReceived, MessageEnded
    response_headers   forwarding.response_headers(...)         (hop-by-hop out, Server out)
    server serialise   H1Server.send_response + send_data + send_end
    next cycle         H1Client.reusable + start_next_cycle, H1Server.keep_alive +
                       start_next_cycle

Three cases: the plain ``GET /small`` of the load benchmark and a browser-like GET with a dozen
headers, both answered by an nginx-style response (8 header fields, 100-byte body); and the
browser GET again with its target, cookie and referrer, and the response's Date,
Last-Modified and ETag new in every exchange (20 000 of them, more than the parsers remember),
so that the lines the parsers remember help only with what really repeats. Each step
is timed with ``perf_counter_ns`` around it (the timer's own cost, measured, is taken off), over
many exchanges; the figure printed is the best of ``--runs`` short runs of the mean, in µs,
because other work on the machine only ever adds time (short runs: some escape it).
``total`` is timed separately, without timers between the steps.

Usage: ``scripts/bench_h1_parser.py [--impl fast|h11] [--n N] [--runs R]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revproxy.proto.events import (
    DataReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.forwarding import (
    ClientIdentity,
    HidingPolicy,
    request_headers,
    response_headers,
)
from revproxy.proto.http1 import exact as http1
from revproxy.proto.http1 import fast as http1_fast

SMALL_REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BROWSER_REQUEST = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Priority: u=0, i\r\n"
    b"\r\n"
)
BODY = b"x" * 100
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Date: Mon, 01 Jul 2024 12:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 100\r\n"
    b"Last-Modified: Mon, 01 Jul 2024 11:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "6682a0b0-64"\r\n'
    b"Accept-Ranges: bytes\r\n"
    b"\r\n" + BODY
)

STEPS = (
    "server parse",
    "request_headers",
    "client serialise",
    "client parse",
    "response_headers",
    "server serialise",
    "next cycle",
)
POLICY = HidingPolicy()
# exchange.py builds one per request (a frozen dataclass: about 1 µs more), outside the policy.
IDENTITY = ClientIdentity(address="127.0.0.1", scheme="https", host=b"127.0.0.1:8080", port=443)


def varied(i: int) -> tuple[bytes, bytes]:
    """The browser exchange with what changes from one request to the next new every time:
    the target, the cookie, the referrer; the response's Date, Last-Modified and ETag (and
    its length, one of a thousand)."""
    request = (
        BROWSER_REQUEST.replace(b"/static/app.js?v=3", b"/item/%d?v=3" % i)
        .replace(b"0123456789abcdef", b"%016x" % (i * 7919))
        .replace(b"Referer: https://www.example.com/", b"Referer: https://www.example.com/%d" % i)
    )
    body = b"x" * (100 + i % 1000)
    day, rest = divmod(i, 86400)
    now = b"%02d Jul 2024 %02d:%02d:%02d GMT" % (day + 1, rest // 3600, rest // 60 % 60, rest % 60)
    response = (
        RESPONSE[: RESPONSE.index(b"\r\n\r\n") + 4]
        .replace(b"Date: Mon, 01 Jul 2024 12:00:00 GMT", b"Date: Mon, " + now)
        .replace(b"Last-Modified: Mon, 01 Jul 2024 11:00:00 GMT", b"Last-Modified: Sun, " + now)
        .replace(b"Content-Length: 100", b"Content-Length: %d" % len(body))
        .replace(b"6682a0b0-64", b"%08x-%x" % (i, len(body)))
    ) + body
    return request, response


def exchange(
    server: Any,
    client: Any,
    request: bytes,
    response: bytes,
    clock: Callable[[], int] | None,
) -> list[int]:
    """One exchange on a keep-alive connection pair; the time of each step when ``clock``."""
    t = [clock()] if clock else []
    req, end = server.receive_data(request)
    if clock:
        t.append(clock())
    assert type(req) is RequestReceived and type(end) is MessageEnded
    headers = request_headers(req.headers, IDENTITY)
    if clock:
        t.append(clock())
    out = client.send_request(req.method, req.target, headers) + client.send_end(end.trailers)
    if clock:
        t.append(clock())
    resp, data, done = client.receive_data(response)
    if clock:
        t.append(clock())
    assert type(resp) is ResponseReceived and type(data) is DataReceived
    out_headers = response_headers(resp.headers, POLICY, scheme=b"https", host=req.authority)
    if clock:
        t.append(clock())
    out = server.send_response(resp.status, out_headers) + server.send_data(data.data)
    out += server.send_end(done.trailers)
    if clock:
        t.append(clock())
    assert client.reusable and server.keep_alive
    client.start_next_cycle()
    assert not server.start_next_cycle()
    if clock:
        t.append(clock())
    return t


def measure(
    module: Any, exchanges: list[tuple[bytes, bytes]], n: int, runs: int
) -> dict[str, float]:
    clock = time.perf_counter_ns
    # What two clock reads in a row cost: taken off every step.
    overhead = min(-(clock() - clock()) for _ in range(10000))
    best = dict.fromkeys((*STEPS, "sum of steps", "total"), float("inf"))
    server, client = module.H1Server(), module.H1Client()
    k = len(exchanges)
    for i in range(1000):
        exchange(server, client, *exchanges[i % k], None)  # warm up
    j = 0
    for _ in range(runs):
        sums = [0] * len(STEPS)
        for _ in range(n):
            t = exchange(server, client, *exchanges[j % k], clock)
            j += 1
            for i in range(len(STEPS)):
                sums[i] += t[i + 1] - t[i] - overhead
        steps = [s / n / 1000 for s in sums]
        for name, value in zip(STEPS, steps, strict=True):
            best[name] = min(best[name], value)
        best["sum of steps"] = min(best["sum of steps"], sum(steps))
        t0 = clock()
        for _ in range(n):
            exchange(server, client, *exchanges[j % k], None)
            j += 1
        best["total"] = min(best["total"], (clock() - t0) / n / 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("fast", "h11"), default="fast")
    parser.add_argument("--n", type=int, default=500, help="exchanges per run")
    parser.add_argument("--runs", type=int, default=200, help="runs; the best is printed")
    args = parser.parse_args()
    module = http1_fast if args.impl == "fast" else http1
    cases = {
        "GET /small": [(SMALL_REQUEST, RESPONSE)],
        "browser GET": [(BROWSER_REQUEST, RESPONSE)],
        "varied GET": [varied(i) for i in range(20_000)],
    }
    results = {name: measure(module, pairs, args.n, args.runs) for name, pairs in cases.items()}
    print(f"{args.impl}: µs per exchange step (best of {args.runs} runs of {args.n})")
    print(f"{'step':<18}" + "".join(f"{name:>14}" for name in cases))
    for step in (*STEPS, "sum of steps", "total"):
        print(f"{step:<18}" + "".join(f"{results[name][step]:>14.2f}" for name in cases))


if __name__ == "__main__":
    main()
