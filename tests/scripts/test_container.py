"""The container image (Dockerfile, scripts/container-image) builds with podman from a base
made of Debian's packages, and — where the sandbox lets a container run — serves, answers its
HEALTHCHECK and drains on SIGTERM.

Opt-in: building takes minutes (debootstrap, then pip inside the build), so the test runs only
with ``REVPROXY_CONTAINER_TEST=1`` and podman and debootstrap installed; otherwise it skips and
says why. ``podman run`` may be refused by the machine (user namespaces, cgroups): then the
build is tested and the run is skipped with podman's own reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/revproxy-test:latest"


def _skip_reason() -> str:
    if os.environ.get("REVPROXY_CONTAINER_TEST") != "1":
        return "container image test is opt-in (minutes): set REVPROXY_CONTAINER_TEST=1"
    missing = [t for t in ("podman", "debootstrap") if not shutil.which(t, path=_path())]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install podman debootstrap)"
    return ""


def _path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


@pytest.fixture(scope="module")
def image() -> str:
    reason = _skip_reason()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    env = dict(os.environ, PATH=_path())
    res = subprocess.run(
        [str(REPO / "scripts" / "container-image"), IMAGE],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return IMAGE


@pytest.mark.timeout(1800)
def test_the_image_is_what_the_issue_asks(image: str) -> None:
    res = subprocess.run(
        ["podman", "image", "inspect", image, "--format",
         "{{.Config.User}}|{{json .Config.ExposedPorts}}|{{json .Config.Entrypoint}}|"
         "{{.Config.StopSignal}}|{{json .Config.Healthcheck}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    user, ports, entry, stop, health = res.stdout.strip().split("|")
    assert user == "revproxy"
    assert '"80/tcp"' in ports and '"443/tcp"' in ports
    assert entry == '["revproxy","run","-c","/etc/revproxy"]'
    assert stop == "SIGTERM"
    assert "ctl" in health and "/run/revproxy/admin.sock" in health


@pytest.mark.timeout(1800)
def test_the_container_serves_is_healthy_and_drains_on_sigterm(image: str) -> None:
    res = subprocess.run(
        ["podman", "run", "--rm", "--entrypoint", "revproxy", image,
         "check", "-c", "/etc/revproxy"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if res.returncode != 0 and "configuration OK" not in res.stdout:
        why = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"skipped the run: podman run was refused here: {why[0]}")
        pytest.skip(f"podman run refused by this machine: {why[0]}")
    assert "configuration OK" in res.stdout
    name = f"revproxy-test-{os.getpid()}"
    res = subprocess.run(
        ["podman", "run", "-d", "--name", name, "-p", "127.0.0.1::80",
         "--sysctl", "net.ipv4.ip_unprivileged_port_start=0", image],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"skipped the run: podman run was refused here: {why[0]}")
        pytest.skip(f"podman run refused by this machine: {why[0]}")
    try:
        port = (
            subprocess.run(
                ["podman", "port", name, "80"], capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .rsplit(":", 1)[1]
        )
        body = b""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.2)
        assert body.startswith(b"revproxy is running")
        health = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True)
        assert health.returncode == 0, health.stderr
        subprocess.run(["podman", "stop", "-t", "35", name], check=True, capture_output=True)
        state = subprocess.run(
            ["podman", "inspect", name, "--format", "{{.State.ExitCode}}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert state.stdout.strip() == "0"  # SIGTERM: drained and exited cleanly
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
        assert "stopped" in logs.stdout + logs.stderr
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
