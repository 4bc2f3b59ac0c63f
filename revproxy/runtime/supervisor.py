"""The running instance: listeners, generations, workers, signals, reload and graceful stop.

Rule of this room: build, validate, swap, retire. A reload loads and compiles the new config
completely and binds any new address before the one reference to the current generation is
swapped; if any step fails, nothing changes and the errors are reported. Listening sockets
that stay in the config are never closed. SIGTERM/SIGINT stop accepting, let in-flight
requests finish for up to ``shutdown_timeout``, then exit 0.

Processes (DESIGN decision 4). With ``workers = 1`` one process binds, accepts and serves.
With more (``"auto"``: one per CPU) the master binds every listening socket, runs the health
checks, the admin endpoints, the config watch and sd_notify, and hands sockets and validated
configs to worker processes (``workers.py``) that accept and serve. Either way a reload swaps
generations in place in every serving process: nothing is re-forked.

Reloads come from SIGHUP, the admin socket (``revproxy reload`` / ``revproxy ctl reload``) and,
with ``watch = true``, from changes to ``*.toml`` in the configuration directory (debounced).
A SIGHUP, SIGUSR1 or SIGTERM that came while starting (held from the first line of ``run``:
``early_signals.py``) is acted on once the handlers are in: a SIGHUP reloads then, unless it
came before the configuration was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revproxy.certs.probe import generate_default_cert  # made by a child process
from revproxy.config.model import Bind, Config
from revproxy.edge.generation import Generation, PoolRuntime
from revproxy.edge.listener import bind_socket
from revproxy.errors import ConfigError
from revproxy.ops.metrics import InstanceMetrics
from revproxy.runtime.admin import AdminServer
from revproxy.runtime.certwatch import CertWatcher
from revproxy.runtime.control import Collected
from revproxy.runtime.early_signals import EARLY
from revproxy.runtime.frontend import Frontend
from revproxy.runtime.sdnotify import Notifier
from revproxy.runtime.servers import RuntimeServers
from revproxy.runtime.workers import (
    REPLY_TIMEOUT,
    StateRow,
    WorkerPool,
    pool_members,
    worker_count,
)
from revproxy.upstream.backend import BackendState
from revproxy.upstream.health import Change as HealthChange
from revproxy.upstream.health import HealthMonitor, Key, Target

log = logging.getLogger("revproxy")

# Config watch: reload once no *.toml changed for this long (ms), at most this long after the
# first change of a burst (an editor writes a file in several steps).
WATCH_QUIET_MS = 500
WATCH_MAX_MS = 3000

OpenSockets = Callable[[Bind, str], list[socket.socket]]


class Instance:
    """One revproxy instance (the master): serves one configuration at a time."""

    def __init__(
        self,
        load: Callable[[], Config],
        *,
        conf_dir: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._load = load
        self.conf_dir = conf_dir
        self.notifier = notifier if notifier is not None else Notifier()
        self._default_pem = generate_default_cert()
        self.metrics = InstanceMetrics()
        self.monitor = HealthMonitor(on_change=self._health_changed, metrics=self.metrics)
        self.frontend = Frontend(self._default_pem, accept=True)
        # DNS discovery runs here, once for the instance; workers are sent what it finds.
        self.frontend.discovers = True
        self.frontend.on_members = self._members_changed
        # Tunnel servers are checked where the agent connections are (this process, or each
        # worker): every check is reported to the monitor here.
        self.frontend.hub.report = self.monitor.report
        self.servers = RuntimeServers(
            lambda: self.generation, self.frontend.set_members, self.reload, conf_dir
        )
        self.workers: WorkerPool | None = None
        self.admin: AdminServer | None = None
        self.cert_watcher: Any = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_stop: asyncio.Event | None = None
        self._watched_files: frozenset[Path] = frozenset()
        self._pid_file: Path | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reloads = 0
        self.started_at = time.time()
        self.last_reload: tuple[float, list[str]] | None = None  # (unix time, problems)

    @property
    def generation(self) -> Generation | None:
        return self.frontend.generation

    @property
    def worker_mode(self) -> bool:
        return self.workers is not None

    # --- start and reload ---------------------------------------------------------------

    async def start(self) -> None:
        """Load, build and bind; raises ConfigError (or OSError for a bind) before serving."""
        EARLY.config_read()  # a SIGHUP before this asked for what is read now
        config = self._load()
        count = worker_count(config.global_.workers)
        if count > 1:
            self.frontend.accept = False
        gen = self.frontend.build(config, number=1)
        await self.frontend.discover(gen)  # servers found by DNS serve from the first request
        # The admin socket first: once a listener answers, so does `revproxy ctl`.
        await self._prepare_admin(config)
        try:
            new = self.frontend.bind_new(gen, _bind)
        except BaseException:
            if self.admin is not None:
                await self.admin.close()
            raise
        self._adopt(gen)
        await self.frontend.swap(gen, new)
        if count > 1:
            self.workers = WorkerPool(
                default_pem=self._default_pem,
                states=self.state_rows,
                on_passive=self.monitor.observe_key,
                on_check=self.monitor.report,
                on_restart=lambda: self.metrics.worker_restarts.inc(()),
                members=lambda: _members(self.generation),
            )
            try:
                await self.workers.start(
                    count, config, gen.number, self.frontend.listeners_after(gen, {})
                )
            except BaseException:
                await self._close_everything()
                raise
        self.frontend.start_background()
        self.monitor.start()
        self.cert_watcher = CertWatcher(lambda: self.generation)  # `reload certs` uses it too
        self.cert_watcher.start()
        self._write_pid_file(config)
        self._follow_watch(config)
        self.metrics.last_reload.set((), time.time())
        self.notifier.ready(self._status())
        self.notifier.start_watchdog()

    async def reload(self) -> list[str]:
        """Swap in the config on disk; returns the problems (empty on success)."""
        async with self._reload_lock:
            if self._stop.is_set():
                return ["revproxy is stopping; not reloading"]
            self.notifier.reloading()
            problems = await self._reload()
            self.last_reload = (time.time(), problems)
            if problems:
                self.metrics.reloads.inc(("error",))
                self.notifier.ready(
                    f"reload rejected ({len(problems)} problem(s)); " + self._status()
                )
            else:
                self.reloads += 1
                self.metrics.reloads.inc(("ok",))
                self.metrics.last_reload.set((), time.time())
                self.notifier.ready(self._status())
            return problems

    async def _reload(self) -> list[str]:
        try:
            # In a thread: certificate files that changed are read by a child process
            # (certs/probe.py, ~0.1 s), which must not hold up the connections being served.
            config = await asyncio.to_thread(self._load)
            gen = self.frontend.build(config)
            await self.frontend.resolve(gen)
            new = self.frontend.bind_new(gen, _bind)
        except ConfigError as exc:
            for p in exc.problems:
                log.error("reload rejected: %s", p)
            return [str(p) for p in exc.problems]
        except OSError as os_error:
            log.error("reload rejected: %s", os_error)
            return [str(os_error)]
        try:
            await self._prepare_admin(config)
        except ConfigError as exc:
            for bl in new.values():
                for s in bl.sockets:
                    s.close()
            for p in exc.problems:
                log.error("reload rejected: %s", p)
            return [str(p) for p in exc.problems]
        count = worker_count(config.global_.workers)
        if (count > 1) != self.worker_mode:
            log.warning(
                "workers = %s takes effect at the next restart (a reload does not switch "
                "between one process and several)",
                config.global_.workers,
            )
        self._adopt(gen)
        if self.workers is not None:
            # A worker that cannot follow (say, a certificate file vanished since the master
            # read it) is replaced by one started on the new config: logged, not a rejection.
            await self.workers.reload(
                config,
                gen.number,
                self.frontend.listeners_after(gen, new),
                count if count > 1 else self.workers.count,
                members=_members(gen),
            )
        await self.frontend.swap(gen, new)
        if self.admin is not None:
            self.admin.commit()
        self._write_pid_file(config)
        self._follow_watch(config)
        log.info("reload done: generation %d", gen.number)
        return []

    async def _prepare_admin(self, config: Config) -> None:
        adm = config.admin
        if self.admin is None and adm.socket is None and adm.bind is None:
            return
        if self.admin is None:
            self.admin = AdminServer(self)
        await self.admin.prepare(adm)

    def _adopt(self, gen: Generation) -> None:
        """Health follows the new generation's backends (records kept for unchanged ones)."""
        self.monitor.adopt((pr.config, pr.pool.backends) for pr in gen.pools.values())
        if not self.worker_mode and self.frontend.accept:
            for pr in gen.pools.values():
                if pr.config.passive is not None:
                    pr.dialer.observer = self.monitor.observe

    async def reload_certs(self) -> list[str]:
        """``reload certs``: certificates from disk now (the whole config when there is no
        certificate watcher)."""
        if self.cert_watcher is None:
            return await self.reload()
        problems: list[str] = list(self.cert_watcher.reload_now())
        if self.workers is not None:
            answers = await self.workers.ask_all({"op": "reload_certs"}, timeout=REPLY_TIMEOUT)
            for answer in answers:
                problems.extend(answer.get("problems") or [])
        return problems

    def reopen_logs(self) -> list[str]:
        """SIGUSR1 / ``ctl reopen-logs``: the access-log file is opened again by its name
        (logrotate's ``postrotate``); every worker is sent SIGUSR1 to do the same."""
        problems: list[str] = []
        gen = self.generation
        if gen is not None and not gen.access_log.reopen():
            problems.append(f"access log {gen.access_log.target}: could not be reopened")
        if self.workers is not None:
            for pid in self.workers.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
        log.info("access log reopened%s", f": {'; '.join(problems)}" if problems else "")
        return problems

    # --- run-time servers (DNS discovery, ctl add/del server) ---------------------------

    def _members_changed(self, gen: Generation, pr: PoolRuntime) -> None:
        """A pool of ``gen`` gained or lost servers at run time: health follows, workers are
        told. (A generation still being built is adopted whole, and its workers get its
        servers with the reload.)"""
        if gen is not self.generation:
            return
        self.monitor.follow(pr.config, pr.pool.backends)
        if self.workers is not None:
            self.workers.broadcast({"op": "members", **pool_members(pr.pool)})
            self.workers.broadcast_states(self.state_rows())

    async def edit_servers(self, verb: str, args: list[str]) -> tuple[bool, str]:
        """``add server …`` / ``del server …`` (runtime/servers.py)."""
        return await self.servers.execute(verb, args)

    # --- health ---------------------------------------------------------------------------

    def _health_changed(self, target: Target, change: HealthChange) -> None:
        if self.workers is not None:
            self.workers.broadcast_states([_state_row(target)])

    def state_rows(self) -> list[StateRow]:
        return [_state_row(t) for t in self.monitor.targets.values()]

    def set_admin_state(self, spec: str, state: BackendState | None) -> tuple[bool, str]:
        """``drain`` / ``disable`` / ``enable`` a backend named by the operator."""
        t = self.monitor.find(spec)
        if t is None:
            names = ", ".join(sorted(x.backend.label for x in self.monitor.targets.values()))
            return False, f"no server {spec!r} (servers: {names or 'none'})"
        before = t.record.state
        self.monitor.set_admin(t, state)
        after = t.record.state
        if before is after:
            return True, f"{t.backend.label}: already {after.value}"
        return True, f"{t.backend.label}: {before.value} -> {after.value}"

    # --- what the admin shows ---------------------------------------------------------------

    async def collect(self) -> Collected:
        """Request metrics and live counts, summed over the serving processes."""
        from revproxy.ops.metrics import Registry

        registry = Registry()
        live: dict[Key, list[int]] = {}
        connections: dict[str, int] = {}
        if self.workers is None:
            registry.merge(self.frontend.metrics.registry.snapshot())
            connections = dict(self.frontend.acceptor.active)
            gen = self.generation
            if gen is not None:
                for pr in gen.pools.values():
                    for b in pr.pool.backends:
                        live[(b.pool, b.host, b.port)] = [b.active, b.total]
        else:
            for answer in await self.workers.ask_all({"op": "stats"}):
                registry.merge(answer.get("metrics") or {})
                for name, n in (answer.get("connections") or {}).items():
                    connections[name] = connections.get(name, 0) + int(n)
                for pool, host, port, active, total in answer.get("backends") or []:
                    row = live.setdefault((pool, host, int(port)), [0, 0])
                    row[0] += int(active)
                    row[1] += int(total)
        registry.merge(self.metrics.registry.snapshot())
        return Collected(registry=registry, live=live, connections=connections)

    def _status(self) -> str:
        gen = self.generation
        if gen is None:
            return "starting"
        n = sum(len(lst.bind) for lst in gen.config.listeners)
        procs = f"{len(self.workers.handles)} workers" if self.workers else "1 process"
        return f"generation {gen.number}: {n} listening address(es), {procs}"

    # --- config watch and pid file ----------------------------------------------------------

    def _follow_watch(self, config: Config) -> None:
        want = config.global_.watch and self.conf_dir is not None
        files = list_files(config)
        if self._watch_task is not None and (not want or files != self._watched_files):
            assert self._watch_stop is not None
            self._watch_stop.set()
            self._watch_task = None
        if want and self._watch_task is None:
            self._watch_stop = asyncio.Event()
            self._watched_files = files
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(files))

    async def _watch(self, files: frozenset[Path]) -> None:
        from watchfiles import Change, awatch

        assert self.conf_dir is not None and self._watch_stop is not None
        conf_dir = str(self.conf_dir)
        # allow_file / deny_file lists: their folders are watched too, for those files only.
        named = {str(p) for p in files}
        folders = sorted({str(p.parent) for p in files} - {conf_dir})

        def ours(change: Change, path: str) -> bool:
            if path in named:
                return True
            return path.endswith(".toml") and str(Path(path).parent) == conf_dir

        log.info("watching %s for configuration changes", self.conf_dir)
        try:
            async for changes in awatch(
                self.conf_dir,
                *folders,
                watch_filter=ours,
                step=WATCH_QUIET_MS,
                debounce=WATCH_MAX_MS,
                stop_event=self._watch_stop,
                recursive=False,
            ):
                names = ", ".join(sorted({Path(p).name for _, p in changes}))
                log.info("configuration changed (%s); reloading", names)
                await self.reload()
        except Exception as exc:  # a broken watch must not take the instance down
            log.error("configuration watch stopped: %s", exc)

    def _write_pid_file(self, config: Config) -> None:
        path = config.global_.pid_file
        if path == self._pid_file:
            return
        self._remove_pid_file()
        if path is None:
            return
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(path)
            self._pid_file = path
        except OSError as exc:
            log.error("cannot write pid_file %s: %s", path, exc)

    def _remove_pid_file(self) -> None:
        if self._pid_file is None:
            return
        with contextlib.suppress(OSError):
            if self._pid_file.read_text().strip() == str(os.getpid()):
                self._pid_file.unlink()
        self._pid_file = None

    # --- running and stopping -----------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve_until_stopped(self, on_hup: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        hup = on_hup or (lambda: self._spawn(self.reload()))
        loop.add_signal_handler(signal.SIGHUP, hup)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        self._take_early_signals(hup)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            # Stopping: a reload or a reopen has nothing left to do, and must not end the
            # process before its connections finish (their default action would).
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            await self.shutdown()

    def _take_early_signals(self, hup: Callable[[], None]) -> None:
        """What came while starting (``early_signals.py``), now that the handlers are in."""
        early = EARLY.take()
        if early.stop:
            self.request_stop()
            return
        if early.reopen:
            self.reopen_logs()
        if early.reload:
            log.info("SIGHUP received while starting, after the configuration was read: reloading")
            hup()
        elif early.covered:
            log.info(
                "SIGHUP received while starting, before the configuration was read: "
                "the configuration loaded is the newest, nothing to reload"
            )

    async def shutdown(self) -> None:
        gen = self.generation
        timeout = gen.config.global_.shutdown_timeout if gen else 0.0
        self.notifier.stopping()
        if self._watch_stop is not None:
            self._watch_stop.set()
        self.frontend.stop_accepting()
        if self.workers is not None:
            await self.workers.stop(timeout)
        await self.frontend.shutdown(timeout)
        await self._close_everything()

    async def _close_everything(self) -> None:
        self.monitor.close()
        if self.cert_watcher is not None:
            with contextlib.suppress(Exception):
                await self.cert_watcher.stop()
        if self.admin is not None:
            await self.admin.close()
        if self.workers is not None:
            await self.workers.stop(0.0)
        for task in list(self._tasks):
            task.cancel()
        self._remove_pid_file()
        self.notifier.close()


def _state_row(t: Target) -> StateRow:
    pool, host, port = t.key
    return [pool, host, port, t.record.state.value, t.record.up_since]


def _members(gen: Generation | None) -> dict[str, dict[str, Any]]:
    """Every pool's run-time servers, for workers (``pool_members``)."""
    if gen is None:
        return {}
    return {name: pool_members(pr.pool) for name, pr in gen.pools.items()}


def _bind(bind: Bind, addr: str) -> list[socket.socket]:
    return bind_socket(bind)


def list_files(config: Config) -> frozenset[Path]:
    """The allow_file / deny_file lists and the users files a configuration reads (resolved):
    a change to one reloads the configuration like a change to a ``*.toml``."""
    found: set[Path] = {users.file.resolve() for users in config.users}
    for access in [lst.access for lst in config.listeners] + [r.access for r in config.routes]:
        for path in (access.allow_file, access.deny_file):
            if path is not None:
                found.add(path.resolve())
    return frozenset(found)
