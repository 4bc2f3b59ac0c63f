"""Real peers on loopback for the end-to-end tests.

Rule of this room: nothing here is a mock. The proxy is the real ``revproxy run`` in a
subprocess; origins are threaded HTTP/1.1 servers (h11 over real sockets) that record what
reached them and misbehave only when a test asks; clients are curl, ``openssl s_client`` and
raw sockets. Every wait is bounded, every socket and process is closed or stopped on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import h11

from revproxy.certs.files import generate_self_signed

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
# How long the proxy has to bind its ports (a loaded 2-core machine imports slowly).
START_TIMEOUT = 20.0
# SIGTERM, then this long to exit before SIGKILL.
STOP_TIMEOUT = 5.0
# Default bound of a client exchange in a test.
CLIENT_TIMEOUT = 30.0
# Longest an origin holds a reply for a test's gate.
GATE_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port where a connect is refused (nothing listens; nothing will)."""
    return free_port()


def toml_path(path: Path) -> str:
    """A path as a TOML string literal."""
    return json.dumps(str(path))


def make_cert(directory: Path, stem: str, names: Sequence[str]) -> tuple[Path, Path]:
    """A self-signed certificate for ``names``: (cert.pem, key.pem) in ``directory``."""
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    generate_self_signed(list(names), cert, key)
    return cert, key


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- origins --------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as an origin received it."""

    conn: int  # the origin's connection number (1-based), to observe keep-alive reuse
    peer: tuple[str, int]
    method: str
    target: str
    headers: list[tuple[str, str]]  # lower-case names, in order
    body_len: int = 0
    body_sha256: str = ""
    http_version: str = "1.1"
    nth: int = 1  # this request's place on its connection (2 = the connection was reused)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def has(self, name: str) -> bool:
        return bool(self.all(name))


@dataclass
class Reply:
    """What an origin answers. A body that is an iterable (not bytes) is streamed; without
    ``length`` it goes out chunked."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""
    length: int | None = None  # Content-Length to declare (for HEAD, or a streamed body)
    informational: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)
    delay: float = 0.0  # seconds before the response head
    gate: threading.Event | None = None  # wait for it (at most GATE_TIMEOUT) before the head
    raw: bytes | None = None  # send these bytes instead of a response, then close
    close: bool = False  # close the connection after the response
    stall_after_head: float = 0.0  # send the head and part of the body, then sit silent


Handler = Callable[[Seen], Reply]


