"""What the admin endpoint and the stats page read of the running instance.

Rule of this room: the control plane (``admin.py``, ``stats.py``) sees the master only through
``InstanceView``, which ``supervisor.Instance`` implements; the master imports the admin server,
never the reverse, so there is no import cycle and the pages can be tested on a stand-in.
"""

from __future__ import annotations

from typing import Any, Protocol

from revproxy.edge.generation import Generation
from revproxy.runtime.workers import WorkerPool
from revproxy.upstream.backend import BackendState
from revproxy.upstream.health import HealthMonitor, Key


class Collected:
    """What the admin endpoints show that lives in the serving processes."""

    def __init__(
        self, *, registry: Any, live: dict[Key, list[int]], connections: dict[str, int]
    ) -> None:
        self.registry = registry  # metrics.Registry: request metrics + instance metrics
        self.live = live  # backend key → [active, total]
        self.connections = connections  # listener name → client connections open


class InstanceView(Protocol):
    """The running instance as the admin endpoint and the stats page use it."""

    reloads: int
    started_at: float
    last_reload: tuple[float, list[str]] | None  # (unix time, problems)
    monitor: HealthMonitor
    workers: WorkerPool | None

    @property
    def generation(self) -> Generation | None: ...

    async def reload(self) -> list[str]: ...

    async def reload_certs(self) -> list[str]: ...

    def reopen_logs(self) -> list[str]: ...

    def set_admin_state(self, spec: str, state: BackendState | None) -> tuple[bool, str]: ...

    async def edit_servers(self, verb: str, args: list[str]) -> tuple[bool, str]: ...

    async def collect(self) -> Collected: ...
