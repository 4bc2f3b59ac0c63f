#!/usr/bin/env python3
"""The benchmark behind ``scripts/bench``: revproxy against HAProxy and nginx, on loopback.

A benchmark, never a test: it measures and writes ``docs/benchmarks.md``; it asserts nothing.

What it does, bounded in time (default ~10 min, ``--quick`` ~2 min):

1. installs what is missing (wrk, h2load, haproxy, nginx, taskset, openssl) with apt-get;
2. starts an origin (nginx, one worker, serving a 100 B and a 1 MiB file, plain and TLS) and
   the targets: the origin itself ("direct"), HAProxy (one thread), nginx (one worker),
   revproxy (``python -m revproxy run -c <tmp conf>``, ``workers = 1``, and ``"auto"`` when
   the supervisor starts several workers), and two bare forwarders
   (``scripts/bare_forwarder.py``, h11 and httptools) that show the floor of a Python proxy;
3. for each round (3, or 1 with ``--quick``), runs every scenario against every target in
   turn, rotating the order each round: HTTP small keep-alive and 1 MiB bodies (wrk), HTTPS
   small keep-alive (wrk), new TLS handshakes full and resumed by ticket (``openssl s_time``),
   HTTP/2 small (h2load), and L4 TCP (``scripts/bench_l4.py``, when it exists);
4. writes the medians — req/s, p50/p99, MB/s, CPU-µs per request of the proxy's processes
   (from /proc) and ratios to HAProxy — with the machine, the versions and the goals of the
   performance issue, to ``docs/benchmarks.md``; ``--profile`` adds py-spy's top functions.

Pinning (``taskset``): proxies on CPU 0 (``workers = "auto"`` on every CPU), the origin and the
load generators on CPU 1. Everything listens on 127.0.0.1. Only processes started here are
stopped, by their own PID or session.
"""

# ruff: noqa: RUF001  (the report writes a multiplication sign for ratios)
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_sections import carry_over

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
PROXY_CPUS = "0"
PEER_CPUS = "1"
# Bounds: start-up of a process, one load run beyond its own duration, stopping a process.
START_TIMEOUT = 30.0
RUN_SLACK = 30.0
STOP_TIMEOUT = 5.0
SMALL = 100
BIG = 1 << 20
TOOLS = {
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "haproxy": "haproxy",
    "nginx": "nginx",
    "taskset": "util-linux",
    "openssl": "openssl",
}

# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _pythonpath() -> str:
    """The repository first, then the caller's own PYTHONPATH (a ``sitecustomize`` that
    profiles each process, say)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus and shutil.which("taskset") else argv


def _proc_table() -> dict[int, int]:
    """pid → parent pid, for every process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def process_tree(pid: int) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for child, parent in table.items():
        children[parent].append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


class Service:
    """One process we start (in its own session), pinned, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str | None,
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = pinned(cpus, argv)
        self.workdir = workdir
        self.env = env
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ports: list[int]) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}: "
                        + self.log.read_text(errors="replace")[-2000:]
                    )
                try:
                    with socket.create_connection((LOOPBACK, port), timeout=1.0):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} did not listen on {port}") from None
                    time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.alive else []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the session we created for it
            proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a crash, if any


# --- load generators -----------------------------------------------------------------------


@dataclass
class Run:
    """One measurement of one target in one scenario."""

    rate: float | None = None  # requests, handshakes per second
    mb_s: float | None = None  # MB (10^6 bytes) per second received by the client
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None  # CPU of the proxy's processes per request
    count: int = 0
    errors: str = ""

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _latency_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m[1]) * _UNITS[m[2]] if m else float("nan")


def run_wrk(url: str, conns: int, seconds: float, headers: tuple[str, ...] = ()) -> Run:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    out = subprocess.run(
        pinned(PEER_CPUS, argv), capture_output=True, text=True, timeout=seconds + RUN_SLACK
    ).stdout
    run = Run()
    if m := re.search(r"([\d.]+)\s+requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out):
        run.count = int(m[1])
        elapsed = float(m[2]) * {"ms": 1e-3, "s": 1.0, "m": 60.0}.get(m[3], 1.0)
        run.mb_s = float(m[4]) * _BYTES.get(m[5], 1) / 1e6 / elapsed
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        run.rate = float(m[1])
    if m := re.search(r"^\s+50%\s+(\S+)", out, re.M):
        run.p50_ms = _latency_ms(m[1])
    if m := re.search(r"^\s+99%\s+(\S+)", out, re.M):
        run.p99_ms = _latency_ms(m[1])
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m[1]} non-2xx")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append("socket errors: " + m[1])
    if run.rate is None:
        errors.append("wrk: " + out.strip()[-200:])
    run.errors = "; ".join(errors)
    return run


# s_time writes "GET <path> HTTP/1.0\r\n\r\n". Its path carries the rest of a complete HTTP/1.1
# request (Host, Connection: close), so that every proxy answers the same request: an HTTP/1.0
# request without Host is legal, but it is not what this scenario measures.
_S_TIME_PATH = "/small HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\nX-Bench:"


def run_s_time(port: int, mode: str, seconds: float) -> Run:
    argv = ["openssl", "s_time", "-connect", f"{LOOPBACK}:{port}", mode]
    argv += ["-time", str(max(1, round(seconds))), "-www", _S_TIME_PATH]
    start = time.monotonic()
    proc = subprocess.run(
        pinned(PEER_CPUS, argv), capture_output=True, text=True, timeout=seconds + RUN_SLACK
    )
    elapsed = time.monotonic() - start
    run = Run()
    m = re.search(r"(\d+) connections in [\d.]+ real seconds, (\d+) bytes read", proc.stdout)
    if m:
        run.count = int(m[1])
        run.rate = run.count / elapsed
        if int(m[2]) < SMALL:
            run.errors = f"{m[2]} bytes read per connection: no complete response"
    else:
        run.errors = "s_time: " + (proc.stdout + proc.stderr).strip()[-200:]
    return run


def run_h2load(url: str, seconds: float) -> Run:
    argv = ["h2load", "-c", "8", "-m", "16", "-D", str(max(1, round(seconds))), url]
    out = subprocess.run(
        pinned(PEER_CPUS, argv), capture_output=True, text=True, timeout=seconds + RUN_SLACK
    ).stdout
    run = Run()
    if m := re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s, ([\d.]+)(\w+)/s", out):
        run.rate = float(m[2])
        run.mb_s = float(m[3]) * _BYTES.get(m[4], 1) / 1e6
    if m := re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out
    ):
        run.count = int(m[1])
        if int(m[2]):
            run.errors = f"{m[2]} failed (in flight when the run ended)"
    if m := re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out):
        run.p50_ms = _latency_ms(m[1])  # h2load gives the mean, not percentiles
    if run.rate is None:
        run.errors = "h2load: " + out.strip()[-200:]
    return run


# --- configurations --------------------------------------------------------------------------


def origin_conf(work: Path, http: int, https: int) -> str:
    return f"""worker_processes 1;
