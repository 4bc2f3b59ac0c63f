"""HTTP/2 control-frame floods, end to end: a raw socket floods an h2c listener with PING or
SETTINGS frames while curl and h2load (prior knowledge) make ordinary requests.

What is held: past ``max_control_frames_per_second`` (1000 by default) the flooding
connection gets GOAWAY ENHANCE_YOUR_CALM (0xb) and is closed, having had at most that many
frames answered; a flooder that never reads gets the same; the ordinary requests made during
the flood are answered. How long they take — p50, p99 and max, with the limit and with it
raised out of reach, and the proxy's CPU time meanwhile — is printed for the record
(``pytest -s``), not asserted: timing on a shared 2-core runner is not a test.

Everything is on loopback; each flood is bounded in frames and in seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import LOOPBACK, Proxy, _descendants, curl, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PING, SETTINGS, GOAWAY = 0x6, 0x4, 0x7
ACK = 0x1
ENHANCE_YOUR_CALM = 0xB
# The default of global.h2.max_control_frames_per_second.
DEFAULT_LIMIT = 1000
# "Out of reach": the proxy without the limit, for the figures printed beside it.
NO_LIMIT = 1_000_000_000
# Bounds of one flood: seconds in all, and frames written to one connection (most of them
# to kernel buffers: a connection the proxy cut takes writes until its reset arrives).
FLOOD_SECONDS = 3.0
FLOOD_FRAMES = 2_000_000
# Longest a flooder waits for the proxy's next bytes (or its close).
READ_IDLE = 3.0
# The proxy's wait for a client that reads none of the replies to its frames
# (edge/h2_connection.py BACKLOG_TIMEOUT), then how long its close waits for the client to
# take what is queued (net/h2_channel.py CLOSE_TIMEOUT).
BACKLOG_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0
# Frames per write of the flooder.
BATCH = 1000
# Ordinary requests during the measured floods: clients, and requests a second each.
PROBE_CLIENTS = 4
PROBE_RPS = 25


def frame(ftype: int, flags: int = 0, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, 0) + payload


FLOOD_FRAME = {"PING": frame(PING, 0, b"flood!!!"), "SETTINGS": frame(SETTINGS)}


def config(port: int, limit: int | None = None) -> str:
    h2 = "" if limit is None else f"[global.h2]\nmax_control_frames_per_second = {limit}\n"
    return f"""
[global]
access_log = "off"
{h2}
[[listener]]
name = "plain"
bind = "{LOOPBACK}:{port}"
h2c = true

