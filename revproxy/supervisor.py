"""The running instance: listeners, generations, signals, reload and graceful stop.

Rule of this room: build, validate, swap, retire. A reload loads and compiles the new config
completely and binds any new address before the one reference to the current generation is
swapped; if any step fails, nothing changes and the errors are reported. Listening sockets
that stay in the config are never closed. SIGTERM/SIGINT stop accepting, let in-flight
requests finish for up to ``shutdown_timeout``, then exit 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable

from revproxy.config import Config
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.generation import Generation, build_generation
from revproxy.listener import Acceptor, BoundListener, bind_socket
from revproxy.tls import generate_default_cert

log = logging.getLogger("revproxy")


class Instance:
    """One revproxy process serving one configuration at a time."""

    def __init__(self, load: Callable[[], Config]) -> None:
        self._load = load
        self._default_pem = generate_default_cert()
        self.generation: Generation | None = None
        self._bound: dict[str, BoundListener] = {}  # bind address → sockets and servers
        self._acceptor = Acceptor(self._current)
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._resolver: asyncio.Task[None] | None = None
        self.reloads = 0

    def _current(self) -> Generation:
        assert self.generation is not None
        return self.generation

    # --- start and reload ---------------------------------------------------------------

    async def start(self) -> None:
        """Load, build and bind; raises ConfigError (or OSError for a bind) before serving."""
        config = self._load()
        gen = build_generation(config, number=1, default_pem=self._default_pem)
        await self._apply(gen)
        self._resolver = asyncio.get_running_loop().create_task(self._resolve_forever())
        from revproxy.certwatch import CertWatcher  # hot certificate swap (certwatch.py)

        self.cert_watcher = CertWatcher(lambda: self.generation)  # `reload certs` uses it too
        self.cert_watcher.start()

    async def reload(self) -> list[str]:
        """Swap in the config on disk; returns the problems (empty on success)."""
        async with self._reload_lock:
            try:
                config = self._load()
                old = self.generation
                gen = build_generation(
                    config,
                    number=(old.number + 1) if old else 1,
                    default_pem=self._default_pem,
                    previous=old,
                    access_log=old.access_log if old and _same_log(old.config, config) else None,
                )
                await self._resolve(gen)
                await self._apply(gen)
            except ConfigError as exc:
                for p in exc.problems:
                    log.error("reload rejected: %s", p)
                return [str(p) for p in exc.problems]
            except OSError as exc:
                log.error("reload rejected: %s", exc)
                return [str(exc)]
            self.reloads += 1
            log.info("reload done: generation %d", gen.number)
            return []

    async def _apply(self, gen: Generation) -> None:
        wanted: dict[str, str] = {}  # bind address → listener name
        for lst in gen.config.listeners:
            for b in lst.bind:
                wanted[str(b)] = lst.name
        new: dict[str, BoundListener] = {}
        try:
            for addr, name in wanted.items():
                if addr in self._bound:
                    continue
                lst = gen.config.listener(name)
                bind = next(b for b in lst.bind if str(b) == addr)
                try:
                    socks = bind_socket(bind)
                except OSError as exc:
                    raise ConfigError(
                        [
                            ConfigProblem(
                                lst.source,
                                f"listener {name!r} bind {addr}",
                                f"cannot bind: {exc.strerror or exc}",
                            )
                        ]
                    ) from None
                new[addr] = BoundListener(name=name, binds=(bind,), sockets=socks)
        except BaseException:
            for bl in new.values():
                for s in bl.sockets:
                    s.close()
            raise
        old = self.generation
        gen.bind_owner = wanted
        self.generation = gen  # the swap
        for addr, bl in new.items():
            bl.tasks = self._acceptor.start(addr, bl.sockets)
            self._bound[addr] = bl
            log.info("listener=%s bound %s", bl.name, addr)
        for addr in [a for a in self._bound if a not in wanted]:
            bl = self._bound.pop(addr)
            await bl.close()
            log.info("listener=%s closed %s", bl.name, addr)
        if old is not None:
            old.close()

    # --- name resolution ----------------------------------------------------------------

    async def _resolve(self, gen: Generation) -> None:
        loop = asyncio.get_running_loop()
        for pr in gen.pools.values():
            for b in pr.pool.backends:
                try:
                    ipaddress.ip_address(b.host)
                    continue
                except ValueError:
                    pass
                try:
                    async with asyncio.timeout(5.0):
                        infos = await loop.getaddrinfo(b.host, b.port, type=socket.SOCK_STREAM)
                except (OSError, TimeoutError) as exc:
                    log.warning(
                        "pool=%s backend=%s cannot resolve: %s", pr.config.name, b.label, exc
                    )
                    continue
                addrs = tuple(dict.fromkeys((str(i[4][0]), int(i[4][1])) for i in infos))
                if addrs != b.addresses:
                    b.addresses = addrs

    async def _resolve_forever(self) -> None:
        while True:
            gen = self.generation
            if gen is None:
                return
            await self._resolve(gen)
            interval = min((p.config.resolve_interval for p in gen.pools.values()), default=30.0)
            await asyncio.sleep(max(interval, 1.0))

    # --- running and stopping -----------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_until_stopped(self, on_hup: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(
            signal.SIGHUP, on_hup or (lambda: loop.create_task(self.reload()) and None)
        )
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    async def shutdown(self) -> None:
        timeout = self.generation.config.global_.shutdown_timeout if self.generation else 0
        for bl in self._bound.values():
            bl.stop_accepting()
        if self._resolver is not None:
            self._resolver.cancel()
        pending = set(self._acceptor.connections)
        if pending:
            log.info("stopping: waiting for %d connections", len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
        for bl in self._bound.values():
            await bl.close()
        self._bound.clear()
        if self.generation is not None:
            self.generation.close()
            self.generation.access_log.close()


def _same_log(a: Config, b: Config) -> bool:
    return (a.global_.access_log, a.global_.access_log_format) == (
        b.global_.access_log,
        b.global_.access_log_format,
    )


def bound_addresses(instance: Instance) -> list[tuple[str, int]]:
    out = []
    for bl in instance._bound.values():
        for s in bl.sockets:
            addr = s.getsockname()
            out.append((str(addr[0]), int(addr[1])))
    return out
