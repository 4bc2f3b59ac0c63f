"""Hot certificate swap: watch the files each TLS listener serves, load new pairs, swap stores.

Rule of this room: a new certificate reaches new handshakes without a restart and without
touching connections in flight (`ServerTLS.replace_store` swaps one reference), and a broken
or mismatched pair never replaces a working one: the old certificate stays and an error is
logged. Nothing here changes the configuration; a config reload builds a new generation and
the watcher simply follows it.

certbot's layout is ``live/<name>/fullchain.pem`` → ``../../archive/<name>/fullchainN.pem``;
a renewal writes new files in ``archive/`` and then replaces the symlinks in ``live/``. So the
watcher watches the folders (a watch on a file is lost when the file is replaced), both as
configured and with symlinks resolved, and reloads after a burst of changes settles.

Once a day (and at start) certificates expiring within `EXPIRY_WARN_DAYS` are logged; the
same facts are exported as ``revproxy_certificate_not_after_seconds{listener,name}``
(`certificate_samples`, read by the metrics room).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from revproxy.certs.files import CERTBOT_CHAIN, CERTBOT_KEY, LoadedCert
from revproxy.certs.store import CertStore
from revproxy.edge.generation import Generation, ListenerRuntime, listener_certs
from revproxy.errors import CertificateError

log = logging.getLogger("revproxy.certwatch")

# A burst of changes (certbot replaces four symlinks) is handled once, this long after the
# last change (ms), and at most this long after the first one.
SETTLE_MS = 300
DEBOUNCE_MS = 2000
# How often the watched folders are recomputed (a cert_dir that appeared, a new lineage, a
# new generation after a config reload), in ms.
RECHECK_MS = 2000
# A reload that found a broken pair is tried again once after this long (s): certbot may have
# been half-way through replacing the symlinks.
RETRY_DELAY = 2.0
# Certificates that expire within this many days are logged (daily) as warnings.
EXPIRY_WARN_DAYS = 14
EXPIRY_CHECK_INTERVAL = 24 * 3600.0

METRIC_NOT_AFTER = "revproxy_certificate_not_after_seconds"


# --- what to watch ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSet:
    """Folders to watch and which paths in them matter."""

    folders: frozenset[Path]  # existing folders, watched recursively
    files: frozenset[Path]  # individual files that matter (as configured and resolved)
    trees: frozenset[Path]  # folders whose whole content matters (cert_dir, archive/<name>)
    missing: frozenset[Path]  # configured folders that do not exist yet

    def relevant(self, path: str) -> bool:
        p = Path(path)
        if p in self.files:
            return True
        return any(p == t or t in p.parents for t in self.trees)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def watch_set(gen: Generation) -> WatchSet:
    """The folders and files behind every certificate of `gen`'s TLS listeners."""
    folders: set[Path] = set()
    files: set[Path] = set()
    trees: set[Path] = set()
    missing: set[Path] = set()

    def add_file(path: Path) -> None:
        for p in {path.absolute(), _resolved(path)}:
            files.add(p)
            if p.parent.is_dir():
                folders.add(p.parent)

    for lrt in gen.listeners.values():
        tls = lrt.config.tls
        if lrt.tls is None or tls is None:
            continue
        for pair in tls.certs:
            add_file(pair.cert)
            add_file(pair.key)
        if tls.cert_dir is None:
            continue
        cert_dir = Path(tls.cert_dir)
        if not cert_dir.is_dir():
            missing.add(cert_dir.absolute())
            continue
        for d in {cert_dir.absolute(), _resolved(cert_dir)}:
            folders.add(d)
            trees.add(d)
        with contextlib.suppress(OSError):
            for folder in cert_dir.iterdir():
                for name in (CERTBOT_CHAIN, CERTBOT_KEY):
                    target = _resolved(folder / name)
                    if target.parent.is_dir():  # archive/<name>: where renewals write
                        folders.add(target.parent)
                        trees.add(target.parent)
    return WatchSet(
        folders=frozenset(folders),
        files=frozenset(files),
        trees=frozenset(trees),
        missing=frozenset(missing),
    )


# --- expiry -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CertExpiry:
    listener: str
    name: str  # one name the certificate is served for
    not_after: datetime
    cert_path: Path


