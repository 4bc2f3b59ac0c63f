"""Worker processes: spawned by the master, fed sockets and configurations over a channel.

Rule of this room: a worker never reads the configuration from disk and never binds. The
master validates and builds every configuration first, binds every listening socket, and
hands both to the workers: the config as the very object it validated (pickled), the sockets
as file descriptors (SCM_RIGHTS) over a Unix socketpair, one per worker. A worker swaps its
generation in place on a reload, exactly as a single process does, so a reload re-forks
nothing and never closes a socket that stays. Health is the master's: workers apply the
states it broadcasts and report failed connections to it (passive checks).

Workers are fresh interpreters (``revproxy worker --channel FD``, fork + exec), not bare
forks of the master: an event loop cannot be carried across ``fork``. A worker that dies is
started again with a growing back-off, and the master logs how it died.

The limits' counters are one table for the instance (``policy/counters.py``): the master
creates a shared memory region once and passes it with every ``init`` (restarted workers
too), with the worker's slot and how many workers there are; a worker attaches it and writes
only its own slot's sub-table. The region has slots for at least 64 workers, so a reload that
changes their number only tells them the new number (``workers``); past the slots, a new,
larger region is sent to all (``counters``: the counts start again).

The channel carries one JSON object per line. Master → worker: ``init``, ``reload``,
``states``, ``members`` (a pool's run-time servers), ``stats``, ``tunnels`` (the agent
connections the worker holds: ``revproxy ctl show tunnels``), ``cache`` (``ctl show cache``,
``ctl cache purge``: each worker has its own), ``reload_certs``, ``workers``,
``counters``. Worker → master: ``ready``, ``passive``, ``check`` (a check of a tunnel server
through the worker's agent connections: ``health.CheckReport``), and replies carrying the
``id`` of the request they answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revproxy.config.model import Bind, Config
from revproxy.edge.generation import Generation, read_listener_certs
from revproxy.errors import ConfigError
from revproxy.policy.counters import MIN_SLOTS, SharedCounters, create_region, region_slots
from revproxy.runtime.cache_ctl import cache_op
from revproxy.runtime.channel import (
    Channel,
    Message,
    flatten,
    pack_config,
    unflatten,
    unpack_config,
)
from revproxy.runtime.early_signals import EARLY
from revproxy.runtime.frontend import Frontend
from revproxy.upstream.backend import BackendState
from revproxy.upstream.health import TICK, CheckReport, Key, slow_start_factor
from revproxy.upstream.pool import Address, Member, Pool

log = logging.getLogger("revproxy.workers")

# How long a new worker has to start and say it is ready.
READY_TIMEOUT = 30.0
# How long a worker has to answer a reload, and a question (stats for /metrics: a worker that
# is stuck must not hold the scrape for long).
REPLY_TIMEOUT = 30.0
QUESTION_TIMEOUT = 5.0
# Restart back-off: first wait, longest wait, and how long a worker must live to reset it.
RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 30.0
RESTART_STABLE_AFTER = 30.0
# Worker processes killed at stop when they have not exited this long after shutdown_timeout.
STOP_GRACE = 5.0


def worker_count(setting: int | str) -> int:
    """``workers``: a number, or "auto" = the CPUs this process may run on."""
    if setting == "auto":
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    return max(int(setting), 1)


# --- master side -------------------------------------------------------------------------------

StateRow = list[Any]  # [pool, host, port, state, up_since or None]


def pool_members(pool: Pool) -> Message:
    """A pool's run-time servers on the wire: the members each source found (DNS discovery,
    ``ctl add server``) and the configured servers taken out (``ctl del server``)."""
    return {
        "pool": pool.name,
        "found": {
            source: [[m.host, m.port, m.weight, m.backup, m.max_conns, m.hostname] for m in ms]
            for source, ms in pool.found.items()
        },
        "removed": [list(a) for a in sorted(pool.removed)],
    }


def members_from(msg: Message) -> tuple[dict[str, tuple[Member, ...]], frozenset[Address]]:
    found = {
        str(source): tuple(
            Member(str(h), int(p), int(w), bool(b), None if c is None else int(c), n)
            for h, p, w, b, c, n in rows
        )
        for source, rows in msg["found"].items()
    }
    return found, frozenset((str(h), int(p)) for h, p in msg["removed"])


# Starts of one worker in a row that a SIGHUP or SIGUSR1 may end before it catches them.
START_ATTEMPTS = 5


class _KilledAtStart(RuntimeError):
    """A worker ended by a reload's or reopen's signal before it could catch it."""


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    proc: asyncio.subprocess.Process
    channel: Channel
    number: int = 0  # generation it serves
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    failed: bool = False  # the channel closed before the worker said it was ready

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerPool:
    """The master's workers: spawn, feed, ask, restart, stop."""

    def __init__(
        self,
        *,
        default_pem: tuple[bytes, bytes],
        states: Callable[[], list[StateRow]],
        on_passive: Callable[[Key, bool], None],
        on_restart: Callable[[], None],
        members: Callable[[], dict[str, Message]] | None = None,
        on_check: Callable[[CheckReport], None] | None = None,
    ) -> None:
        self.default_pem = default_pem
        self.states = states
        # Every pool's run-time servers as the master has them (``pool_members``).
        self.members = members or dict
        self.on_passive = on_passive
        self.on_check = on_check
        self.on_restart = on_restart
        self.handles: dict[int, WorkerHandle] = {}
        self.count = 0
        self.config_blob = ""
        self.shutdown_timeout = 30.0
        self.number = 0
        self.listeners: dict[str, list[socket.socket]] = {}
        self.stopping = False
        self._lock = asyncio.Lock()
        self._supervisors: dict[int, asyncio.Task[None]] = {}
        self._ids = 0
        # The limits' counters shared by the workers: the region's memfd (policy/counters.py).
        self.counters_fd: int | None = None

    # --- starting

    async def start(
        self, count: int, config: Config, number: int, listeners: dict[str, list[socket.socket]]
    ) -> None:
        """Start ``count`` workers and wait until each accepts; raises RuntimeError if one
        cannot start."""
        self._set(config, number, listeners)
        self._new_counters(count)
        self.count = count  # what the workers are told they are
        async with self._lock:
            handles = await asyncio.gather(
                *(self._spawn(slot) for slot in range(count)), return_exceptions=True
            )
        failed = [h for h in handles if isinstance(h, BaseException)]
        if len(failed) == count:  # not one: something is wrong with every worker
            await self.stop(0.0)
            raise RuntimeError(f"no worker started: {failed[0]}")
        for exc in failed:
            log.error("%s; starting another shortly", exc)
        for slot in range(count):
            self._supervisors[slot] = asyncio.get_running_loop().create_task(self._supervise(slot))

    def _new_counters(self, count: int) -> None:
        """A region for the limits' counters, with slots for ``count`` workers at least."""
        fd = create_region(max(MIN_SLOTS, count))
        if self.counters_fd is not None:
            os.close(self.counters_fd)
        self.counters_fd = fd

    def _set(self, config: Config, number: int, listeners: dict[str, list[socket.socket]]) -> None:
        self.config_blob = pack_config(config)
        self.shutdown_timeout = config.global_.shutdown_timeout
        self.number = number
        self.listeners = dict(listeners)

    async def _spawn(self, slot: int) -> WorkerHandle:
        """One worker, initialised with the current config and sockets (hold the lock). A
        worker that a SIGHUP or SIGUSR1 ended before its first line could catch it (a reload
        or a log reopen sent to the whole process group while it started: the interpreter's
        own start is not covered, runtime/early_signals.py) is started again at once."""
        for _ in range(START_ATTEMPTS - 1):
            try:
                return await self._spawn_once(slot)
            except _KilledAtStart:
                continue
        return await self._spawn_once(slot)

    async def _spawn_once(self, slot: int) -> WorkerHandle:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env.pop("NOTIFY_SOCKET", None)  # only the master talks to systemd
        try:
            # -P: the working directory is not on the worker's path (a folder named revproxy
            # there would be imported instead of this package); the package root is first.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "revproxy",
                "worker",
                "--channel",
                str(theirs.fileno()),
                "--slot",
                str(slot),
                pass_fds=[theirs.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        handle = WorkerHandle(slot=slot, proc=proc, channel=Channel(ours), number=self.number)
        handle.reader = asyncio.get_running_loop().create_task(self._read(handle))
        # Known at once: broadcasts queue behind the init message, in order.
        self.handles[slot] = handle
        layout, fds = flatten(self.listeners)
        assert self.counters_fd is not None
        cert, key = self.default_pem
        handle.channel.post(
            {
                "op": "init",
                "slot": slot,
                "counters": self.count,  # the region's descriptor comes first
                "config": self.config_blob,
                "number": self.number,
                "default_pem": [base64.b64encode(cert).decode(), base64.b64encode(key).decode()],
                "listeners": layout,
                "states": self.states(),
                "members": self.members(),
            },
            [self.counters_fd, *fds],
        )
        why = ""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await handle.ready.wait()
        except TimeoutError:
            why = "did not become ready in time"
        if handle.failed or why:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            rc = await proc.wait()
            if self.handles.get(slot) is handle:
                del self.handles[slot]
            if handle.reader is not None:
                handle.reader.cancel()
            await handle.channel.close()
            message = f"worker {slot} {why or describe_exit(rc) + ' at start'}"
            if rc in (-signal.SIGHUP, -signal.SIGUSR1) and not why:
                log.info("%s: starting it again", message)
                raise _KilledAtStart(message)
            raise RuntimeError(message)
        log.info("worker %d (pid %d) ready", slot, proc.pid)
        return handle

    async def _read(self, handle: WorkerHandle) -> None:
        """Messages from one worker until it goes away."""
        while True:
            try:
                msg, fds = await handle.channel.recv()
            except (EOFError, ValueError):
                if not handle.ready.is_set():
                    handle.failed = True
                    handle.ready.set()  # wakes _spawn, which reports the failure
                break
            for fd in fds:
                os.close(fd)
            op = msg.get("op")
            if op == "ready":
                handle.ready.set()
            elif op == "passive":
                pool, host, port = msg["key"]
                self.on_passive((str(pool), str(host), int(port)), bool(msg["ok"]))
            elif op == "check":
                if self.on_check is not None:
                    try:
                        report = CheckReport.of(msg)
                    except (KeyError, TypeError, ValueError) as exc:
                        log.warning("worker %d: malformed check report: %r", handle.slot, exc)
                    else:
                        self.on_check(report)
            elif "id" in msg:
                fut = handle.pending.pop(int(msg["id"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        for fut in handle.pending.values():
            if not fut.done():
                fut.set_exception(EOFError(f"worker {handle.slot} went away"))
        handle.pending.clear()

    async def _supervise(self, slot: int) -> None:
        """Wait for the worker in ``slot`` to exit; start another, with a growing back-off."""
        backoff = RESTART_BACKOFF_MIN
        while True:
            handle = self.handles.get(slot)
            if handle is not None:
                rc = await handle.proc.wait()
                if handle.reader is not None:
                    with contextlib.suppress(BaseException):
                        async with asyncio.timeout(1.0):
                            await handle.reader
                await handle.channel.close()
                if self.handles.get(slot) is handle:
                    del self.handles[slot]
                if self.stopping or slot >= self.count:
                    return
                lived = time.monotonic() - handle.started
                if lived >= RESTART_STABLE_AFTER:
                    backoff = RESTART_BACKOFF_MIN
                log.error(
                    "worker %d (pid %d) %s after %.1fs; starting another in %.1fs",
                    slot,
                    handle.pid,
                    describe_exit(rc),
                    lived,
                    backoff,
                )
                self.on_restart()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            if self.stopping or slot >= self.count:
                return
            try:
                async with self._lock:
                    self.handles[slot] = await self._spawn(slot)
            except (RuntimeError, OSError) as exc:
                # An empty slot is less capacity, not a dead instance: keep trying.
                log.error("worker %d could not be started (%s); trying again", slot, exc)

    # --- talking to workers

    async def ask(
        self,
        handle: WorkerHandle,
        msg: Message,
        fds: Sequence[int] = (),
        timeout: float = REPLY_TIMEOUT,
    ) -> Message:
        self._ids += 1
        rid = self._ids
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        handle.pending[rid] = fut
        handle.channel.post({**msg, "id": rid}, fds)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            handle.pending.pop(rid, None)

    async def ask_all(self, msg: Message, timeout: float = QUESTION_TIMEOUT) -> list[Message]:
        """Ask every ready worker; the answers that came (a dying worker gives none)."""
        live = [h for h in self.handles.values() if h.ready.is_set() and h.proc.returncode is None]
        answers = await asyncio.gather(
            *(self.ask(h, msg, timeout=timeout) for h in live), return_exceptions=True
        )
        return [a for a in answers if isinstance(a, dict)]

    def broadcast(self, msg: Message) -> None:
        """To every worker, those still starting included (it follows their init)."""
        for h in self.handles.values():
            h.channel.post(msg)

    def broadcast_states(self, rows: list[StateRow]) -> None:
        self.broadcast({"op": "states", "states": rows})

    # --- reloading and resizing

    async def reload(
        self,
        config: Config,
        number: int,
        listeners: dict[str, list[socket.socket]],
        count: int,
        members: dict[str, Message] | None = None,
    ) -> list[str]:
        """Every worker swaps to ``config``; ``listeners`` is the full new set of sockets
        (workers get the descriptors of the new ones). Returns what went wrong."""
        async with self._lock:
            added = {a: s for a, s in listeners.items() if a not in self.listeners}
            self._set(config, number, listeners)
            layout, fds = flatten(added)
            msg = {
                "op": "reload",
                "config": self.config_blob,
                "number": number,
                "listeners": layout,
                "keep": sorted(listeners),
                "states": self.states(),
                "members": members if members is not None else self.members(),
            }
            live = [h for h in self.handles.values() if h.ready.is_set()]
            answers = await asyncio.gather(
                *(self.ask(h, msg, fds) for h in live), return_exceptions=True
            )
            problems: list[str] = []
            for h, answer in zip(live, answers, strict=True):
                if isinstance(answer, dict) and not answer.get("problems"):
                    h.number = number
                    continue
                why = answer.get("problems") if isinstance(answer, dict) else answer
                log.error(
                    "worker %d (pid %d) could not reload (%s); replacing it", h.slot, h.pid, why
                )
                problems.append(f"worker {h.slot}: {why}")
                with contextlib.suppress(ProcessLookupError):
                    h.proc.terminate()  # its supervisor starts a fresh one on the new config
        await self._resize(count)
        return problems

    async def _resize(self, count: int) -> None:
        if count == self.count:
            return
        old, self.count = self.count, count
        assert self.counters_fd is not None
        if count > region_slots(self.counters_fd):
            log.warning(
                "workers: %d, more than the limits' counters have room for: the counts start again",
                count,
            )
            self._new_counters(count)
            for live in self.handles.values():
                live.channel.post({"op": "counters", "count": count}, [self.counters_fd])
        if count < old:  # read no more of the slots whose workers are leaving
            self.broadcast({"op": "workers", "count": count})
        if count > old:
            for slot in range(old, count):
                try:
                    async with self._lock:
                        self.handles[slot] = await self._spawn(slot)
                except (RuntimeError, OSError) as exc:
                    log.error("worker %d could not be started: %s", slot, exc)
                    continue
                self._supervisors[slot] = asyncio.get_running_loop().create_task(
                    self._supervise(slot)
                )
            self.broadcast({"op": "workers", "count": count})  # the new ones have attached
        else:
            for slot in range(count, old):
                h = self.handles.get(slot)
                if h is not None:
                    with contextlib.suppress(ProcessLookupError):
                        h.proc.terminate()
        log.info("workers: %d (was %d)", count, old)

    # --- stopping

    def stop_accepting(self) -> None:
        self.stopping = True
        for h in self.handles.values():
            with contextlib.suppress(ProcessLookupError):
                h.proc.terminate()

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker (they finish what they serve), then wait; SIGKILL stragglers."""
        self.stop_accepting()
        procs = [h.proc for h in self.handles.values()]
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            _, pending = await asyncio.wait(waits, timeout=timeout + STOP_GRACE)
            for p in procs:
                if p.returncode is None:
                    log.error("worker pid %d did not stop in time; killing it", p.pid)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending, timeout=STOP_GRACE)
        for task in self._supervisors.values():
            task.cancel()
        for h in self.handles.values():
            if h.reader is not None:
                h.reader.cancel()
            await h.channel.close()
        self.handles.clear()
        if self.counters_fd is not None:
            os.close(self.counters_fd)
            self.counters_fd = None

    @property
    def pids(self) -> list[int]:
        """Workers that are up and accepting."""
        return [
            h.pid
            for h in self.handles.values()
            if h.ready.is_set() and not h.failed and h.proc.returncode is None
        ]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with status {returncode}"


# --- worker side -------------------------------------------------------------------------------


class Worker:
    """One worker process: serves connections on the sockets the master gave it."""

    def __init__(self, channel: Channel, slot: int) -> None:
        self.channel = channel
        self.slot = slot
        self.frontend: Frontend | None = None
        self._frontend_cls = Frontend
        self.states: dict[Key, tuple[BackendState, float | None]] = {}
        self.members: dict[str, Message] = {}  # pool → pool_members(), as last sent
        self._received: dict[str, list[socket.socket]] = {}
        self._stop = asyncio.Event()
        self.cert_watcher: Any = None
        # The instance's counters for the limits (the master's region, this worker's slot).
        self.counters: SharedCounters | None = None

    def _take(self, bind: Bind, addr: str) -> list[socket.socket]:
        socks = self._received.pop(addr, None)
        if socks is None:
            raise OSError(f"the master sent no socket for {addr}")
        return socks

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(READY_TIMEOUT):
            msg, fds = await self.channel.recv()
        if msg.get("op") != "init":
            raise RuntimeError(f"expected init from the master, got {msg.get('op')!r}")
        cert, key = (base64.b64decode(x) for x in msg["default_pem"])
        if "counters" in msg:
            region = fds.pop(0)
            try:
                self.counters = SharedCounters(region, self.slot, int(msg["counters"]))
            finally:
                os.close(region)
        self.frontend = self._frontend_cls((cert, key), accept=True, counters=self.counters)
        # Checks of tunnel servers through this worker's agent connections go to the master.
        self.frontend.hub.report = lambda report: self.channel.post(report.message())
        self._received = unflatten(msg["listeners"], fds)
        self._apply_states(msg["states"])
        self.members = msg.get("members") or {}
        config = unpack_config(msg["config"])
        # Agents learn from the hello which worker a connection reached (tunnel/hub.py).
        self.frontend.hub.worker = (
            self.slot,
            max(worker_count(config.global_.workers), self.slot + 1),
        )
        gen = self.frontend.build(config, number=int(msg["number"]))
        new = self.frontend.bind_new(gen, self._take)
        self._prepare(gen)
        await self.frontend.swap(gen, new)
        self.frontend.start_background()
        self._start_cert_watcher()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # reloads come from the master
        # The master passes on SIGUSR1 / ctl reopen-logs: each process has its own file.
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        early = EARLY.take()  # held since the worker's first line (early_signals.py)
        if early.stop:
            self._stop.set()
        elif early.reopen:
            self._reopen_logs()
        self.channel.post({"op": "ready", "pid": os.getpid()})
        log.debug("worker %d (pid %d) serving generation %d", self.slot, os.getpid(), gen.number)
        tasks = [
            loop.create_task(self._read_forever()),
            loop.create_task(self._ramp_forever()),
            loop.create_task(self._stop.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        timeout = gen.config.global_.shutdown_timeout
        if self.frontend.generation is not None:
            timeout = self.frontend.generation.config.global_.shutdown_timeout
        if self.cert_watcher is not None:
            with contextlib.suppress(Exception):
                await self.cert_watcher.stop()
        await self.frontend.shutdown(timeout)
        await self.channel.close()
        if self.counters is not None:
            self.counters.close()
        return 0

    def _start_cert_watcher(self) -> None:
        try:
            from revproxy.runtime.certwatch import CertWatcher
        except ImportError:
            return
        assert self.frontend is not None
        frontend = self.frontend
        self.cert_watcher = CertWatcher(lambda: frontend.generation)
        self.cert_watcher.start()

    def _prepare(self, gen: Generation) -> None:
        """Passive reports to the master, states as last broadcast."""
        channel = self.channel

        def observe(backend: Any, ok: bool) -> None:
            channel.post(
                {"op": "passive", "key": [backend.pool, backend.host, backend.port], "ok": ok}
            )

        for pr in gen.pools.values():
            if pr.config.passive is not None:
                pr.dialer.observer = observe
        self._apply_members(gen)
        self._write_states(gen)

    def _apply_members(self, gen: Generation) -> None:
        assert self.frontend is not None
        for name, msg in self.members.items():
            pr = gen.pools.get(name)
            if pr is not None:
                found, removed = members_from(msg)
                self.frontend.set_members(gen, pr, found, removed)

    def _apply_states(self, rows: list[StateRow]) -> None:
        for pool, host, port, state, up_since in rows:
            self.states[(str(pool), str(host), int(port))] = (BackendState(state), up_since)
        if self.frontend is not None and self.frontend.generation is not None:
            self._write_states(self.frontend.generation)

    def _write_states(self, gen: Generation) -> None:
        now = time.monotonic()
        for pr in gen.pools.values():
            for b in pr.pool.backends:
                known = self.states.get((b.pool, b.host, b.port))
                if known is not None:
                    b.state = known[0]
                    b.weight_factor = slow_start_factor(known[1], now, pr.config.slow_start)

    async def _ramp_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if self.frontend is not None and self.frontend.generation is not None:
                self._write_states(self.frontend.generation)

    def _reopen_logs(self) -> None:
        gen = self.frontend.generation if self.frontend is not None else None
        if gen is not None:
            gen.access_log.reopen()

    async def _read_forever(self) -> None:
        while True:
            try:
                msg, fds = await self.channel.recv()
            except EOFError:
                log.warning("worker %d: the master went away; stopping", self.slot)
                return
            try:
                await self._handle(msg, fds)
            except Exception:
                log.exception("worker %d: handling %s failed", self.slot, msg.get("op"))

    async def _handle(self, msg: Message, fds: list[int]) -> None:
        op = msg.get("op")
        assert self.frontend is not None
        reply: Message = {"op": op, "id": msg.get("id")}
        if op == "states":
            self._apply_states(msg["states"])
            return
        if op == "members":
            self.members[str(msg["pool"])] = msg
            if self.frontend.generation is not None:
                self._apply_members(self.frontend.generation)
                self._write_states(self.frontend.generation)
            return
        if op in ("workers", "counters"):
            self._follow_counters(msg, fds)
            return
        if op == "reload":
            self._received.update(unflatten(msg["listeners"], fds))
            reply["problems"] = await self._reload(msg)
        elif op == "stats":
            reply.update(self.stats())
        elif op == "tunnels":
            reply["tunnels"] = self.frontend.hub.describe()
        elif op == "cache":
            reply.update(cache_op(self.frontend.generation, msg))
        elif op == "reload_certs":
            reply["problems"] = self.cert_watcher.reload_now() if self.cert_watcher else []
        else:
            reply["problems"] = [f"unknown request {op!r}"]
        if msg.get("id") is not None:
            self.channel.post(reply)

    def _follow_counters(self, msg: Message, fds: list[int]) -> None:
        """``workers``: how many workers count now; ``counters``: a new region as well."""
        try:
            if self.counters is None:
                return
            if msg["op"] == "counters" and fds:
                self.counters.reattach(fds[0])
            self.counters.set_workers(int(msg["count"]))
        finally:
            for fd in fds:
                os.close(fd)

    async def _reload(self, msg: Message) -> list[str]:
        assert self.frontend is not None
        try:
            config = unpack_config(msg["config"])
            # Certificate files that changed are read by a child process (~0.1 s): in a
            # thread, so this worker's connections are not held up meanwhile.
            await asyncio.to_thread(read_listener_certs, config)
            gen = self.frontend.build(config, number=int(msg["number"]))
            await self.frontend.resolve(gen)
            new = self.frontend.bind_new(gen, self._take)
        except ConfigError as exc:
            return [str(p) for p in exc.problems]
        except OSError as os_error:
            return [str(os_error)]
        finally:
            for socks in self._received.values():
                for s in socks:
                    s.close()
            self._received.clear()
        self._apply_states(msg.get("states", []))
        self.members = msg.get("members") or {}
        self._prepare(gen)
        await self.frontend.swap(gen, new)
        return []

    def stats(self) -> Message:
        assert self.frontend is not None
        gen = self.frontend.generation
        backends = []
        if gen is not None:
            for pr in gen.pools.values():
                for b in pr.pool.backends:
                    backends.append([b.pool, b.host, b.port, b.active, b.total])
        return {
            "pid": os.getpid(),
            "generation": gen.number if gen else 0,
            "metrics": self.frontend.metrics.registry.snapshot(),
            "connections": dict(self.frontend.acceptor.active),
            "backends": backends,
            "counters": self.counters_info(),
        }

    def counters_info(self) -> Message:
        """Which counters this worker keeps limits in (the region, its slot, the workers it
        reads)."""
        c = self.counters
        if c is None:
            return {}
        return {"region": c.region, "slot": c.slot, "workers": c.workers, "slots": c.slots}


async def worker_main(fd: int, slot: int) -> int:
    channel = Channel(socket.socket(fileno=fd))
    return await Worker(channel, slot).run()
