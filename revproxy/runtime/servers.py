"""Runtime servers: ``revproxy ctl add server POOL ADDRESS [weight=N] [--persist]`` and
``ctl del server POOL SERVER [--persist]``.

Rule of this room: a server added or removed here is kept until the next reload, which builds
pools from the files again; ``--persist`` instead writes the change to a file of its own,
``ctl-servers.toml`` in the configuration directory (``[[server]]`` tables: ``pool`` plus a
server's keys, config/pool.py ``add_servers``), and reloads: the change is then validated like
any configuration, and a rejected one puts the file back as it was. Without ``--persist``
the change goes through the pool's run-time part (``Pool.set_found``, source ``"ctl"``, and
``Pool.removed``), which the master's health checks follow and its workers are sent.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from revproxy.config.values import parse_server
from revproxy.edge.generation import Generation, PoolRuntime
from revproxy.upstream.backend import Backend
from revproxy.upstream.pool import Address, Member

PERSIST_FILE = "ctl-servers.toml"
MAX_WEIGHT = 256  # as config/pool.py
SOURCE = "ctl"  # Backend.found_by of the servers added here

USAGE = "usage: add server POOL ADDRESS [weight=N] [--persist] | del server POOL SERVER [--persist]"

Entry = dict[str, Any]
SetMembers = Callable[[Generation, PoolRuntime, dict[str, tuple[Member, ...]], Any], bool]
Reload = Callable[[], Awaitable[list[str]]]


class RuntimeServers:
    """What ``ctl add/del server`` does to the running instance."""

    def __init__(
        self,
        current: Callable[[], Generation | None],
        set_members: SetMembers,
        reload: Reload,
        conf_dir: Path | None,
    ) -> None:
        self.current = current
        self.set_members = set_members
        self.reload = reload
        self.conf_dir = conf_dir

    async def execute(self, verb: str, args: list[str]) -> tuple[bool, str]:
        """``add server …`` or ``del server …`` (``args`` after the verb)."""
        persist = "--persist" in args
        words = [a for a in args if a != "--persist"]
        if not words or words[0] != "server" or len(words) < 3:
            return False, USAGE
        pool, address, options = words[1], words[2], words[3:]
        weight = 1
        for option in options:
            key, _, value = option.partition("=")
            if verb != "add" or key != "weight" or not value.isdigit():
                return False, f"unknown option {option!r}\n{USAGE}"
            weight = int(value)
            if not 1 <= weight <= MAX_WEIGHT:
                return False, f"weight must be 1 to {MAX_WEIGHT}, got {weight}"
        gen = self.current()
        pr = gen.pools.get(pool) if gen is not None else None
        if gen is None or pr is None:
            names = ", ".join(sorted(gen.pools)) if gen is not None else ""
            return False, f'no pool named "{pool}" (pools: {names or "none"})'
        if verb == "add":
            return await self._add(gen, pr, address, weight, persist)
        return await self._del(gen, pr, address, persist)

    async def _add(
        self, gen: Generation, pr: PoolRuntime, address: str, weight: int, persist: bool
    ) -> tuple[bool, str]:
        try:
            host, port = parse_server(address)
        except ValueError as exc:
            return False, str(exc)
        same = _find(pr, f"{_shown(host)}:{port}")
        if same is not None:
            return False, f'{same.label} is already a server of pool "{pr.config.name}"'
        shown = f"{pr.config.name}/{_shown(host)}:{port}"
        if persist:
            entry: Entry = {"pool": pr.config.name, "address": f"{_shown(host)}:{port}"}
            if weight != 1:
                entry["weight"] = weight
            return await self._persist(lambda entries: [*entries, entry], f"{shown} added")
        members = (*pr.pool.found.get(SOURCE, ()), Member(host, port, weight))
        self.set_members(gen, pr, {**pr.pool.found, SOURCE: members}, None)
        return True, f"{shown} added (until the next reload; --persist keeps it)"

    async def _del(
        self, gen: Generation, pr: PoolRuntime, spec: str, persist: bool
    ) -> tuple[bool, str]:
        b = _find(pr, spec)
        if b is None:
            names = ", ".join(x.label for x in pr.pool.backends) or "none"
            return False, f'no server {spec!r} in pool "{pr.config.name}" (servers: {names})'
        rest = f"; {b.active} request(s) in flight finish" if b.active else ""
        if b.found_by is not None and b.found_by != SOURCE:
            return False, (
                f"{b.label} is an address of {b.found_by}: it leaves the pool when the record "
                "does (ctl drain takes it out meanwhile)"
            )
        if b.found_by == SOURCE:
            kept = tuple(m for m in pr.pool.found.get(SOURCE, ()) if (m.host, m.port) != _key(b))
            self.set_members(gen, pr, {**pr.pool.found, SOURCE: kept}, None)
            return True, f"{b.label} removed{rest}"
        written = [e for e in self._entries() if _entry_key(e) == (pr.config.name, *_key(b))]
        if persist:
            if not written:
                return False, (
                    f"{b.label} is in the configuration ({pr.config.source}): remove it there "
                    f"(--persist removes what ctl add server --persist wrote to {PERSIST_FILE})"
                )
            return await self._persist(
                lambda entries: [e for e in entries if e not in written], f"{b.label} removed"
            )
        removed = pr.pool.removed | {_key(b)}
        self.set_members(gen, pr, dict(pr.pool.found), removed)
        return True, f"{b.label} removed until the next reload{rest}"

    # --- the file --persist writes

    def _path(self) -> Path | None:
        return self.conf_dir / PERSIST_FILE if self.conf_dir is not None else None

    def _entries(self) -> list[Entry]:
        path = self._path()
        if path is None or not path.exists():
            return []
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return []
        servers = data.get("server")
        return [e for e in servers if isinstance(e, dict)] if isinstance(servers, list) else []

    async def _persist(
        self, edit: Callable[[list[Entry]], list[Entry]], done: str
    ) -> tuple[bool, str]:
        path = self._path()
        if path is None:
            return False, "--persist needs the instance's configuration directory (run -c DIR)"
        before = path.read_bytes() if path.exists() else None
        try:
            _write(path, edit(self._entries()))
        except OSError as exc:
            return False, f"cannot write {path}: {exc.strerror or exc}"
        problems = await self.reload()
        if not problems:
            return True, f"{done}; written to {path}"
        try:
            if before is None:
                path.unlink()
            else:
                _write_bytes(path, before)
        except OSError as exc:
            problems.append(f"and {path} could not be put back: {exc.strerror or exc}")
        return False, "rejected; nothing changed:\n" + "\n".join(problems)


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _key(b: Backend) -> Address:
    return (b.host, b.port)


def _find(pr: PoolRuntime, spec: str) -> Backend | None:
    """The server of ``pr`` an operator names: ``host:port``, ``POOL/host:port``, its name."""
    name = pr.config.name
    spec = spec.removeprefix(f"{name}/")
    try:
        host, port = parse_server(spec)
    except ValueError:
        host, port = "", 0
    for b in pr.pool.backends:
        if (b.host, b.port) == (host, port) or spec in (b.name, b.label):
            return b
    return None


def _entry_key(entry: Entry) -> tuple[str, str, int] | None:
    try:
        host, port = parse_server(str(entry.get("address", "")))
    except ValueError:
        return None
    return (str(entry.get("pool", "")), host, port)


def _write(path: Path, entries: list[Entry]) -> None:
    lines = [
        "# Written by `revproxy ctl add server --persist` (and `ctl del server --persist`).",
        "# Each [[server]] adds one server to a pool defined in another file.",
    ]
    for e in entries:
        lines.append("")
        lines.append("[[server]]")
        for key, value in e.items():
            lines.append(f"{key} = {json.dumps(value)}")  # a TOML string, integer or boolean
    _write_bytes(path, ("\n".join(lines) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    tmp.replace(path)
