"""The allocator tuning: applied on glibc, skipped when the operator set their own."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from revproxy.runtime import allocator as allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_thresholds_are_applied_on_glibc() -> None:
    # In a fresh interpreter: the settings last for the life of the process.
    code = "from revproxy.runtime.allocator import tune_allocator; print(tune_allocator())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    assert out.stdout.strip() == "True"


def test_an_operators_own_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert allocator.tune_allocator() is False


def test_nothing_is_done_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.tune_allocator() is False


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(_repo()), env.get("PYTHONPATH", "")])
    return env


def _repo() -> object:
    from pathlib import Path

    return Path(__file__).resolve().parent.parent.parent
