"""RateLimitedLog: the first line at once, then at most one per interval with a count."""

from __future__ import annotations

import logging

import pytest

from revproxy.ops.log_limit import RateLimitedLog


def test_one_line_per_interval_with_what_was_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = RateLimitedLog(interval=10.0, clock=lambda: now[0])
    logger = logging.getLogger("revproxy.test")
    with caplog.at_level(logging.WARNING, logger="revproxy.test"):
        assert limited.warn(logger, "out of %s", "fds")
        for _ in range(5):
            now[0] += 1.0
            assert not limited.warn(logger, "out of %s", "fds")
        now[0] += 10.0
        assert limited.warn(logger, "out of %s", "fds")
    assert [r.getMessage() for r in caplog.records] == [
        "out of fds",
        "out of fds (5 more like it in the last 15 s)",
    ]
    assert limited.held == 0
