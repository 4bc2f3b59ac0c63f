"""Shared test setup: the ``e2e`` marker, and the real peers the end-to-end tests need.

A missing peer (curl, openssl) fails loudly rather than skipping: CI installs them, and a
green run that skipped the end-to-end tests would hide a missing install step.
"""

from __future__ import annotations

import shutil

import pytest


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