def generated(total: int, block: int = 1 << 20, seed: bytes = b"revproxy") -> Iterator[bytes]:
    """``total`` pseudo-random bytes in blocks, produced on the fly (never held in memory)."""
    base = hashlib.sha256(seed).digest() * (block // 32 + 1)
    n = 0
    sent = 0
    while sent < total:
        size = min(block, total - sent)
        prefix = n.to_bytes(8, "big")
        chunk = (prefix + base[8:])[:size]
        yield chunk
        sent += size
        n += 1


def generated_sha256(total: int, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for chunk in generated(total, block):
        h.update(chunk)
    return h.hexdigest()


class Origin:
    """A threaded HTTP/1.1 origin on an ephemeral loopback port that records every request.

    ``handler`` decides the reply (default: 200 naming the origin, the method and target).
    """

    def __init__(self, name: str = "origin", handler: Handler | None = None) -> None:
        self.name = name
        self.handler: Handler = handler or self.default_reply
        self.seen: list[Seen] = []
        self.connections = 0
        self.send_100 = True  # answer Expect: 100-continue as a real server does
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._clients: set[socket.socket] = set()
        self.port = 0

    # --- lifecycle

    def start(self, port: int = 0) -> Origin:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.listen(128)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._stop.clear()
        t = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() at once
            self._sock.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.connections = 0

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def default_reply(self, req: Seen) -> Reply:
        body = f"{self.name} {req.method} {req.target}\n".encode()
        if req.method == "HEAD":
            return Reply(headers=[("x-origin", self.name)], length=len(body))
        return Reply(headers=[("x-origin", self.name), ("content-type", "text/plain")], body=body)

    # --- serving

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                client, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._clients.add(client)
            t = threading.Thread(
                target=self._serve,
                args=(client, peer, number),
                name=f"{self.name}-conn",
                daemon=True,
            )
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket, peer: tuple[str, int], number: int) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        sock.settimeout(60.0)
        seen: Seen | None = None
        digest = hashlib.sha256()
        served = 0
        try:
            while not self._stop.is_set():
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = sock.recv(256 * 1024)
                    conn.receive_data(data)
                    if not data and conn.their_state is h11.IDLE:
                        return
                    continue
                if isinstance(ev, h11.Request):
                    seen = Seen(
                        conn=number,
                        peer=(str(peer[0]), int(peer[1])),
                        method=ev.method.decode(),
                        target=ev.target.decode("latin-1"),
                        headers=[(n.decode(), v.decode("latin-1")) for n, v in ev.headers],
                        http_version=ev.http_version.decode(),
                    )
                    served += 1
                    seen.nth = served
                    digest = hashlib.sha256()
                    if self.send_100 and conn.they_are_waiting_for_100_continue:
                        sock.sendall(
                            conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                        )
                elif isinstance(ev, h11.Data):
                    assert seen is not None
                    seen.body_len += len(ev.data)
                    digest.update(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    assert seen is not None
                    seen.body_sha256 = digest.hexdigest()
                    with self._lock:
                        self.seen.append(seen)
                    reply = self.handler(seen)
                    if not self._respond(sock, conn, seen, reply):
                        return
                    if conn.our_state is h11.MUST_CLOSE or reply.close:
                        return
                    conn.start_next_cycle()
                    seen = None
                else:
                    return
        except (OSError, h11.ProtocolError):
            return
        finally:
            with self._lock:
                self._clients.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _respond(self, sock: socket.socket, conn: h11.Connection, req: Seen, reply: Reply) -> bool:
        """Send ``reply``; False when the connection must close now."""
        if reply.delay and self._stop.wait(reply.delay):
            return False
        if reply.gate is not None:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not reply.gate.wait(0.1):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return False
        if reply.raw is not None:
            if reply.raw:
                sock.sendall(reply.raw)
            return False
        for status, headers in reply.informational:
            sock.sendall(conn.send(h11.InformationalResponse(status_code=status, headers=headers)))
        headers = list(reply.headers)
        body = reply.body
        if reply.length is not None:
            headers.append(("content-length", str(reply.length)))
        elif isinstance(body, bytes) and req.method != "HEAD":
            headers.append(("content-length", str(len(body))))
        if reply.close:
            headers.append(("connection", "close"))
        sock.sendall(conn.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
        if isinstance(body, bytes):
            if body and req.method != "HEAD":
                sock.sendall(conn.send(h11.Data(data=body)) or b"")
        else:
            for chunk in body:
                sock.sendall(conn.send(h11.Data(data=chunk)) or b"")
                if reply.stall_after_head:
                    self._stop.wait(reply.stall_after_head)
                    return False
        if reply.stall_after_head:
            self._stop.wait(reply.stall_after_head)
            return False
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        return True


class Blackhole:
    """A port where a TCP connect hangs: a listener that never accepts, its queue full."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(0)
        self.port = int(self._sock.getsockname()[1])
        self._fill: list[socket.socket] = []
        # Linux queues backlog + 1 connections; once full, SYNs are dropped and connects hang.
        for _ in range(8):
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect((LOOPBACK, self.port))
            except OSError:
                s.close()
                break
            self._fill.append(s)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def close(self) -> None:
        for s in self._fill:
            s.close()
        self._sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the proxy --------------------------------------------------------------------------------


class Proxy:
    """``revproxy run -c DIR`` on the TOML given, as a subprocess with captured output."""

    def __init__(
        self,
        directory: Path,
        config: str | dict[str, str],
        *,
        ports: Sequence[int] = (),
        extra_args: Sequence[str] = (),
        python_flags: Sequence[str] = (),
    ) -> None:
        self.python_flags = tuple(python_flags)  # before -m: the interpreter's own (-P, -X...)
        self.dir = directory
        self.conf = directory / "conf"
        self.conf.mkdir(parents=True, exist_ok=True)
        files = {"10-test.toml": config} if isinstance(config, str) else config
        for name, text in files.items():
            (self.conf / name).write_text(text)
        self.ports = tuple(ports)
        self.extra_args = tuple(extra_args)
        self.stdout_path = directory / "proxy.stdout"
        self.stderr_path = directory / "proxy.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proxy:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            argv = [sys.executable, *self.python_flags, "-m", "revproxy", "run", "-c"]
            self.proc = subprocess.Popen(
                [*argv, str(self.conf), *self.extra_args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"revproxy exited with {self.proc.returncode} before binding:\n" + self.stderr()
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"revproxy did not bind {pending} in time:\n" + self.stderr())
            try:
                with socket.create_connection((LOOPBACK, pending[0]), timeout=1.0):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            pending.pop(0)

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL after STOP_TIMEOUT; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        return self.proc.returncode

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        """Resident memory (VmRSS, KiB) of the proxy and its worker processes, if any."""
        return sum(_rss_kib(pid) for pid in [self.pid, *_descendants(self.pid)])

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @staticmethod
    def client_of(line: str) -> str:
        """The client address of a text access-log line (the field after its time)."""
        return line.split(" ", 2)[1]

    def access_lines(self) -> list[str]:
        return [line for line in self.stdout().splitlines() if line.strip()]

    def wait_access(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """The first access-log line matching ``predicate`` (waits for it, bounded)."""
        found: list[str] = []

        def check() -> bool:
            found[:] = [line for line in self.access_lines() if predicate(line)]
            return bool(found)

        if not wait_until(check, timeout):
            raise AssertionError("no matching access log line in:\n" + self.stdout()[-4000:])
        return found[0]


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0  # it just exited
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m revproxy ARGS`` to completion, output captured as text."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "revproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


# --- clients ----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # lower-case names
    body: bytes
    heads: list[int] = field(default_factory=list)  # every status line seen (1xx included)
    stderr: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def has(self, name: str) -> bool:
        return self.header(name) is not None


def curl(
    *args: str, timeout: float = CLIENT_TIMEOUT, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run curl (silent, errors shown, bounded by ``--max-time``)."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), *args],
        capture_output=True,
        input=stdin,
        timeout=timeout + 10,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def parse_curl_include(out: bytes) -> tuple[list[int], list[tuple[str, str]], bytes]:
    """Split ``curl -i`` output: every status seen, the final head's headers, the body."""
    statuses: list[int] = []
    rest = out
    while True:
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"no response head in curl output: {out[:300]!r}")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        statuses.append(status)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower().decode(), value.strip().decode("latin-1")))
        if 100 <= status < 200:
            rest = body
            continue
        return statuses, headers, body


