"""Hot certificate swap: new handshakes get the new certificate, connections in flight keep
theirs, a broken or mismatched pair keeps the old one, and expiring certificates are reported.

Certificates are laid out as certbot does (``live/<name>/*.pem`` symlinks into
``archive/<name>/*N.pem``, replaced by rename); handshakes are real TLS on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from revproxy.certs.files import (
    DEFAULT_CERT_COMMON_NAME,
    generate_default_cert,
    generate_self_signed,
)
from revproxy.config.model import Bind, CertPair, Config, Global, Listener, ListenerTLS
from revproxy.edge.generation import Generation, build_generation
from revproxy.runtime.certwatch import (
    CertWatcher,
    certificate_expiry,
    certificate_samples,
    expiring,
    log_expiring,
    watch_set,
)
from revproxy.runtime.supervisor import Instance

NAME = "a.example"
# Generous bound for the watcher to notice a change and swap (it settles in ~2 s).
WATCH_WAIT = 20.0


# --- certbot's layout -----------------------------------------------------------------------


def _symlink(target: str, link: Path) -> None:
    """Point `link` at `target` by rename, as certbot does (never a moment without a link)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def issue(root: Path, version: int, names: tuple[str, ...] = (NAME,), lineage: str = NAME) -> int:
    """Write archive/<lineage>/*<version>.pem and point live/<lineage>/ at them; the serial."""
    archive = root / "archive" / lineage
    live = root / "live" / lineage
    archive.mkdir(parents=True, exist_ok=True)
    live.mkdir(parents=True, exist_ok=True)
    cert = generate_self_signed(
        list(names), archive / f"fullchain{version}.pem", archive / f"privkey{version}.pem"
    )
    for kind in ("privkey", "fullchain"):
        _symlink(f"../../archive/{lineage}/{kind}{version}.pem", live / f"{kind}.pem")
    return cert.serial


def issue_mismatched(root: Path, version: int, lineage: str = NAME) -> None:
    """A new version whose private key belongs to another certificate."""
    archive = root / "archive" / lineage
    generate_self_signed([NAME], archive / f"fullchain{version}.pem", archive / "k-a.pem")
    generate_self_signed([NAME], archive / "c-b.pem", archive / f"privkey{version}.pem")
    live = root / "live" / lineage
    for kind in ("privkey", "fullchain"):
        _symlink(f"../../archive/{lineage}/{kind}{version}.pem", live / f"{kind}.pem")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_config(
    port: int, *, cert_dir: Path | None = None, certs: tuple[CertPair, ...] = ()
) -> Config:
    return Config(
        global_=Global(access_log="off"),
        listeners=(
            Listener(
                name="https",
                bind=(Bind(host="127.0.0.1", port=port),),
                tls=ListenerTLS(cert_dir=cert_dir, certs=certs),
            ),
        ),
    )


def generation(config: Config) -> Generation:
    return build_generation(config, number=1, default_pem=generate_default_cert())


# --- a TLS echo server on a generation's listener context -----------------------------------


@asynccontextmanager
async def echo_server(gen: Generation) -> AsyncIterator[int]:
    lrt = gen.listeners["https"]
    assert lrt.tls is not None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=lrt.tls.context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we look at the certificate, not trust it
    return ctx


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.cert = x509.load_der_x509_certificate(der)

    @property
    def serial(self) -> int:
        return int(self.cert.serial_number)

    async def echo(self, text: str) -> str:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()
        async with asyncio.timeout(10):
            return (await self.reader.readline()).decode().rstrip("\n")

    async def http_status(self) -> int:
        self.writer.write(f"GET / HTTP/1.1\r\nhost: {NAME}\r\n\r\n".encode())
        await self.writer.drain()
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await self.reader.readexactly(length)
        return int(head.split(b" ")[1])

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def connect(port: int, name: str = NAME) -> Conn:
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_client_context(), server_hostname=name
        )
    return Conn(reader, writer)


async def serial_of(port: int, name: str = NAME) -> int:
    conn = await connect(port, name)
    await conn.close()
    return conn.serial


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = WATCH_WAIT) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)


# --- reload_now -----------------------------------------------------------------------------


