"""Real peers for the L4 end-to-end tests: PostgreSQL, HAProxy, openssl s_server, nginx, and
raw TCP origins; plus revproxy itself started on a ``Config`` built in Python.

Rule of this room: nothing here is a mock, every wait is bounded, and every process started
here is stopped by the context manager that started it (by its own pid, never by name).

``ConfigProxy`` runs the real ``Instance`` (listeners, generations, uvloop) in a subprocess on
a pickled ``Config``: the L4 tests cover the relay and the listener, not TOML parsing, so they
don't depend on the loader; ``docs/l4.md`` shows the same configurations as TOML.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from harness import (
    LOOPBACK,
    REPO,
    START_TIMEOUT,
    STOP_TIMEOUT,
    closed_port,
    free_port,
    wait_until,
)

from revproxy.config.model import Bind, Config, Global, Listener, Pool, Server, Timeouts

__all__ = [
    "LOOPBACK",
    "REPO",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "closed_port",
    "free_port",
    "wait_until",
]


_LAUNCHER = """
import asyncio, pickle, sys
from revproxy.runtime.supervisor import Instance

with open(sys.argv[1], "rb") as f:
    config = pickle.load(f)

async def main() -> int:
    instance = Instance(lambda: config)
    await instance.start()
    print("ready", flush=True)
    await instance.serve_until_stopped()
    return 0

try:
    import uvloop
    factory = uvloop.new_event_loop
except ImportError:
    factory = None
with asyncio.Runner(loop_factory=factory) as runner:
    sys.exit(runner.run(main()))
"""


def bind(port: int) -> tuple[Bind, ...]:
    return (Bind(host=LOOPBACK, port=port),)


def servers(*ports: int) -> tuple[Server, ...]:
    return tuple(Server(address=LOOPBACK, port=p) for p in ports)


def pool(name: str, *ports: int, **kw: object) -> Pool:
    return Pool(name=name, servers=servers(*ports), **kw)  # type: ignore[arg-type]


def tcp_listener(name: str, port: int, pool_name: str, **kw: object) -> Listener:
    return Listener(name=name, bind=bind(port), mode="tcp", pool=pool_name, **kw)  # type: ignore[arg-type]


def tunnel_timeouts(tunnel: float = 60.0, connect: float = 2.0) -> Timeouts:
    return Timeouts(connect=connect, tunnel=tunnel)


class ConfigProxy:
    """revproxy serving ``config`` in a subprocess; the access log goes to a file."""

    def __init__(self, directory: Path, config: Config) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.access_path = directory / "access.log"
        self.stderr_path = directory / "proxy.stderr"
        g = config.global_
        self.config = Config(
            global_=Global(
                access_log=str(self.access_path),
                watch=False,
                shutdown_timeout=2.0,
                state_dir=directory,
                header_timeout=g.header_timeout,
            ),
            listeners=config.listeners,
            routes=config.routes,
            pools=config.pools,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConfigProxy:
        """Start and wait for "ready" (printed once every listener is bound).

        Readiness is not probed by connecting: a probe would be a connection through the
        proxy, with its own access-log line and origin connection.
        """
        pickled = self.dir / "config.pickle"
        pickled.write_bytes(pickle.dumps(self.config))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(pickled)],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=env,
            )
        try:
            assert self.proc.stdout is not None
            ready = threading.Event()
            stdout = self.proc.stdout

            def watch() -> None:
                for line in stdout:
                    if line.strip() == b"ready":
                        ready.set()

            threading.Thread(target=watch, daemon=True).start()
            if not wait_until(lambda: ready.is_set() or not self.alive, START_TIMEOUT):
                raise RuntimeError(f"revproxy did not start in time:\n{self.stderr()}")
            if not self.alive:
                raise RuntimeError(f"revproxy exited:\n{self.stderr()}")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        return _stop(self.proc)

    def __enter__(self) -> ConfigProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def access_lines(self) -> list[str]:
        if not self.access_path.exists():
            return []
        return [ln for ln in self.access_path.read_text(errors="replace").splitlines() if ln]

    def wait_access(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        found: list[str] = []

        def check() -> bool:
            found[:] = [ln for ln in self.access_lines() if predicate(ln)]
            return bool(found)

        if not wait_until(check, timeout):
            raise AssertionError(
                "no matching access log line in:\n"
                + "\n".join(self.access_lines()[-20:])
                + "\n--- stderr:\n"
                + self.stderr()[-3000:]
            )
        return found[-1]


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    return proc.returncode


def access_field(line: str, name: str) -> str:
    """``in=123`` → "123" for name "in"."""
    for part in line.split():
        if part.startswith(name + "="):
            return part[len(name) + 1 :]
    raise AssertionError(f"no {name}= in {line!r}")


def access_status(line: str) -> int:
    """The status after the quoted ``"METHOD path"`` of an access-log text line."""
    return int(line.split('"')[2].split()[0])


# --- raw TCP origins --------------------------------------------------------------------------


class TcpOrigin:
    """A threaded TCP server calling ``handle(sock, number)`` for every connection."""

    def __init__(self, handle: Callable[[socket.socket, int], None], name: str = "tcp") -> None:
        self.handle = handle
        self.name = name
        self.connections = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._clients: set[socket.socket] = set()
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"{name}-accept")
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._clients.add(client)
            t = threading.Thread(target=self._serve, args=(client, number), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket, number: int) -> None:
        sock.settimeout(60)
        try:
            self.handle(sock, number)
        except OSError:
            pass
        except BaseException as exc:  # shown by the test through .errors
            self.errors.append(exc)
        finally:
            with self._lock:
                self._clients.discard(sock)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> TcpOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Bytes up to and including the first CRLF (read one at a time: nothing over-read)."""
    line = bytearray()
    while not line.endswith(b"\r\n"):
        b = sock.recv(1)
        if not b or len(line) > limit:
            break
        line += b
    return bytes(line)