def served(store: CertStore) -> list[LoadedCert]:
    """Certificates of `store` that some handshake can get (not superseded by a newer one)."""
    return [c for c in store.certs if any(store.lookup(n) is c for n in c.names)]


def certificate_expiry(gen: Generation) -> list[CertExpiry]:
    """(listener, name) → not-after of the certificate served for that name."""
    out: list[CertExpiry] = []
    for name, lrt in gen.listeners.items():
        if lrt.tls is None:
            continue
        for cert in served(lrt.tls.store):
            for host in cert.names:
                if lrt.tls.store.lookup(host) is cert:
                    out.append(
                        CertExpiry(
                            listener=name,
                            name=host,
                            not_after=cert.not_after,
                            cert_path=cert.cert_path,
                        )
                    )
    return out


def certificate_samples(gen: Generation) -> list[tuple[tuple[str, str], float]]:
    """Samples of ``revproxy_certificate_not_after_seconds``: ((listener, name), unix time)."""
    return [((e.listener, e.name), e.not_after.timestamp()) for e in certificate_expiry(gen)]


def expiring(
    entries: Iterable[CertExpiry], now: datetime, within_days: int = EXPIRY_WARN_DAYS
) -> list[CertExpiry]:
    """The entries whose certificate ends within `within_days` of `now` (or has ended)."""
    limit = now + timedelta(days=within_days)
    return sorted((e for e in entries if e.not_after <= limit), key=lambda e: e.not_after)


def log_expiring(gen: Generation, now: datetime) -> list[CertExpiry]:
    """Log every certificate expiring soon, once per certificate file; returns them all."""
    soon = expiring(certificate_expiry(gen), now)
    by_file: dict[tuple[str, Path], list[CertExpiry]] = {}
    for e in soon:
        by_file.setdefault((e.listener, e.cert_path), []).append(e)
    for (listener, path), entries in by_file.items():
        names = ",".join(e.name for e in entries)
        not_after = entries[0].not_after
        days = (not_after - now).total_seconds() / 86400
        if days < 0:
            log.error(
                "listener=%s certificate for %s EXPIRED on %s (%s); renew it: revproxy cert renew",
                listener,
                names,
                not_after.strftime("%Y-%m-%d %H:%M UTC"),
                path,
            )
        else:
            log.warning(
                "listener=%s certificate for %s expires in %.0f days (%s, %s);"
                " is renewal running? (revproxy cert renew)",
                listener,
                names,
                days,
                not_after.strftime("%Y-%m-%d %H:%M UTC"),
                path,
            )
    return soon


# --- the watcher --------------------------------------------------------------------------


