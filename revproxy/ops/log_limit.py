"""Log lines that could come thousands of times a second (out of descriptors while accepting,
every check skipped for want of them) are written at most once per interval.

Rule of this room: the first occurrence is logged at once; those that follow within the
interval are counted, and the next line written says how many were held back. Time is read
from the clock passed in (``time.monotonic`` by default), so tests need no sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# One line per this many seconds at most, for each RateLimitedLog.
DEFAULT_INTERVAL = 10.0


class RateLimitedLog:
    """One kind of repeated warning, written at most once per ``interval`` seconds."""

    __slots__ = ("_clock", "_last", "held", "interval")

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.held = 0  # occurrences not logged since the last line

    def warn(self, logger: logging.Logger, message: str, *args: object) -> bool:
        """Log ``message % args`` as a warning unless one was logged within the interval;
        True when it was written."""
        now = self._clock()
        last = self._last
        if last is not None and now - last < self.interval:
            self.held += 1
            return False
        if self.held and last is not None:
            message += f" ({self.held} more like it in the last {now - last:.0f} s)"
        self._last = now
        self.held = 0
        logger.warning(message, *args)
        return True
