"""Signals that arrive while a process starts, before its event loop handles them.

Rule of this room: from the first line of ``revproxy run`` (and of a worker) on, SIGHUP,
SIGUSR1, SIGTERM and SIGINT are caught and counted, never left to their default action — which,
for SIGHUP and SIGUSR1, ends the process: ``systemctl reload`` or a log rotation that comes
while revproxy starts must not kill it. Once the process has its own handlers it takes what
was counted (``take``) and acts on it once: a stop stops, a reopen reopens the logs, and a
reload reloads — unless every SIGHUP came before the configuration was read
(``config_read``): what was read is then already the newest, and there is nothing to reload.

Only the time before the interpreter runs revproxy's first line is not covered (a few tens of
milliseconds after exec); ``revproxy reload --pid`` waits until the process catches SIGHUP
before it sends one (cli/main.py), and the master starts again a worker that a SIGHUP or
SIGUSR1 ended in that window (runtime/workers.py).

This module imports nothing of revproxy and only ``signal`` and ``typing`` of the standard
library, so that it can be armed before anything heavy is imported.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["EARLY", "HELD", "EarlySignals", "Pending"]

# The signals held while starting.
HELD = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class Pending(NamedTuple):
    """What came while starting and was not taken yet."""

    stop: bool = False  # SIGTERM or SIGINT
    reload: bool = False  # SIGHUP after the configuration was read
    covered: bool = False  # SIGHUP only before it was read: what was read is newer
    reopen: bool = False  # SIGUSR1


class EarlySignals:
    """The held signals of this process, counted from ``install`` on."""

    def __init__(self) -> None:
        self.installed = False
        self._counts = dict.fromkeys(HELD, 0)
        self._taken = dict.fromkeys(HELD, 0)
        self._hups_at_read = 0  # SIGHUPs counted when the configuration began to be read

    def install(self) -> None:
        """Catch the held signals from now on (the main thread, before anything else)."""
        for sig in HELD:
            signal.signal(sig, self._caught)
        self.installed = True

    def _caught(self, signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: counting is all it does.
        self._counts[signal.Signals(signum)] += 1

    @property
    def stopping(self) -> bool:
        """A SIGTERM or SIGINT came (taken or not)."""
        return self._counts[signal.SIGTERM] + self._counts[signal.SIGINT] > 0

    def config_read(self) -> None:
        """The configuration is about to be read: a SIGHUP counted so far asked for what this
        read will see."""
        self._hups_at_read = self._counts[signal.SIGHUP]

    def take(self) -> Pending:
        """What came since the last ``take`` (the process's own handlers are in: nothing
        more will be counted here)."""
        counts = dict(self._counts)
        taken = self._taken
        self._taken = counts

        def new(*sigs: signal.Signals) -> bool:
            return any(counts[s] > taken[s] for s in sigs)

        hups = counts[signal.SIGHUP]
        reload = hups > max(self._hups_at_read, taken[signal.SIGHUP])
        return Pending(
            stop=new(signal.SIGTERM, signal.SIGINT),
            reload=reload,
            covered=new(signal.SIGHUP) and not reload,
            reopen=new(signal.SIGUSR1),
        )


# The process's one instance: armed by cli/main.py, taken by the master (supervisor.py) and
# each worker (workers.py) once their handlers are in.
EARLY = EarlySignals()