class CertWatcher:
    """Keeps every TLS listener of the current generation serving what is on disk."""

    def __init__(self, current: Callable[[], Generation | None]) -> None:
        self._current = current
        self._lock = threading.Lock()  # reload_now runs from the loop and from a thread
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0  # reloads that swapped at least one store

    # --- reloading ----------------------------------------------------------------------

    def reload_now(self) -> list[str]:
        """Load every TLS listener's certificates from disk and swap in what changed.

        Returns the problems (empty when every certificate on disk loaded). A pair that is
        on disk but does not load keeps its old certificate.
        """
        with self._lock:
            gen = self._current()
            if gen is None:
                return []
            problems: list[str] = []
            swapped = False
            for lrt in gen.listeners.values():
                if lrt.tls is not None:
                    changed, found = self._reload_listener(lrt)
                    swapped = swapped or changed
                    problems.extend(found)
            if swapped:
                self.reloads += 1
            return problems

    def _reload_listener(self, lrt: ListenerRuntime) -> tuple[bool, list[str]]:
        assert lrt.tls is not None and lrt.config.tls is not None
        name = lrt.config.name
        old = lrt.tls.store
        certs, cert_problems = listener_certs(lrt.config)
        problems = [f"listener={name} {p.key}: {p.reason}" for p in cert_problems]
        for p in problems:
            log.error("%s", p)
        loaded = {c.cert_path for c in certs}
        cert_dir = lrt.config.tls.cert_dir
        if cert_dir is not None:
            with contextlib.suppress(OSError):
                for folder in sorted(Path(cert_dir).iterdir()):
                    chain = folder / CERTBOT_CHAIN
                    if os.path.lexists(chain) and chain not in loaded:
                        problems.append(f"listener={name} {folder}: does not load (see log)")
        kept: list[LoadedCert] = []
        for c in old.certs:
            if c.cert_path in loaded:
                continue
            if os.path.lexists(c.cert_path) or os.path.lexists(c.key_path):
                # Still on disk but broken or mismatched now: keep serving the old one.
                kept.append(c)
                message = (
                    f"listener={name} {c.cert_path}: new pair does not load; still serving"
                    f" the previous certificate (serial {c.serial:x}, not after"
                    f" {c.not_after:%Y-%m-%d})"
                )
                log.error("%s", message)
                problems.append(message)
        new = [*certs, *kept]
        if set(new) == set(old.certs):
            return False, problems
        try:
            store = CertStore(new, alpn=lrt.config.tls.alpn, client_auth=old.client_auth)
        except CertificateError as exc:
            message = f"listener={name}: {exc}; still serving the previous certificates"
            log.error("%s", message)
            return False, [*problems, message]
        lrt.tls.replace_store(store)
        before = {c.cert_path: c for c in old.certs}
        for c in store.certs:
            prev = before.get(c.cert_path)
            if prev is None:
                log.info(
                    "listener=%s certificate added: %s serial %x (%s)",
                    name,
                    ",".join(c.names),
                    c.serial,
                    c.cert_path,
                )
            elif prev != c:
                log.info(
                    "listener=%s certificate replaced: %s serial %x -> %x, not after %s (%s)",
                    name,
                    ",".join(c.names),
                    prev.serial,
                    c.serial,
                    c.not_after.strftime("%Y-%m-%d"),
                    c.cert_path,
                )
        for path in before.keys() - {c.cert_path for c in store.certs}:
            log.info("listener=%s certificate removed: %s", name, path)
        return True, problems

    # --- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Watch in the background (on the running loop) until `stop`."""
        # watchfiles logs every batch of changes at INFO; ours says what they meant.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_forever())
            tg.create_task(self._expiry_forever())

    async def _expiry_forever(self) -> None:
        while True:
            gen = self._current()
            if gen is not None:
                try:
                    log_expiring(gen, datetime.now(UTC))
                except Exception:
                    log.exception("certificate expiry check failed")
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)

    async def _reload_in_thread(self) -> list[str]:
        try:
            return await asyncio.to_thread(self.reload_now)
        except Exception as exc:  # never let the watcher die of one bad reload
            log.exception("certificate reload failed")
            return [str(exc)]

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self._watch_once()
            except Exception:  # a watcher that died would leave renewals unnoticed
                log.exception("certificate watcher failed; starting again")
                await asyncio.sleep(RECHECK_MS / 1000)

    async def _watch_once(self) -> None:
        """Watch the current generation's files until they or the generation change."""
        from watchfiles import awatch  # imported late: it starts a Rust extension

        gen = self._current()
        if gen is None:
            await asyncio.sleep(RECHECK_MS / 1000)
            return
        ws = await asyncio.to_thread(watch_set, gen)
        if not ws.folders:
            await asyncio.sleep(RECHECK_MS / 1000)
            if self._current() is gen and await asyncio.to_thread(watch_set, gen) != ws:
                await self._reload_in_thread()  # a cert_dir appeared
            return
        log.debug("watching %s", ", ".join(sorted(map(str, ws.folders))))
        try:
            async for changes in awatch(
                *sorted(ws.folders),
                watch_filter=lambda _change, path: ws.relevant(path),
                debounce=DEBOUNCE_MS,
                step=SETTLE_MS,
                rust_timeout=RECHECK_MS,
                yield_on_timeout=True,
                recursive=True,
                ignore_permission_denied=True,
            ):
                if changes:
                    where = sorted({str(Path(path).parent) for _, path in changes})
                    log.info("certificate files changed in %s", ", ".join(where))
                    if await self._reload_in_thread():
                        await asyncio.sleep(RETRY_DELAY)
                        await self._reload_in_thread()
                if self._current() is not gen:
                    return  # a config reload: watch the new generation's files
                if await asyncio.to_thread(watch_set, gen) != ws:
                    break  # new folders (first issuance, a new lineage)
        except OSError as exc:
            # A folder vanished between listing and watching: look again shortly.
            log.debug("certificate watch restarts: %s", exc)
            await asyncio.sleep(RECHECK_MS / 1000)
        await self._reload_in_thread()