daemon off;
pid {work}/origin.pid;
error_log {work}/origin-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
    server {{
        listen {LOOPBACK}:{http} backlog=4096;
        listen {LOOPBACK}:{https} ssl http2 backlog=4096;
        ssl_certificate {work}/cert.pem;
        ssl_certificate_key {work}/key.pem;
        root {work}/www;
    }}
}}
"""


def haproxy_conf(work: Path, http: int, https: int, origin: int) -> str:
    return f"""global
    nbthread 1
    maxconn 4000
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend bench
    bind {LOOPBACK}:{http}
    bind {LOOPBACK}:{https} ssl crt {work}/cert+key.pem alpn h2,http/1.1
    default_backend origin
backend origin
    http-reuse always
    server origin {LOOPBACK}:{origin}
"""


def nginx_proxy_conf(work: Path, http: int, https: int, origin: int) -> str:
    return f"""worker_processes 1;
daemon off;
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy-error.log;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
    upstream origin {{ server {LOOPBACK}:{origin}; keepalive 128; keepalive_requests 1000000; }}
    server {{
        listen {LOOPBACK}:{http} backlog=4096;
        listen {LOOPBACK}:{https} ssl http2 backlog=4096;
        ssl_certificate {work}/cert.pem;
        ssl_certificate_key {work}/key.pem;
        ssl_session_tickets on;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def revproxy_policy_conf(work: Path, http: int, origin: int) -> str:
    """The revproxy-policy target: revproxy's plain listener with the edge policy."""
    import bcrypt

    users = work / "bench.htpasswd"
    user, password = POLICY_USER
    users.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
    rng = random.Random(1)
    nets = [f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
            for _ in range(100_000)]  # fmt: skip
    allow = work / "allow.txt"
    allow.write_text("\n".join([*nets, f"{LOOPBACK}/32"]) + "\n")
    return f"""[global]
access_log = "off"
watch = false
keepalive_timeout = "300s"

[[listener]]
name = "http"
bind = ["{LOOPBACK}:{http}"]
allow_file = "{allow}"

[[route]]
pool = "origin"
auth = {{ users = "bench" }}
limits = ["bench"]

[pool.origin]
servers = ["{LOOPBACK}:{origin}"]
keepalive = 256

[users.bench]
file = "{users}"

[limit.bench]
rate = "1000000000/1h"
"""


def revproxy_conf(work: Path, http: int, https: int, origin: int, workers: str, parser: str) -> str:
    return f"""[global]
workers = {workers}
access_log = "off"
watch = false
http1_parser = "{parser}"
keepalive_timeout = "300s"

[[listener]]
name = "http"
bind = ["{LOOPBACK}:{http}"]

[[listener]]
name = "https"
bind = ["{LOOPBACK}:{https}"]
tls = {{ certs = [{{ cert = "{work}/cert.pem", key = "{work}/key.pem" }}] }}

[[route]]
pool = "origin"

[pool.origin]
servers = ["{LOOPBACK}:{origin}"]
keepalive = 256
"""


# --- targets and scenarios ---------------------------------------------------------------------


@dataclass
class Target:
    key: str
    label: str
    http: int | None = None
    https: int | None = None
    h2: bool = False
    service: Service | None = None
    note: str = ""

    def pids(self) -> list[int]:
        return self.service.pids() if self.service else []


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    tool: str  # wrk | s_time | h2load
    tls: bool = False
    path: str = "/small"
    conns: int = 50
    mode: str = ""  # s_time: -new | -reuse
    metric: str = "rate"  # the figure compared with HAProxy: rate | mb_s
    unit: str = "req/s"
    headers: tuple[str, ...] = ()  # wrk -H
    # Only these targets run it (empty: every target that can).
    only: tuple[str, ...] = ()


# The edge policy scenario: an allow list of 100,000 networks on the listener, one rate limit
# and Basic authentication on the route; wrk sends valid credentials (remembered after the
# first request, so no hash is checked per request). "revproxy" answers the same requests
# without the policy (the Authorization header is passed on): the CPU ratio is its cost.
POLICY_USER = ("bench", "bench-pw")
POLICY_HEADER = "Authorization: Basic " + base64.b64encode(":".join(POLICY_USER).encode()).decode()


SCENARIOS = [
    Scenario("http-small", "HTTP small keep-alive (100 B, wrk -t1 -c50)", "wrk"),
    Scenario("https-small", "HTTPS small keep-alive (100 B, wrk -t1 -c50)", "wrk", tls=True),
    Scenario(
        "tls-full",
        "New TLS handshakes, full (openssl s_time -new, one GET /small per connection)",
        "s_time",
        tls=True,
        mode="-new",
        unit="handshakes/s",
    ),
    Scenario(
        "tls-resumed",
        "New TLS handshakes, resumed by ticket (openssl s_time -reuse)",
        "s_time",
        tls=True,
        mode="-reuse",
        unit="handshakes/s",
    ),
    Scenario(
        "big", "1 MiB bodies (wrk -t1 -c8)", "wrk", path="/big", conns=8, metric="mb_s", unit="MB/s"
    ),
    Scenario("h2-small", "HTTP/2 small over TLS (h2load -c8 -m16)", "h2load", tls=True),
    Scenario(
        "http-policy",
        "HTTP small keep-alive through the edge policy (allow list of 100,000 networks, one "
        "rate limit, cached Basic credentials; wrk -t1 -c50)",
        "wrk",
        headers=(POLICY_HEADER,),
        only=("revproxy", "revproxy-policy"),
    ),
]


def measure(target: Target, sc: Scenario, seconds: float) -> Run:
    pids = target.pids()
    before = cpu_seconds(pids)
    if sc.tool == "wrk":
        scheme, port = ("https", target.https) if sc.tls else ("http", target.http)
        run = run_wrk(f"{scheme}://{LOOPBACK}:{port}{sc.path}", sc.conns, seconds, sc.headers)
    elif sc.tool == "s_time":
        assert target.https is not None
        run = run_s_time(target.https, sc.mode, seconds)
    else:
        run = run_h2load(f"https://{LOOPBACK}:{target.https}{sc.path}", seconds)
    used = cpu_seconds(pids) - before
    if pids and run.count:
        run.cpu_us = used / run.count * 1e6
    return run


def applies(target: Target, sc: Scenario) -> str | None:
    """Why ``target`` is not measured in ``sc``, or None when it is."""
    if sc.only and target.key not in sc.only:
        return "compares revproxy with and without the edge policy"
    if target.key == "revproxy-policy" and sc.key != "http-policy":
        return "the edge policy scenario only"
    if sc.tls and target.https is None:
        return "no TLS"
    if not sc.tls and target.http is None:
        return "no plain HTTP"
    if sc.tool == "h2load" and not target.h2:
        if target.key.startswith("revproxy"):
            return "not run over HTTP/2 in this row"
        return "no HTTP/2"
    if sc.tool in ("s_time", "h2load") and target.key == "direct":
        return "origin shares the client's CPU"
    return None


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Bench:
    opts: argparse.Namespace
    work: Path
    targets: list[Target] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=lambda: defaultdict(list))
    skipped: dict[str, str] = field(default_factory=dict)  # target key → why not run at all
    memory: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    l4: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    # --- setting up --------------------------------------------------------------------

    def prepare(self) -> None:
        w = self.work
        (w / "www").mkdir()
        (w / "tmp").mkdir()
        (w / "www" / "small").write_bytes(b"x" * SMALL)
        (w / "www" / "big").write_bytes(os.urandom(BIG))
        # nginx workers run as an unprivileged user: they must read the files and write tmp.
        for path, mode in ((w, 0o755), (w / "www", 0o755), (w / "tmp", 0o777)):
            path.chmod(mode)
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(w / "key.pem"),
                "-out",
                str(w / "cert.pem"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        (w / "cert+key.pem").write_bytes(
            (w / "cert.pem").read_bytes() + (w / "key.pem").read_bytes()
        )

    def start(self, service: Service, ports: list[int]) -> Service:
        self.services.append(service)
        service.start(ports)
        return service

    def start_all(self) -> None:
        w, py = self.work, sys.executable
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        origin, origin_tls = free_port(), free_port()
        (w / "origin.conf").write_text(origin_conf(w, origin, origin_tls))
        origin_service = self.start(
            Service(
                "origin",
                [
                    "nginx",
                    "-c",
                    str(w / "origin.conf"),
                    "-p",
                    str(w),
                    "-e",
                    str(w / "origin-error.log"),
                ],
                cpus=PEER_CPUS,
                workdir=w,
            ),
            [origin, origin_tls],
        )
        self.targets.append(
            Target(
                "direct",
                "direct to the origin (nginx; CPU is the origin's)",
                origin,
                origin_tls,
                h2=True,
                service=origin_service,
            )
        )

        def add(
            key: str,
            label: str,
            make: Callable[[int, int], Service | None],
            *,
            tls: bool = True,
            h2: bool = False,
        ) -> Target | None:
            if self.opts.targets and key not in self.opts.targets:
                return None
            http, https = free_port(), free_port() if tls else None
            try:
                service = make(http, https or 0)
                if service is not None:
                    self.start(service, [http] + ([https] if https else []))
            except (RuntimeError, OSError) as exc:
                self.skipped[key] = f"did not start: {exc}"[:300]
                self.log(f"{label}: {self.skipped[key]}")
                return None
            target = Target(key, label, http, https, h2=h2, service=service)
            self.targets.append(target)
            return target

        def haproxy(http: int, https: int) -> Service:
            (w / "haproxy.cfg").write_text(haproxy_conf(w, http, https, origin))
            return Service(
                "haproxy",
                ["haproxy", "-db", "-f", str(w / "haproxy.cfg")],
                cpus=PROXY_CPUS,
                workdir=w,
            )

        def nginx(http: int, https: int) -> Service:
            (w / "nginx-proxy.conf").write_text(nginx_proxy_conf(w, http, https, origin))
            return Service(
                "nginx-proxy",
                [
                    "nginx",
                    "-c",
                    str(w / "nginx-proxy.conf"),
                    "-p",
                    str(w),
                    "-e",
                    str(w / "nginx-proxy-error.log"),
                ],
                cpus=PROXY_CPUS,
                workdir=w,
            )

        def revproxy(
            name: str, workers: str, parser: str, cpus: str | None, inject: str | None = None
        ) -> Callable[[int, int], Service]:
            def make(http: int, https: int) -> Service:
                conf = w / name
                conf.mkdir()
                (conf / "10-bench.toml").write_text(
                    revproxy_conf(w, http, https, origin, workers, parser)
                )
                argv = (
                    [py, "-c", _LAUNCH_WITH_PARSER, str(conf)]
                    if inject
                    else [py, "-m", "revproxy", "run", "-c", str(conf)]
                )
                return Service(name, argv, cpus=cpus, workdir=w, env=env)

            return make

        def bare(mode: str) -> Callable[[int, int], Service]:
            def make(http: int, _https: int) -> Service:
                return Service(
                    f"bare-{mode}",
                    [
                        py,
                        str(REPO / "scripts" / "bare_forwarder.py"),
                        "--mode",
                        mode,
                        "--listen",
                        str(http),
                        "--origin",
                        f"{LOOPBACK}:{origin}",
                    ],
                    cpus=PROXY_CPUS,
                    workdir=w,
                    env=env,
                )

            return make

        add("haproxy", "HAProxy (1 thread)", haproxy, h2=True)
        add("nginx", "nginx (1 worker)", nginx, h2=True)
        add(
            "revproxy",
            "revproxy (1 worker)",
            revproxy("revproxy", "1", "auto", PROXY_CPUS),
            h2=True,
        )
        if pipeline_reads_http1_parser():
            add(
                "revproxy-h11",
                'revproxy (1 worker, http1_parser = "h11")',
                revproxy("revproxy-h11", "1", "h11", PROXY_CPUS),
            )
        else:
            self.notes.append(
                "revproxy does not read `global.http1_parser` yet, so the `revproxy` rows run the "
                "h11 adapters; the row marked *llhttp injected* starts the same revproxy with "
                "`http1_fast`'s classes swapped into `revproxy.proto.http1` by this script, for "
                "every user of them (a preview of the switch)."
            )
            add(
                "revproxy-llhttp",
                "revproxy (1 worker, llhttp injected)",
                revproxy("revproxy-llhttp", "1", "auto", PROXY_CPUS, inject="httptools"),
            )

        def revproxy_policy(http: int, _https: int) -> Service:
            conf = w / "revproxy-policy"
            conf.mkdir()
            (conf / "10-bench.toml").write_text(revproxy_policy_conf(w, http, origin))
            argv = [py, "-m", "revproxy", "run", "-c", str(conf)]
            return Service("revproxy-policy", argv, cpus=PROXY_CPUS, workdir=w, env=env)

        add(
            "revproxy-policy",
            "revproxy (1 worker) with the edge policy",
            revproxy_policy,
            tls=False,
        )
        auto = add(
            "revproxy-auto",
            'revproxy (workers = "auto")',
            revproxy("revproxy-auto", '"auto"', "auto", None),
        )
        if auto is not None:
            workers = [p for p in auto.pids() if " worker" in cmdline(p)]
            if len(workers) < 2:
                why = (
                    f'workers = "auto" started {len(workers)} worker process(es) on '
                    f"{os.cpu_count()} CPUs: multi-worker serving is not available yet"
                )
                self.skipped["revproxy-auto"] = why
                self.targets.remove(auto)
                assert auto.service is not None
                auto.service.stop()
                self.log(why)
            else:
                auto.note = f"{len(workers)} workers, not pinned (shares CPU 1 with the load)"
        add("bare-h11", "bare forwarder, h11 (asyncio streams, uvloop)", bare("h11"), tls=False)
        add(
            "bare-httptools",
            "bare forwarder, httptools (asyncio.Protocol, uvloop)",
            bare("httptools"),
            tls=False,
        )

    # --- measuring ---------------------------------------------------------------------

    def scenarios(self) -> list[Scenario]:
        chosen = [s for s in SCENARIOS if not self.opts.scenarios or s.key in self.opts.scenarios]
        if self.opts.quick:
            chosen = [s for s in chosen if s.key != "h2-small" or self.opts.scenarios]
        return chosen

    def warm_up(self) -> None:
        for t in self.targets:
            if t.http is not None:
                run_wrk(f"http://{LOOPBACK}:{t.http}/small", 16, self.opts.warmup)
            if t.https is not None:
                run_wrk(f"https://{LOOPBACK}:{t.https}/small", 16, self.opts.warmup)
        time.sleep(1.0)  # idle: connections closed, buffers released
        for t in self.targets:
            if t.key.startswith("revproxy") and t.service is not None:
                self.memory.setdefault("idle_rss_kib", {})[t.key] = [
                    rss_kib(p) for p in t.pids() if "revproxy" in cmdline(p)
                ]

    def measure_all(self) -> None:
        scenarios = self.scenarios()
        seconds = self.opts.duration
        for rnd in range(self.opts.rounds):
            order = (
                self.targets[rnd % len(self.targets) :] + self.targets[: rnd % len(self.targets)]
            )
            for sc in scenarios:
                for t in order:
                    if applies(t, sc) is not None:
                        continue
                    if not (t.service is None or t.service.alive):
                        self.runs[(sc.key, t.key)].append(Run(errors="process died"))
                        continue
                    sampler = (
                        RssSampler(t) if sc.key == "big" and t.key.startswith("revproxy") else None
                    )
                    with sampler or contextlib.nullcontext():
                        run = measure(t, sc, seconds)
                    if sampler is not None:
                        sampler.record(self.memory, run, seconds)
                    self.runs[(sc.key, t.key)].append(run)
                    figure = getattr(run, sc.metric)
                    self.log(
                        f"round {rnd + 1} {sc.key:12} {t.key:16} "
                        f"{figure or 0:10.1f} {sc.unit}  {run.errors}"
                    )

    def run_l4(self) -> None:
        script = REPO / "scripts" / "bench_l4.py"
        if self.opts.scenarios and "l4" not in self.opts.scenarios:
            return
        if not script.exists():
            self.l4 = {"skipped": "scripts/bench_l4.py does not exist yet"}
            return
        size = (128 << 20) if self.opts.quick else (1 << 30)
        argv = [
            sys.executable,
            str(script),
            "--size",
            str(size),
            "--seconds",
            str(max(1, round(self.opts.duration))),
        ]
        self.log(f"L4: {' '.join(argv[1:])}")
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, "PYTHONPATH": _pythonpath()},
            )
            self.l4 = (
                json.loads(proc.stdout)
                if proc.returncode == 0
                else {"skipped": f"bench_l4.py exited {proc.returncode}: {proc.stderr[-300:]}"}
            )
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            self.l4 = {"skipped": f"bench_l4.py failed: {exc}"}

    def profile(self) -> None:
        """py-spy under the HTTP small keep-alive load, for every revproxy target."""
        if _py_spy() is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "py-spy"],
                capture_output=True,
                timeout=300,
            )
        if _py_spy() is None:
            self.notes.append("py-spy could not be installed: no profile")
            return
        seconds = max(3.0, self.opts.duration)
        for t in self.targets:
            if not t.key.startswith(("revproxy", "bare")) or t.key == "revproxy-auto":
                continue
            rows = _profiled(
                t.service.pid if t.service else 0,
                self.work / f"profile-{t.key}.txt",
                seconds,
                functools.partial(run_wrk, f"http://{LOOPBACK}:{t.http}/small", 50, seconds),
            )
            if rows is not None:
                self.profiles[t.key] = rows
            self.log(f"profiled {t.key}")
        for t in self.targets:
            if t.key != "revproxy" or t.https is None or t.service is None:
                continue
            rows = _profiled(
                t.service.pid,
                self.work / "profile-revproxy-tls.txt",
                seconds,
                functools.partial(run_s_time, t.https, "-new", seconds),
            )
            if rows is not None:
                self.profiles["revproxy/tls-full"] = rows
            self.log("profiled revproxy under new TLS handshakes")

    def stop_all(self) -> None:
        for s in reversed(self.services):
            with contextlib.suppress(Exception):
                s.stop()