def curl_http(url: str, *args: str, timeout: float = CLIENT_TIMEOUT) -> Response:
    """One request with curl; the final response parsed (1xx statuses kept in ``heads``)."""
    res = curl("-i", *args, url, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(
            f"curl failed ({res.returncode}): {res.stderr.decode(errors='replace')}"
        )
    statuses, headers, body = parse_curl_include(res.stdout)
    return Response(statuses[-1], headers, body, statuses, res.stderr.decode(errors="replace"))


def raw_exchange(
    port: int,
    data: bytes | Sequence[bytes],
    *,
    timeout: float = 10.0,
    pause: float = 0.0,
    source: str | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[bytes, bool]:
    """Send ``data`` (pieces with ``pause`` between them) and read until the proxy closes.

    Returns (everything read, closed by the peer within ``timeout``)."""
    pieces = [data] if isinstance(data, bytes) else list(data)
    sock = socket.create_connection(
        (LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    conn: socket.socket = sock
    try:
        if tls is not None:
            conn = tls.wrap_socket(sock, server_hostname=server_hostname)
        for i, piece in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
            with contextlib.suppress(OSError):
                conn.sendall(piece)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(received), False
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                return bytes(received), False
            except (ConnectionResetError, ssl.SSLError):
                return bytes(received), True
            if not chunk:
                return bytes(received), True
            received += chunk
    finally:
        conn.close()


def split_response(
    data: bytes, *, head_only: bool = False
) -> tuple[int, list[tuple[str, str]], bytes, bytes]:
    """One response with a Content-Length body from raw bytes: status, headers, body, rest.

    ``head_only``: the response to a HEAD request (its Content-Length announces no body)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {data[:300]!r}")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower().decode(), value.strip().decode("latin-1")))
    length = 0
    for n, v in headers:
        if n == "content-length" and not head_only:
            length = int(v)
    return status, headers, rest[:length], rest[length:]


def read_response(sock: socket.socket, timeout: float = CLIENT_TIMEOUT) -> bytes:
    """Read from ``sock`` until one whole response (Content-Length framed) arrived."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            _, _, body, _ = split_response(data)
            length = len(body)
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) >= length:
                return data
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no whole response in {timeout} s: {data[:300]!r}")
        sock.settimeout(left)
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def openssl_client(
    port: int,
    *args: str,
    servername: str | None = None,
    send: bytes = b"",
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` to the port (``-noservername`` when ``servername`` is None)."""
    sni = ["-servername", servername] if servername is not None else ["-noservername"]
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", *sni, "-showcerts", *args],
        input=send.decode("latin-1") if send else "",
        capture_output=True,
        text=True,
        # After ALPN h2 the server's SETTINGS frame is printed raw: not always UTF-8.
        errors="replace",
        timeout=timeout,
    )


def first_certificate(s_client_output: str) -> bytes:
    """The leaf certificate's PEM from ``openssl s_client -showcerts`` output."""
    start = s_client_output.find("-----BEGIN CERTIFICATE-----")
    end = s_client_output.find("-----END CERTIFICATE-----", start)
    if start == -1 or end == -1:
        raise AssertionError("no certificate in s_client output:\n" + s_client_output[-2000:])
    return s_client_output[start : end + len("-----END CERTIFICATE-----")].encode() + b"\n"