def test_reload_swaps_for_new_handshakes_and_spares_open_connections(tmp_path: Path) -> None:
    first = issue(tmp_path, 1)
    gen = generation(tls_config(0, cert_dir=tmp_path / "live"))
    watcher = CertWatcher(lambda: gen)

    async def main() -> None:
        async with echo_server(gen) as port:
            held = await connect(port)
            assert held.serial == first
            assert await held.echo("before") == "before"

            second = issue(tmp_path, 2)
            assert watcher.reload_now() == []
            assert await serial_of(port) == second
            # the connection made before the swap is untouched
            assert await held.echo("after") == "after"
            assert held.serial == first
            await held.close()

            assert watcher.reload_now() == []  # nothing changed: nothing swapped
            assert watcher.reloads == 1

    asyncio.run(main())


def test_mismatched_or_broken_pair_keeps_the_old_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = issue(tmp_path, 1)
    gen = generation(tls_config(0, cert_dir=tmp_path / "live"))
    watcher = CertWatcher(lambda: gen)

    async def main() -> None:
        async with echo_server(gen) as port:
            issue_mismatched(tmp_path, 2)
            with caplog.at_level(logging.ERROR):
                problems = watcher.reload_now()
            assert problems and any("still serving the previous" in p for p in problems)
            assert "does not match" in caplog.text
            assert await serial_of(port) == first

            (tmp_path / "archive" / NAME / "fullchain3.pem").write_text("not a certificate\n")
            _symlink(
                f"../../archive/{NAME}/fullchain3.pem", tmp_path / "live" / NAME / "fullchain.pem"
            )
            assert watcher.reload_now()
            assert await serial_of(port) == first

            third = issue(tmp_path, 4)  # a good pair again: taken at once
            assert watcher.reload_now() == []
            assert await serial_of(port) == third

    asyncio.run(main())


def test_explicit_pair_replaced_in_place(tmp_path: Path) -> None:
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    first = generate_self_signed([NAME], cert, key).serial
    gen = generation(tls_config(0, certs=(CertPair(cert=cert, key=key),)))
    watcher = CertWatcher(lambda: gen)

    async def main() -> None:
        async with echo_server(gen) as port:
            assert await serial_of(port) == first
            second = generate_self_signed([NAME], cert, key).serial  # atomic renames
            assert watcher.reload_now() == []
            assert await serial_of(port) == second
            key.write_text("garbage\n")
            assert watcher.reload_now()
            assert await serial_of(port) == second

    asyncio.run(main())


def test_deleted_lineage_stops_being_served(tmp_path: Path) -> None:
    issue(tmp_path, 1)
    other = issue(tmp_path, 1, names=("b.example",), lineage="b.example")
    gen = generation(tls_config(0, cert_dir=tmp_path / "live"))
    watcher = CertWatcher(lambda: gen)

    async def main() -> None:
        async with echo_server(gen) as port:
            for p in (tmp_path / "live" / NAME).iterdir():
                p.unlink()
            (tmp_path / "live" / NAME).rmdir()
            assert watcher.reload_now() == []
            conn = await connect(port)
            await conn.close()
            cn = conn.cert.subject.rfc4514_string()
            assert cn == f"CN={DEFAULT_CERT_COMMON_NAME}"  # the generated certificate
            assert await serial_of(port, "b.example") == other

    asyncio.run(main())


def test_watch_set_follows_symlinks_into_archive(tmp_path: Path) -> None:
    issue(tmp_path, 1)
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    cert, key = explicit / "c.pem", explicit / "k.pem"
    generate_self_signed([NAME], cert, key)
    gen = generation(
        tls_config(0, cert_dir=tmp_path / "live", certs=(CertPair(cert=cert, key=key),))
    )
    ws = watch_set(gen)
    archive = (tmp_path / "archive" / NAME).resolve()
    live = (tmp_path / "live").resolve()
    assert {archive, live, explicit.resolve()} <= ws.folders
    assert ws.relevant(str(live / NAME / "fullchain.pem"))
    assert ws.relevant(str(archive / "fullchain2.pem"))
    assert ws.relevant(str(cert.resolve()))
    assert not ws.relevant(str(explicit / "unrelated.txt"))
    assert not ws.missing

    missing = generation(tls_config(0, cert_dir=tmp_path / "nothing-yet"))
    ws2 = watch_set(missing)
    assert not ws2.folders and ws2.missing == {(tmp_path / "nothing-yet").absolute()}


# --- the watcher inside a running instance --------------------------------------------------


