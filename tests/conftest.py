"""Shared test setup: the ``e2e`` marker, and the real peers the end-to-end tests need.

A missing peer (curl, openssl) fails loudly rather than skipping: CI installs them, and a
green run that skipped the end-to-end tests would hide a missing install step.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, settings

# Property tests run beside real peers on a two-core machine: a draw or an example that meets a
# collection pause or a busy neighbour is not a slow strategy or a slow function. Examples are
# bounded by max_examples, the whole run by pytest-timeout.
settings.register_profile("revproxy", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("revproxy")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end to end with real peers (revproxy run, curl, openssl) on loopback"
    )


@pytest.fixture(scope="session")
def real_peers() -> None:
    """curl and openssl must be installed for the end-to-end tests."""
    missing = [tool for tool in ("curl", "openssl") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"end-to-end tests need {', '.join(missing)} on PATH (apt-get install them)")
