"""Real peers for the reverse-tunnel tests: the proxy with a tunnel listener, ``revproxy agent``
processes, a throwaway ``sshd`` on loopback.

Rule of this room: as in harness.py — real processes, bounded waits, everything stopped on
exit. Enrolment goes through the real commands (``revproxy tunnel enroll`` prints the token on
stdout, ``revproxy agent enroll`` uses it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import LOOPBACK, REPO, Proxy, free_port, run_cli, toml_path, wait_until

AGENT_READY_TIMEOUT = 20.0


def proxy_config(
    state: Path,
    http_port: int,
    tunnel_port: int,
    *,
    pools: str = "",
    extra: str = "",
    workers: int = 1,
) -> str:
    return f"""
[global]
state_dir = {toml_path(state)}
workers = {workers}
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{http_port}"]
[[listener]]
name = "tunnel"
bind = ["{LOOPBACK}:{tunnel_port}"]
mode = "tunnel"
[[route]]
pool = "web"
[pool.web]
servers = [{{ tunnel = "home/web" }}]
timeouts = {{ connect = "2s" }}
[tunnel.home]
{pools}
{extra}
"""


def enroll_token(conf: Path, name: str = "home") -> str:
    res = run_cli("tunnel", "enroll", name, "-c", str(conf))
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    assert token.startswith("rpt1.") and "\n" not in token, res.stdout
    return token


class Agent:
    """``revproxy agent -c agent.toml`` in a subprocess (optionally inside a namespace)."""

    def __init__(
        self,
        directory: Path,
        tunnel_port: int,
        exposes: dict[str, tuple[int, str]],
        *,
        name: str = "home",
        connections: int = 2,
        spare: int = 2,
        wrapper: tuple[str, ...] = (),
        server_host: str = LOOPBACK,
    ) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "agent.toml"
        lines = [
            f'server = "{server_host}:{tunnel_port}"',
            f'name = "{name}"',
            f"credentials = {toml_path(directory / 'creds')}",
            f"connections = {connections}",
            f"spare = {spare}",
        ]
        for expose, (port, mode) in exposes.items():
            lines += [
                "[[expose]]",
                f'name = "{expose}"',
                f'target = "{LOOPBACK}:{port}"',
                f'mode = "{mode}"',
            ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.wrapper = wrapper
        self.log = directory / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def enroll(self, token: str) -> subprocess.CompletedProcess[str]:
        if self.wrapper:
            return subprocess.run(
                [*self.wrapper, sys.executable, "-m", "revproxy", "agent", "enroll",
                 "--token", token, "-c", str(self.conf)],
                capture_output=True, text=True, timeout=60, env=_env(),
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return run_cli("agent", "enroll", "--token", token, "-c", str(self.conf))

    def start(self, wait_connections: int = 1) -> Agent:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "revproxy", "agent", "-c", str(self.conf)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=_env(),
            )  # fmt: skip
        if wait_connections:
            ok = wait_until(lambda: self.connected() >= wait_connections, AGENT_READY_TIMEOUT)
            assert ok, "agent did not connect:\n" + self.text()
        return self

    def connected(self) -> int:
        return self.text().count(" connected (")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_proxy(directory: Path, config: str, *ports: int) -> Proxy:
    return Proxy(directory, config, ports=ports).start()


class Sshd:
    """OpenSSH's sshd on a loopback port: a throwaway host key and config, key login for root."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.client_key = directory / "id_ed25519"

    def start(self) -> Sshd:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        host_key = self.dir / "host_ed25519"
        for key in (host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True, timeout=30)  # fmt: skip
        auth = self.dir / "authorized_keys"
        auth.write_text(Path(f"{self.client_key}.pub").read_text())
        auth.chmod(0o600)
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {LOOPBACK}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\nUsePAM no\n"
            f"PidFile {self.dir / 'sshd.pid'}\nStrictModes no\nPermitRootLogin yes\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        with open(self.dir / "sshd.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log
            )
        assert wait_until(lambda: _listening(self.port), 10), (self.dir / "sshd.log").read_text()
        return self

    def ssh(self, port: int, command: str, *, stdin: bytes | None = None) -> bytes:
        """``ssh`` to ``port`` (the proxy's tcp listener), running ``command``."""
        res = subprocess.run(
            ["ssh", "-i", str(self.client_key), "-p", str(port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", f"root@{LOOPBACK}", command],
            input=stdin, capture_output=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        return res.stdout

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def poll_statuses(url: str, duration: float, interval: float = 0.02) -> list[int]:
    """GET ``url`` one after the other for ``duration`` seconds: every status (0: failed)."""
    import urllib.error
    import urllib.request

    out: list[int] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
                out.append(resp.status)
        except urllib.error.HTTPError as exc:
            out.append(exc.code)
        except OSError:
            out.append(0)
        time.sleep(interval)
    return out