def pattern_block(seed: bytes, size: int = 1 << 20) -> bytes:
    return (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]


def send_pattern(sock: socket.socket, total: int, seed: bytes) -> str:
    """Send ``total`` bytes made from ``seed``; returns their sha256."""
    block = pattern_block(seed)
    digest = hashlib.sha256()
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    return digest.hexdigest()


def expected_sha256(total: int, seed: bytes) -> str:
    block = pattern_block(seed)
    digest = hashlib.sha256()
    left = total
    while left:
        n = min(len(block), left)
        digest.update(block[:n])
        left -= n
    return digest.hexdigest()


def drain_sha256(sock: socket.socket) -> tuple[int, str]:
    """Read to end of stream: (bytes, sha256)."""
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    n = 0
    while True:
        got = sock.recv_into(buf)
        if not got:
            return n, digest.hexdigest()
        digest.update(view[:got])
        n += got


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise AssertionError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return found[-1].parent


@contextlib.contextmanager
def postgres(log_path: Path | None = None, settings: tuple[str, ...] = ()) -> Iterator[int]:
    """A throwaway PostgreSQL cluster on a loopback port (trust auth, user postgres).

    PostgreSQL refuses to run as root: then it runs as the ``postgres`` user in a directory
    of its own (the pytest tmp_path is not reachable by that user). Its log goes to
    ``log_path`` when given (e.g. with ``settings=("log_connections=on",)``: one "connection
    received" line per connection it sees).
    """
    bindir = _pg_bin()
    as_root = os.geteuid() == 0
    data_root = Path(tempfile.mkdtemp(prefix="revproxy-pg-"))
    prefix: list[str] = []
    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(data_root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = data_root / "data"
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        log_file = log_path or data_root / "postgres.log"
        extra = [arg for setting in settings for arg in ("-c", setting)]
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                [
                    *prefix,
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-h",
                    LOOPBACK,
                    "-k",
                    str(data_root),
                    "-c",
                    "fsync=off",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def ready() -> bool:
            r = subprocess.run(
                [str(bindir / "pg_isready"), "-h", LOOPBACK, "-p", str(port), "-t", "1"],
                capture_output=True,
                timeout=10,
            )
            return r.returncode == 0 or proc.poll() is not None

        if not wait_until(ready, 60, 0.2) or proc.poll() is not None:
            raise AssertionError("PostgreSQL did not start:\n" + log_file.read_text()[-3000:])
        yield port
    finally:
        # SIGINT is PostgreSQL's "fast shutdown". runuser does not pass SIGINT on: sent to it,
        # the stop waited out STOP_TIMEOUT, killed runuser and left the postmaster running
        # (until it found its lock file gone). The postmaster, named by its pid file, gets it.
        postmaster = _postmaster_pid(data) if as_root else None
        if postmaster is not None and proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
        _stop(proc, signal.SIGINT)
        shutil.rmtree(data_root, ignore_errors=True)


def _postmaster_pid(data: Path) -> int | None:
    """The running postmaster's pid (the first line of its ``postmaster.pid``), if any."""
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def psql(port: int, sql: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "psql",
            "-h",
            LOOPBACK,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"},
        stdin=subprocess.DEVNULL,
    )


# --- HAProxy, openssl s_server, nginx ---------------------------------------------------------


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.path.exists(p)), None
    )
    if path is None:
        raise AssertionError(f"{tool} not found (apt-get install {package})")
    return path


