"""Shared pieces of the egress end-to-end tests: users files, the config, access-log fields.

Rule of this room: nothing here is a mock; destinations are harness origins on 127.0.0.x,
allowed explicitly (the default deny refuses loopback), and no test sends a byte off loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
from harness import LOOPBACK, free_port, toml_path, wait_until

USER, PASSWORD = "app", "s3cret"
REALM = "egress"


def users_files(directory: Path) -> tuple[Path, Path]:
    """(htpasswd with app:s3cret, htdigest with app:egress:s3cret)."""
    basic = directory / "apps.htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()
    basic.write_text(f"{USER}:{hashed}\n")
    digest = directory / "apps.htdigest"
    ha1 = hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).hexdigest()
    digest.write_text(f"{USER}:{REALM}:{ha1}\n")
    return basic, digest


def users_tables(basic: Path, digest: Path) -> str:
    return f"""
[users.apps]
file = {toml_path(basic)}

[users.digestapps]
file = {toml_path(digest)}
"""


def access_json(line: str) -> dict[str, object]:
    data = json.loads(line)
    assert isinstance(data, dict)
    return data


def json_lines(stdout: str) -> list[dict[str, object]]:
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(access_json(line))
    return out


# --- Squid, the reference forward proxy ---------------------------------------------------

SQUID_START_TIMEOUT = 30.0


@contextlib.contextmanager
def squid(acls: str, *, workers: int = 1) -> Iterator[int]:
    """Squid (Debian's, 5.7) on a free loopback port with ``acls`` (its http_access rules),
    no cache, logs in a directory of its own. As root it runs as the ``proxy`` user (the
    pytest tmp_path is not reachable by that user, so the directory is its own)."""
    tool = shutil.which("squid") or "/usr/sbin/squid"
    if not Path(tool).exists():
        raise AssertionError("squid not found (apt-get install squid)")
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="revproxy-squid-"))
    user = ""
    if os.geteuid() == 0:
        pw = pwd.getpwnam("proxy")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        user = "cache_effective_user proxy\ncache_effective_group proxy\n"
    conf = root / "squid.conf"
    conf.write_text(f"""
http_port {LOOPBACK}:{port}
{user}pid_filename {root}/squid.pid
cache_log {root}/cache.log
access_log stdio:{root}/access.log
coredump_dir {root}
cache deny all
cache_mem 8 MB
workers {workers}
shutdown_lifetime 1 seconds
dns_nameservers 127.0.0.1
dns_timeout 1 seconds
dns_retransmit_interval 1 seconds
hosts_file /etc/hosts
forwarded_for delete
via off
request_header_access Via deny all
{acls}
""")
    proc = subprocess.Popen(
        [tool, "-N", "-f", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def up() -> bool:
            if proc.poll() is not None:
                return True
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    return True
            except OSError:
                return False

        if not wait_until(up, SQUID_START_TIMEOUT, 0.1) or proc.poll() is not None:
            cache_log = root / "cache.log"
            log = cache_log.read_text(errors="replace") if cache_log.exists() else ""
            raise AssertionError(f"squid did not start:\n{log[-3000:]}")
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)