def test_watcher_swaps_renewal_and_first_issuance(tmp_path: Path) -> None:
    """Through `Instance`: a renewal in cert_dir, and a first certificate in a cert_dir that
    did not exist when the listener started (it served the generated certificate)."""
    le = tmp_path / "le"
    first = issue(le, 1)
    fresh = tmp_path / "fresh"
    ports = [_free_port(), _free_port()]
    config = Config(
        global_=Global(access_log="off"),
        listeners=(
            Listener(name="https", bind=(Bind(host="127.0.0.1", port=ports[0]),),
                     tls=ListenerTLS(cert_dir=le / "live")),
            Listener(name="new", bind=(Bind(host="127.0.0.1", port=ports[1]),),
                     tls=ListenerTLS(cert_dir=fresh / "live")),
        ),
    )  # fmt: skip

    async def main() -> None:
        instance = Instance(lambda: config)
        await instance.start()
        try:
            assert isinstance(instance.cert_watcher, CertWatcher)
            held = await connect(ports[0])
            assert held.serial == first
            assert await held.http_status() == 404  # no routes: a local 404, kept alive
            await asyncio.sleep(0.5)  # let the watcher set up its watches

            second = issue(le, 2)

            async def renewed() -> bool:
                return await serial_of(ports[0]) == second

            assert await wait_for(renewed), "renewal not picked up"
            assert await held.http_status() == 404  # made before the renewal, still served
            await held.close()

            conn = await connect(ports[1])
            await conn.close()
            assert conn.cert.subject.rfc4514_string() == f"CN={DEFAULT_CERT_COMMON_NAME}"
            issued = issue(fresh, 1)

            async def first_issuance() -> bool:
                return await serial_of(ports[1]) == issued

            assert await wait_for(first_issuance), "first certificate not picked up"
        finally:
            await instance.cert_watcher.stop()
            instance.request_stop()
            await instance.shutdown()

    asyncio.run(main())


def test_watcher_keeps_old_certificate_on_mismatch(tmp_path: Path) -> None:
    first = issue(tmp_path, 1)
    gen = generation(tls_config(0, cert_dir=tmp_path / "live"))
    watcher = CertWatcher(lambda: gen)

    async def main() -> None:
        async with echo_server(gen) as port:
            watcher.start()
            try:
                await asyncio.sleep(0.5)
                issue_mismatched(tmp_path, 2)
                await asyncio.sleep(5)  # more than the settle time and one retry
                assert await serial_of(port) == first
                third = issue(tmp_path, 3)

                async def swapped() -> bool:
                    return await serial_of(port) == third

                assert await wait_for(swapped)
            finally:
                await watcher.stop()

    asyncio.run(main())


# --- expiry ---------------------------------------------------------------------------------


def test_expiring_certificates_are_logged_and_exported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    soon_cert = generate_self_signed(
        ["soon.example"], tmp_path / "s.pem", tmp_path / "s.key", days=5
    )
    later = generate_self_signed(
        ["later.example", "www.later.example"], tmp_path / "l.pem", tmp_path / "l.key", days=90
    )
    pairs = (
        CertPair(cert=tmp_path / "s.pem", key=tmp_path / "s.key"),
        CertPair(cert=tmp_path / "l.pem", key=tmp_path / "l.key"),
    )
    gen = generation(tls_config(0, certs=pairs))
    now = datetime.now(UTC)

    entries = certificate_expiry(gen)
    assert {(e.listener, e.name) for e in entries} == {
        ("https", "soon.example"),
        ("https", "later.example"),
        ("https", "www.later.example"),
    }
    assert [e.name for e in expiring(entries, now)] == ["soon.example"]
    assert [e.name for e in expiring(entries, now + timedelta(days=80))] == [
        "soon.example",
        "later.example",
        "www.later.example",
    ]
    samples = dict(certificate_samples(gen))
    assert samples[("https", "soon.example")] == soon_cert.not_after.timestamp()
    assert samples[("https", "later.example")] == later.not_after.timestamp()

    with caplog.at_level(logging.WARNING, logger="revproxy.certwatch"):
        logged = log_expiring(gen, now)
    assert [e.name for e in logged] == ["soon.example"]
    assert "soon.example expires in 5 days" in caplog.text
    assert "later.example" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="revproxy.certwatch"):
        log_expiring(gen, now + timedelta(days=6))
    assert "EXPIRED" in caplog.text