@contextlib.contextmanager
def haproxy_tcp(
    directory: Path, port: int, server_port: int, server_opts: str = ""
) -> Iterator[None]:
    """HAProxy in ``mode tcp`` on ``port`` forwarding to ``server_port`` with ``server_opts``."""
    exe = _require("haproxy", "haproxy")
    cfg = directory / "haproxy.cfg"
    cfg.write_text(
        f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind {LOOPBACK}:{port}
    default_backend b
backend b
    server x {LOOPBACK}:{server_port} {server_opts}
"""
    )
    with open(directory / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([exe, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_until(lambda: _connectable(port) or proc.poll() is not None, START_TIMEOUT):
            raise AssertionError("HAProxy did not start")
        if proc.poll() is not None:
            raise AssertionError("HAProxy exited:\n" + (directory / "haproxy.log").read_text())
        yield
    finally:
        _stop(proc)


@contextlib.contextmanager
def openssl_server(cert: Path, key: Path, *args: str) -> Iterator[int]:
    """``openssl s_server -www`` (answers GET with a status page) on a loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"{LOOPBACK}:{port}",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-www",
            "-naccept",
            "1000",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        if not wait_until(lambda: _connectable(port) or proc.poll() is not None, START_TIMEOUT):
            raise AssertionError("openssl s_server did not start")
        if proc.poll() is not None:
            raise AssertionError("openssl s_server exited")
        yield port
    finally:
        _stop(proc)


@contextlib.contextmanager
def nginx(directory: Path, server: str, http: str = "") -> Iterator[int]:
    """nginx (its own prefix, no daemon) with one ``server { listen PORT ...; <server> }`` on a
    loopback port; ``http`` adds lines to the http block. Yields the port."""
    exe = _require("nginx", "nginx")
    port = free_port()
    prefix = directory / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    # Workers of an nginx started as root run as nobody, who cannot read the tests' folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    ssl = " ssl" if "ssl_certificate" in server else ""
    conf.write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {http}
    server {{
        listen {LOOPBACK}:{port}{ssl};
        {server}
    }}
}}
"""
    )
    with open(prefix / "logs" / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [exe, "-p", str(prefix), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        if not wait_until(lambda: _connectable(port) or proc.poll() is not None, START_TIMEOUT):
            raise AssertionError("nginx did not start")
        if proc.poll() is not None:
            raise AssertionError("nginx exited:\n" + (prefix / "logs" / "error.log").read_text())
        yield port
    finally:
        _stop(proc)


@contextlib.contextmanager
def nginx_tls(directory: Path, cert: Path, key: Path, body: str) -> Iterator[int]:
    """nginx serving ``body`` over TLS on a loopback port."""
    server = (
        f"ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        f'        location / {{ return 200 "{body}\\n"; }}'
    )
    with nginx(directory, server) as port:
        yield port


def wait_port_free(port: int, timeout: float = 5.0) -> None:
    wait_until(lambda: not _connectable(port), timeout)


def elapsed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0
