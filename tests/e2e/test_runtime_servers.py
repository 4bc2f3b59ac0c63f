"""``revproxy ctl add server`` and ``ctl del server`` end to end, with two workers (the
master tells them): a server added takes requests at once and leaves at the next reload; a
configured one deleted comes back then; ``--persist`` writes ``ctl-servers.toml``, which a
reload keeps and which is validated like any configuration (a rejected one is put back)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, curl_http, free_port, run_cli, toml_path, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def config(tmp: Path, port: int, server: str) -> str:
    return f"""
[global]
access_log = "off"
watch = false
workers = 2

[admin]
socket = {toml_path(tmp / "admin.sock")}

[[listener]]
name = "web"
bind = "{LOOPBACK}:{port}"

[[route]]
pool = "app"

[pool.app]
servers = ["{server}"]
"""


class Ops:
    def __init__(self, proxy: Proxy, port: int) -> None:
        self.proxy, self.port = proxy, port

    def ctl(self, *words: str) -> tuple[int, str]:
        res = run_cli("ctl", "-c", str(self.proxy.conf), *words)
        return res.returncode, (res.stdout + res.stderr).strip()

    def servers(self) -> set[str]:
        _, out = self.ctl("show", "servers")
        return {r.split()[0] for r in out.splitlines()[1:] if r.strip()}

    def who(self, n: int) -> Counter[str]:
        out: Counter[str] = Counter()
        for _ in range(n):
            r = curl_http(f"http://{LOOPBACK}:{self.port}/x")
            out[r.body.split()[0].decode() if r.status == 200 else str(r.status)] += 1
        return out


def test_add_and_del_last_until_the_next_reload(tmp_path: Path) -> None:
    with Origin("a") as a, Origin("b") as b:
        port = free_port()
        with Proxy(tmp_path, config(tmp_path, port, a.address), ports=[port]) as proxy:
            ops = Ops(proxy, port)
            na, nb = f"app/{a.address}", f"app/{b.address}"
            code, text = ops.ctl("add", "server", "app", b.address, "weight=3")
            assert (code, text) == (0, f"{nb} added (until the next reload; --persist keeps it)")
            assert ops.servers() == {na, nb}
            assert wait_until(lambda: ops.who(8) == Counter(a=2, b=6), 10)  # every worker
            # Deleting a configured server: out until the next reload.
            code, text = ops.ctl("del", "server", "app", a.address)
            assert (code, text) == (0, f"{na} removed until the next reload")
            assert wait_until(lambda: ops.who(4) == Counter(b=4), 10)
            assert ops.ctl("reload")[0] == 0
            assert ops.servers() == {na}
            assert wait_until(lambda: ops.who(4) == Counter(a=4), 10)
            # An added one deleted again; mistakes are named.
            ops.ctl("add", "server", "app", b.address)
            assert ops.ctl("del", "server", "app", nb) == (0, f"{nb} removed")
            assert ops.ctl("add", "server", "web", b.address) == (
                1,
                'no pool named "web" (pools: app)',
            )
            assert ops.ctl("add", "server", "app", a.address) == (
                1,
                f'{na} is already a server of pool "app"',
            )
            code, text = ops.ctl("add", "server", "app", "10.0.0.5")
            assert code == 1 and "has no port" in text
            assert ops.ctl("add", "server", "app", b.address, "weight=999") == (
                1,
                "weight must be 1 to 256, got 999",
            )
            assert ops.ctl("del", "server", "app", "10.9.9.9:80")[0] == 1
            log = proxy.stderr()
            assert f"pool=app backend={nb} added: ctl add server" in log
            assert f"pool=app backend={na} removed" in log
            assert proxy.stop() == 0


def test_persist_writes_a_file_of_its_own_validated_like_any_configuration(
    tmp_path: Path,
) -> None:
    with Origin("a") as a, Origin("b") as b:
        port = free_port()
        with Proxy(tmp_path, config(tmp_path, port, a.address), ports=[port]) as proxy:
            ops = Ops(proxy, port)
            nb = f"app/{b.address}"
            written = proxy.conf / "ctl-servers.toml"
            code, text = ops.ctl("add", "server", "app", b.address, "weight=2", "--persist")
            assert (code, text) == (0, f"{nb} added; written to {written}")
            assert 'pool = "app"' in written.read_text()
            assert f'address = "{b.address}"' in written.read_text()
            assert run_cli("check", "-c", str(proxy.conf)).returncode == 0
            assert ops.ctl("reload")[0] == 0  # a reload keeps it: it is configuration now
            assert nb in ops.servers()
            assert wait_until(lambda: ops.who(6) == Counter(a=2, b=4), 10)
            # A configured server cannot be deleted "for good" from here ...
            code, text = ops.ctl("del", "server", "app", a.address, "--persist")
            assert code == 1 and "remove it there" in text
            # ... a persisted one can.
            assert ops.ctl("del", "server", "app", b.address, "--persist")[0] == 0
            assert b.address not in written.read_text()
            assert ops.servers() == {f"app/{a.address}"}
            # The configuration on disk is broken meanwhile: nothing is written for good.
            (proxy.conf / "30-bad.toml").write_text('[pool.x]\nservers = ["10.0.0.5"]\n')
            code, text = ops.ctl("add", "server", "app", b.address, "--persist")
            assert code == 1
            assert "30-bad.toml: pool.x.servers[0]" in text
            assert b.address not in written.read_text()  # put back as it was
            assert ops.servers() == {f"app/{a.address}"}
            assert proxy.stop() == 0