[[route]]
respond = {{ status = 200, body = "ok\\n" }}
"""


@contextlib.contextmanager
def h2c_proxy(directory: Path, limit: int | None = None) -> Iterator[tuple[Proxy, int]]:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    with Proxy(directory, config(port, limit), ports=[port]) as proxy:
        yield proxy, port


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, int]]:
    """The proxy with the default limit."""
    with h2c_proxy(tmp_path_factory.mktemp("floods")) as running:
        yield running


# --- the flooder --------------------------------------------------------------------------------


@dataclass
class Connection:
    """What one flooding connection got back."""

    acks: int = 0
    goaway: int | None = None
    closed: bool = False
    sent_bytes: int = 0
    frame_size: int = 1
    stalled_after: float = 0.0  # seconds from the start to the last write the proxy took
    ended_after: float | None = None  # seconds from the start to the end, if it came

    @property
    def sent(self) -> int:
        """Frames written whole."""
        return self.sent_bytes // self.frame_size


@dataclass
class Flood:
    """Floods ``port`` with ``kind`` frames from raw sockets (prior-knowledge h2c), reading
    what comes back on a thread of its own unless ``read`` is off (then it is read after the
    flood); with ``reconnect``, a new connection follows each closed one until the time is
    up. Writes that the proxy does not take are tried again until the time is up."""

    port: int
    kind: str
    read: bool = True
    reconnect: bool = False
    seconds: float = FLOOD_SECONDS
    frames: int = FLOOD_FRAMES  # at most, per connection
    connections: list[Connection] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Flood:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.started.wait(10.0), "the flood did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(self.seconds + 30.0)
        assert not self._thread.is_alive(), "the flood did not end"

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                conn = Connection(frame_size=len(FLOOD_FRAME[self.kind]))
                self.connections.append(conn)
                self._one(conn, deadline)
                if not self.reconnect:
                    break
        finally:
            self.started.set()  # even when it failed at once

    def _one(self, conn: Connection, deadline: float) -> None:
        t0 = time.monotonic()
        sock = socket.create_connection((LOOPBACK, self.port), timeout=5.0)
        reader: threading.Thread | None = None
        try:
            sock.sendall(PREFACE + frame(SETTINGS))
            sock.settimeout(0.2)  # shared by the reader: its waits are as short
            if self.read:
                reader = threading.Thread(target=self._read, args=(sock, conn), daemon=True)
                reader.start()
            batch = memoryview(FLOOD_FRAME[self.kind] * BATCH)
            limit = self.frames * conn.frame_size
            while conn.sent_bytes < limit and time.monotonic() < deadline:
                if self._stop.is_set() or conn.goaway is not None or conn.closed:
                    break
                offset = conn.sent_bytes % len(batch)
                size = min(len(batch) - offset, limit - conn.sent_bytes)
                try:
                    n = sock.send(batch[offset : offset + size])
                except TimeoutError:
                    continue  # not taken: the proxy stopped reading us
                except OSError:
                    break  # closed by the proxy
                conn.sent_bytes += n
                conn.stalled_after = time.monotonic() - t0
                self.started.set()
            if reader is None:
                # What came back, read at last: the ACKs, then GOAWAY and the end.
                self._read(sock, conn)
            else:
                # The end of the connection, if it comes (the reader sees it).
                end = time.monotonic() + READ_IDLE
                while not conn.closed and not self._stop.is_set() and time.monotonic() < end:
                    time.sleep(0.01)
            if conn.closed:
                conn.ended_after = time.monotonic() - t0
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # ends the reader's wait
            if reader is not None:
                reader.join(READ_IDLE + 5.0)
            sock.close()

    @staticmethod
    def _read(sock: socket.socket, conn: Connection) -> None:
        """Frames until the connection ends, or nothing came for READ_IDLE seconds."""
        buf = b""
        idle_since = time.monotonic()
        while True:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                if time.monotonic() - idle_since > READ_IDLE:
                    return
                continue
            except OSError:
                data = b""
            if not data:
                conn.closed = True
                return
            idle_since = time.monotonic()
            buf += data
            i = 0
            while len(buf) - i >= 9:
                n = int.from_bytes(buf[i : i + 3], "big")
                if len(buf) - i < 9 + n:
                    break
                ftype, flags = buf[i + 3], buf[i + 4]
                if ftype in (PING, SETTINGS) and flags & ACK:
                    conn.acks += 1
                elif ftype == GOAWAY:
                    conn.goaway = int.from_bytes(buf[i + 13 : i + 17], "big")
                i += 9 + n
            buf = buf[i:]


# --- ordinary clients ---------------------------------------------------------------------------


def curl_h2c(port: int) -> tuple[int, bytes]:
    res = curl("--http2-prior-knowledge", "-w", "\n%{http_code}", f"http://{LOOPBACK}:{port}/")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    body, _, status = res.stdout.rpartition(b"\n")
    return int(status), body


def probe(port: int, seconds: float, log: Path) -> list[tuple[int, float]]:
    """Ordinary requests at a steady rate for ``seconds``: (status, milliseconds) each, by
    h2load when it is installed, else by curl one after another."""
    if shutil.which("h2load"):
        subprocess.run(
            ["h2load", "-c", str(PROBE_CLIENTS), "-m", "1", "--rps", str(PROBE_RPS),
             "-D", str(max(1, int(seconds))), "--log-file", str(log),
             f"http://{LOOPBACK}:{port}/"],
            capture_output=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
        return [(int(status), int(us) / 1000) for _, status, us in rows]
    out: list[tuple[int, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        status, _ = curl_h2c(port)
        out.append((status, (time.monotonic() - t0) * 1000))
    return out


def cpu_seconds(proxy: Proxy) -> float:
    """User + system CPU time of the proxy and its workers so far."""
    total = 0
    for pid in [proxy.pid, *_descendants(proxy.pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["PING", "SETTINGS"])
def test_flood_gets_goaway_enhance_your_calm_and_others_are_served(
    site: tuple[Proxy, int], kind: str
) -> None:
    proxy, port = site
    with Flood(port, kind) as flood:
        status, body = curl_h2c(port)  # made while the flood is under way
    (conn,) = flood.connections
    print(f"\n{kind} flood: {conn.sent} sent, {conn.acks} answered, GOAWAY {conn.goaway}")
    assert conn.goaway == ENHANCE_YOUR_CALM
    assert conn.closed
    # The client's first SETTINGS spends one of the budget; the rest were answered.
    assert conn.acks <= DEFAULT_LIMIT
    assert (status, body) == (200, b"ok\n")
    assert proxy.alive


def test_a_flooder_that_does_not_read_gets_goaway_too(site: tuple[Proxy, int]) -> None:
    """The flood is read after it was sent. It is a few frames past the limit, so that the
    proxy reads all of it: a socket closed with unread bytes is reset, and a reset may
    overtake the GOAWAY (see the next test for a flood that is not read whole)."""
    proxy, port = site
    with Flood(port, "PING", read=False, frames=DEFAULT_LIMIT + 10) as flood:
        status, _ = curl_h2c(port)
    (conn,) = flood.connections
    print(f"\nunread PING flood: {conn.sent} sent, {conn.acks} answered, GOAWAY {conn.goaway}")
    assert conn.goaway == ENHANCE_YOUR_CALM
    assert conn.closed
    assert conn.acks <= DEFAULT_LIMIT
    assert status == 200
    assert proxy.alive


def test_a_flooder_that_reads_nothing_is_not_read_then_closed(tmp_path: Path) -> None:
    """With the limit out of reach, a flooder that reads none of the ACKs it causes: the
    proxy stops reading it once they are not written (so they can't pile up), serves the
    others meanwhile, and closes it BACKLOG_TIMEOUT later, dropping what it could not send."""
    with h2c_proxy(tmp_path, NO_LIMIT) as (proxy, port):
        with Flood(port, "PING", read=False, seconds=BACKLOG_TIMEOUT + 8.0) as flood:
            time.sleep(2.0)
            status, _ = curl_h2c(port)  # while the flooder is not read
        (conn,) = flood.connections
        ended = "never" if conn.ended_after is None else f"after {conn.ended_after:.1f} s"
        print(
            f"\nunread PING flood, no limit: {conn.sent} frames taken in "
            f"{conn.stalled_after:.1f} s, then none; closed {ended}"
        )
        assert status == 200
        assert conn.stalled_after < BACKLOG_TIMEOUT / 2  # the proxy stopped reading it
        assert conn.closed and conn.ended_after is not None
        # Closed BACKLOG_TIMEOUT after the proxy stopped reading, and CLOSE_TIMEOUT more to
        # drop what it could not send (a transport closes only once its buffer is written).
        assert conn.ended_after - conn.stalled_after < BACKLOG_TIMEOUT + CLOSE_TIMEOUT + 1.0
        assert proxy.alive


def test_other_clients_latency_during_floods_with_and_without_the_limit(
    tmp_path: Path,
) -> None:
    """A flooder that reconnects each time it is closed, for FLOOD_SECONDS, while h2load
    makes ordinary requests at a steady rate: every flooding connection is cut at the limit
    (so the flood costs a bounded amount of work a second), every ordinary request is
    answered. The latencies and the proxy's CPU time are printed, with the limit and with it
    raised out of reach; an unread flood's figures too."""
    lines = []
    for label, limit in (("limit 1000 (default)", None), (f"limit {NO_LIMIT}", NO_LIMIT)):
        for kind in ("PING", "SETTINGS"):
            with h2c_proxy(tmp_path / f"{kind}-{limit}", limit) as (proxy, port):
                cpu = cpu_seconds(proxy)
                rss = proxy.rss_kib()
                with Flood(port, kind, reconnect=True) as flood:
                    probes = probe(port, FLOOD_SECONDS - 1, tmp_path / f"{kind}-{limit}.log")
                    flood.stop()
                cpu = cpu_seconds(proxy) - cpu
                rss = proxy.rss_kib() - rss
            ms = [t for _, t in probes]
            conns = flood.connections
            lines.append(
                f"{label:>22} {kind:<8} requests {len(probes):4} "
                f"(ok {sum(s == 200 for s, _ in probes):4})  p50 {percentile(ms, 0.5):7.1f} ms  "
                f"p99 {percentile(ms, 0.99):7.1f} ms  max {max(ms, default=0):7.1f} ms  "
                f"flood: {len(conns)} conns, {sum(c.sent for c in conns)} frames sent, "
                f"{sum(c.acks for c in conns)} answered, "
                f"max {max((c.acks for c in conns), default=0)} per conn  "
                f"proxy CPU {cpu:.2f} s, RSS {rss:+} KiB"
            )
            assert probes and all(s == 200 for s, _ in probes)
            if limit is None:
                cut = [c for c in conns if c.goaway is not None]
                assert cut and all(c.goaway == ENHANCE_YOUR_CALM for c in cut)
                assert all(c.acks <= DEFAULT_LIMIT for c in conns)
    with h2c_proxy(tmp_path / "unread", NO_LIMIT) as (proxy, port):
        rss = proxy.rss_kib()
        with Flood(port, "PING", read=False, seconds=2.0) as flood:
            pass
        rss = proxy.rss_kib() - rss
        (conn,) = flood.connections
        lines.append(
            f"{'limit ' + str(NO_LIMIT):>22} unread PING flood: {conn.sent} frames taken in "
            f"{conn.stalled_after:.2f} s, then none (the proxy stopped reading), "
            f"RSS {rss:+} KiB"
        )
    print("\n" + "\n".join(lines))