class RssSampler:
    """Largest RSS of a revproxy process while a scenario runs (to see it stay flat)."""

    def __init__(self, target: Target) -> None:
        self.pids = [p for p in target.pids() if "revproxy" in cmdline(p)]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max([self.peak, *(rss_kib(p) for p in self.pids)])

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def record(self, memory: dict[str, Any], run: Run, seconds: float) -> None:
        key = "peak_rss_kib_big"
        memory[key] = max(memory.get(key, 0), self.peak)
        memory["bytes_streamed_big"] = memory.get("bytes_streamed_big", 0) + int(
            (run.mb_s or 0) * 1e6 * seconds
        )


def _py_spy() -> str | None:
    """py-spy on PATH, or installed beside this interpreter (a virtual environment's bin/,
    which a benchmark run as ``.venv/bin/python`` does not have on PATH)."""
    found = shutil.which("py-spy")
    if found is None:
        beside = Path(sys.executable).parent / "py-spy"
        found = str(beside) if beside.exists() else None
    return found


def _profiled(
    pid: int, raw: Path, seconds: float, load: Callable[[], object]
) -> list[tuple[str, float, float]] | None:
    """py-spy on ``pid`` while ``load`` runs: its top functions, None without a profile."""
    spy = subprocess.Popen(
        [
            _py_spy() or "py-spy",
            *("record", "--pid", str(pid), "--duration", str(round(seconds))),
            *("--rate", "250", "--format", "raw", "--nonblocking", "--output", str(raw)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    load()
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(timeout=seconds + RUN_SLACK)
    if spy.poll() is None:
        spy.kill()
        spy.wait()
    return top_functions(raw.read_text()) if raw.exists() else None


def top_functions(raw: str, n: int = 15) -> list[tuple[str, float, float]]:
    """(function, own %, total %) of the main thread (the event loop's), from py-spy's raw
    (collapsed) stacks. Helper threads (resolver, file watcher) are left out: they mostly
    wait, and py-spy does not always see that as idle."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [
            _short(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames or frames[0].startswith("Thread._bootstrap"):
            continue
        samples += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    if not samples:
        return []
    return [(f, 100 * c / samples, 100 * total[f] / samples) for f, c in own.most_common(n)]


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (file.py)``."""
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    path = m[2]
    if "/revproxy/" in path:
        path = "revproxy/" + path.split("/revproxy/", 1)[1]
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{m[1]} ({path})"


# revproxy with the llhttp classes swapped into revproxy.proto.http1 before any other module
# imports them (argv: conf dir), for as long as the code does not read global.http1_parser
# itself. Run with -c so that the measured process holds nothing of this script.
_LAUNCH_WITH_PARSER = """
import sys
from revproxy.proto.http1 import exact as http1
from revproxy.proto.http1 import fast as http1_fast
http1.H1Server = http1_fast.H1Server
http1.H1Client = http1_fast.H1Client
from revproxy.cli.main import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def pipeline_reads_http1_parser() -> bool:
    """Whether revproxy chooses its HTTP/1.1 classes by global.http1_parser yet."""
    for path in (REPO / "revproxy").rglob("*.py"):
        text = path.read_text()
        if "server_class(" in text or "client_class(" in text:
            return True
    return False


# --- environment ---------------------------------------------------------------------------


def ensure_tools(install: bool) -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing and install:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        packages = sorted({TOOLS[t] for t in missing})
        print(f"[bench] installing {' '.join(packages)}", flush=True)
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=False, timeout=600)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", *packages],
            check=False,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return missing


def _version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (p.stdout or p.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    distro = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    packages = []
    for name in ("h11", "httptools", "uvloop"):
        try:
            packages.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            packages.append(f"{name} absent")
    commit = _version(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "cpu": f"{cpu} × {os.cpu_count()}",
        "os": f"{distro}, Linux {platform.release()}",
        "python": f"Python {platform.python_version()} ({', '.join(packages)})",
        "haproxy": _version(["haproxy", "-v"]),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
        "h2load": _version(["h2load", "--version"]),
        "openssl": _version(["openssl", "version"]),
        "revproxy": f"commit {commit}",
    }


# --- the report ----------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


class Report:
    def __init__(self, bench: Bench, started: float, load: tuple[float, float]) -> None:
        self.b = bench
        self.started = started
        self.load = load

    def summary(self, sc: Scenario, key: str) -> Run | None:
        runs = self.b.runs.get((sc.key, key))
        if not runs:
            return None
        figures = [f for f in (getattr(r, sc.metric) for r in runs) if f]
        spread = ""
        if len(figures) > 1 and max(figures) > 1.5 * min(figures):
            spread = f"runs varied {min(figures):,.0f}–{max(figures):,.0f}"
        return Run(
            rate=median([r.rate for r in runs]),
            mb_s=median([r.mb_s for r in runs]),
            p50_ms=median([r.p50_ms for r in runs]),
            p99_ms=median([r.p99_ms for r in runs]),
            cpu_us=median([r.cpu_us for r in runs]),
            count=sum(r.count for r in runs),
            errors="; ".join(sorted({r.errors for r in runs if r.errors} | {spread} - {""}))[:200],
        )

    def figure(self, sc_key: str, target: str) -> float | None:
        sc = next((s for s in SCENARIOS if s.key == sc_key), None)
        if sc is None:
            return None
        s = self.summary(sc, target)
        return getattr(s, sc.metric) if s else None

    def render(self) -> str:
        b, o = self.b, self.b.opts
        m = machine()
        mode = "quick" if o.quick else "full"
        lines = [
            "# Benchmarks",
            "",
            f"Written by `scripts/bench{' --quick' if o.quick else ''}` on "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({mode} run: {o.rounds} round(s) of "
            f"{o.duration:g} s per target and scenario, targets taken in turn, median shown; "
            f"took {(time.monotonic() - self.started) / 60:.1f} min).",
            "",
            "> **Noise.** Figures from a shared machine are indicative only: other jobs ran "
            f"beside this one (load average {self.load[0]:.1f} at the start, "
            f"{self.load[1]:.1f} at the end, on {os.cpu_count()} CPUs). Compare the ratios "
            "within one run, not values across runs; the full benchmark belongs on a quiet "
            "machine (`scripts/bench`, ~10 min).",
            "",
            "## Machine and versions",
            "",
            *[f"- **{k}**: {v}" for k, v in m.items()],
            f"- **pinning**: proxies on CPU {PROXY_CPUS} (`taskset`), origin (nginx, 1 worker) "
            f"and load generators on CPU {PEER_CPUS}; everything on 127.0.0.1. CPU-µs per "
            "request counts the proxy's own processes (user + system, /proc), which compares "
            "proxies fairly even when the client or origin is the bottleneck.",
            "- **configuration**: access logs off everywhere; keep-alive to the origin in every "
            "proxy (HAProxy `http-reuse always`, nginx `keepalive 128`, revproxy pool "
            "`keepalive = 256`); TLS: one ECDSA P-256 certificate, TLS 1.3, session tickets on.",
            *[f"- {n}" for n in b.notes],
            *[f"- **{k}** not measured: {why}" for k, why in b.skipped.items()],
            "",
            "## Goals (ratios to HAProxy, same run)",
            "",
            *self.goals(),
            "",
            "What was done for these figures, where the time goes and what limits the goals "
            "not met: `docs/performance.md`.",
            "",
        ]
        for sc in self.b.scenarios():
            lines += self.table(sc)
        lines += self.l4_section()
        lines += self.memory_section()
        lines += self.profile_section()
        return "\n".join(lines) + "\n"

    def goals(self) -> list[str]:
        rows = ["| goal | measured | met |", "|---|---|---|"]

        def row(goal: str, value: float | None, ok: bool | None, text: str = "") -> None:
            shown = text or (f"{value:.2f}×" if value is not None else "not measured")
            rows.append(f"| {goal} | {shown} | {'–' if ok is None else ('yes' if ok else 'no')} |")

        hp = "haproxy"
        for key, label in (
            ("revproxy", "revproxy (1 worker)"),
            ("revproxy-llhttp", "revproxy, llhttp injected"),
            ("revproxy-h11", 'revproxy, http1_parser = "h11"'),
        ):
            if not any(t.key == key for t in self.b.targets):
                continue
            r = ratio(self.figure("http-small", key), self.figure("http-small", hp))
            s = self.summary(SCENARIOS[0], key)
            h = self.summary(SCENARIOS[0], hp)
            p99 = ratio(s.p99_ms if s else None, h.p99_ms if h else None)
            row(
                f"{label}: HTTP small keep-alive ≥ 0.6× req/s, p99 ≤ 2×",
                r,
                None if r is None or p99 is None else (r >= 0.6 and p99 <= 2),
                f"{fmt(r, 2)}× req/s, p99 {fmt(p99, 2)}×" if r is not None else "",
            )
            # Per CPU: HAProxy's CPU-µs per request over ours (issue 18).
            per_cpu = ratio(h.cpu_us if h else None, s.cpu_us if s else None)
            row(
                f"{label}: HTTP small keep-alive ≥ 0.5× per CPU",
                per_cpu,
                None if per_cpu is None else per_cpu >= 0.5,
                f"{fmt(per_cpu, 2)}× ({fmt(s.cpu_us if s else None)} vs "
                f"{fmt(h.cpu_us if h else None)} CPU-µs/req)"
                if per_cpu is not None
                else "",
            )
            for sc_key, goal, need in (
                ("https-small", "HTTPS keep-alive", 0.5),
                ("tls-full", "new TLS handshakes, full", 0.6),
                ("tls-resumed", "new TLS handshakes, resumed", 0.5),
                ("big", "1 MiB bodies, MB/s", 0.9),
            ):
                r = ratio(self.figure(sc_key, key), self.figure(sc_key, hp))
                row(f"{label}: {goal} ≥ {need}×", r, None if r is None else r >= need)
            bare = self.figure("http-small", "bare-h11")
            r = ratio(self.figure("http-small", key), bare)
            row(
                f"{label}: within 10 % of the bare h11 forwarder (HTTP small)",
                r,
                None if r is None else r >= 0.9,
                f"{fmt(r, 2)}× its req/s" if r is not None else "",
            )
        l4 = self.b.l4 or {}
        l4r = (l4.get("revproxy_vs_haproxy") or {}).get("bulk_MB_per_s")
        row("L4 TCP ≥ 0.95× MB/s", l4r, None if l4r is None else l4r >= 0.95)
        l4s = (l4.get("revproxy_vs_haproxy") or {}).get("short_conns_per_s")
        row("L4 TCP short connections ≥ 0.6× conn/s", l4s, None if l4s is None else l4s >= 0.6)
        h2r = ratio(self.figure("h2-small", "revproxy"), self.figure("h2-small", hp))
        row(
            "revproxy (1 worker): HTTP/2 small ≥ 0.5× req/s",
            h2r,
            None if h2r is None else h2r >= 0.5,
        )
        policy_sc = next(sc for sc in SCENARIOS if sc.key == "http-policy")
        with_policy = self.summary(policy_sc, "revproxy-policy")
        without = self.summary(policy_sc, "revproxy")
        pr = ratio(with_policy.cpu_us if with_policy else None, without.cpu_us if without else None)
        row(
            "revproxy (1 worker): the edge policy (allow list of 100,000, one limit, cached "
            "Basic) costs ≤ 1.05× CPU per request",
            pr,
            None if pr is None else pr <= 1.05,
            f"{fmt(pr, 2)}× CPU-µs/req ({fmt(with_policy.cpu_us if with_policy else None)} vs "
            f"{fmt(without.cpu_us if without else None)})"
            if pr is not None
            else "",
        )
        idle = self.b.memory.get("idle_rss_kib", {}).get("revproxy")
        peak = self.b.memory.get("peak_rss_kib_big")
        if idle:
            ok = max(idle) <= 50 * 1024 and (peak is None or peak <= max(idle) + 30 * 1024)
            row(
                "idle RSS ≤ 50 MB per worker, flat while streaming",
                None,
                ok,
                f"idle {max(idle) / 1024:.0f} MiB, peak {fmt((peak or 0) / 1024)} MiB while "
                f"streaming {self.b.memory.get('bytes_streamed_big', 0) / 1e9:.1f} GB",
            )
        return rows

    def table(self, sc: Scenario) -> list[str]:
        ref = self.summary(sc, "haproxy")
        other = "req/s" if sc.metric == "mb_s" else "MB/s"
        out = [
            f"## {sc.title}",
            "",
            f"| target | {sc.unit} | p50 ms | p99 ms | {other} | CPU-µs/req | vs HAProxy | "
            "p99 vs HAProxy | notes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for t in self.b.targets:
            why = applies(t, sc)
            s = self.summary(sc, t.key)
            if why is not None or s is None:
                out.append(f"| {t.label} | – | – | – | – | – | – | – | {why or 'not run'} |")
                continue
            main = getattr(s, sc.metric)
            r = ratio(main, getattr(ref, sc.metric) if ref else None)
            p99r = ratio(s.p99_ms, ref.p99_ms if ref else None)
            notes = "; ".join(x for x in (t.note, s.errors) if x)
            out.append(
                f"| {t.label} | {fmt(main, 1 if sc.metric == 'mb_s' else 0)} | "
                f"{fmt(s.p50_ms, 2)} | {fmt(s.p99_ms, 2)} | "
                f"{fmt(s.rate) if sc.metric == 'mb_s' else fmt(s.mb_s, 1)} | "
                f"{fmt(s.cpu_us, 1)} | {fmt(r, 2)}{'×' if r is not None else ''} | "
                f"{fmt(p99r, 2)}{'×' if p99r is not None else ''} | {notes} |"
            )
        if sc.tool == "h2load":
            out.append("")
            out.append("h2load reports a mean, shown as p50.")
        if sc.tool == "s_time":
            out.append("")
            out.append(
                "`openssl s_time` opens one connection at a time and costs the client "
                "about what a handshake costs the server, so the client's CPU caps "
                "handshakes/s: CPU-µs per handshake is the figure that compares the "
                "proxies."
            )
        out.append("")
        return out

    def l4_section(self) -> list[str]:
        l4 = self.b.l4
        if l4 is None:
            return []
        out = ["## L4 TCP (scripts/bench_l4.py)", ""]
        if "skipped" in l4:
            return [*out, f"Not measured: {l4['skipped']}.", ""]
        out += [
            "| target | MB/s | MB per CPU-second | short connections/s |",
            "|---|---:|---:|---:|",
        ]
        for key in ("haproxy", "haproxy_splice", "revproxy"):
            r = l4.get(key)
            if isinstance(r, dict):
                out.append(
                    f"| {key} | {fmt(r.get('bulk_MB_per_s'), 1)} | "
                    f"{fmt(r.get('bulk_MB_per_cpu_second'), 1)} | "
                    f"{fmt(r.get('short_conns_per_s'))} |"
                )
        for key in ("revproxy_vs_haproxy", "revproxy_vs_haproxy_splice"):
            if isinstance(l4.get(key), dict):
                out.append("")
                out.append(f"{key}: " + ", ".join(f"{k} {v}×" for k, v in l4[key].items()))
        return [*out, f"\n{l4.get('size_bytes', 0) / 1e6:.0f} MB per bulk transfer.", ""]

    def memory_section(self) -> list[str]:
        mem = self.b.memory
        idle = mem.get("idle_rss_kib", {})
        if not idle:
            return []
        out = ["## Memory (revproxy)", ""]
        for key, values in idle.items():
            out.append(
                f"- {key}: idle RSS per process " + ", ".join(f"{v / 1024:.1f} MiB" for v in values)
            )
        if "peak_rss_kib_big" in mem:
            out.append(
                f"- largest RSS of a revproxy process while streaming 1 MiB bodies: "
                f"{mem['peak_rss_kib_big'] / 1024:.1f} MiB "
                f"({mem.get('bytes_streamed_big', 0) / 1e9:.1f} GB streamed)"
            )
        return [*out, ""]

    def profile_section(self) -> list[str]:
        if not self.b.profiles:
            return []
        out = [
            "## Profiles (py-spy, HTTP small keep-alive, wrk -c50)",
            "",
            "Own % is time spent in the function itself; total % includes what it calls. "
            "Sampled with `--nonblocking` at 250 Hz. The same profiles before the fast-path "
            "work (streams, a timer per read, the parsers' general paths) are in "
            "`docs/profiles-before.md`.",
            "",
        ]
        for key, rows in self.b.profiles.items():
            label = next((t.label for t in self.b.targets if t.key == key), key)
            if key == "revproxy/tls-full":
                label = "revproxy (1 worker), new TLS handshakes (openssl s_time -new)"
            elif key == "revproxy" and not pipeline_reads_http1_parser():
                label += " — before: the pipeline on the h11 adapters"
            elif key == "revproxy-llhttp":
                label += " — after the parser switch (preview)"
            out += [f"### {label}", "", "| function | own % | total % |", "|---|---:|---:|"]
            out += [f"| `{f}` | {own:.1f} | {tot:.1f} |" for f, own, tot in rows]
            out.append("")
        return out


# --- entry points --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s (~2 min)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per run (default 5, quick 2)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--json", help="also write every run here")
    ap.add_argument("--profile", action="store_true", help="add py-spy profiles (on in full runs)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    ap.add_argument(
        "--scenarios", nargs="*", help=f"only these: {' '.join(s.key for s in SCENARIOS)} l4"
    )
    ap.add_argument("--targets", nargs="*", help="only these (besides direct)")
    opts = ap.parse_args(argv)
    opts.rounds = opts.rounds or (1 if opts.quick else 3)
    opts.duration = opts.duration or (2.0 if opts.quick else 5.0)
    opts.warmup = 1.0 if opts.quick else 2.0
    opts.profile = (opts.profile or not opts.quick) and not opts.no_profile
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    missing = ensure_tools(not opts.no_install)
    if missing:
        print(f"[bench] missing tools: {', '.join(missing)}", file=sys.stderr)
        return 1
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="revproxy-bench-"))
    bench = Bench(opts, work)
    # A bound on the whole run: stop everything rather than hang a shared machine.
    budget = 60 * (8 if opts.quick else 30)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("time budget")))
    signal.alarm(budget)
    try:
        bench.prepare()
        bench.log(f"work directory {work}")
        bench.start_all()
        bench.log("targets: " + ", ".join(t.key for t in bench.targets))
        bench.warm_up()
        bench.measure_all()
        if opts.profile:
            bench.profile()
    finally:
        bench.stop_all()
        signal.alarm(0)
    bench.run_l4()
    report = Report(bench, started, (load_start, os.getloadavg()[0]))
    text = report.render()
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The side benchmarks' sections (egress, tunnel, HTTP rules) stay: bench_sections.py.
    out.write_text(carry_over(out.read_text() if out.exists() else "", text))
    if opts.json:
        Path(opts.json).write_text(
            json.dumps(
                {f"{sc}/{t}": [r.to_json() for r in runs] for (sc, t), runs in bench.runs.items()}
                | {"l4": bench.l4, "memory": bench.memory},
                indent=2,
            )
        )
    if opts.keep:
        bench.log(f"logs and configs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    bench.log(f"wrote {opts.out} in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
