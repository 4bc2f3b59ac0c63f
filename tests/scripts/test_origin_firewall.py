"""scripts/origin-firewall: the rules it prints, the inputs it refuses, and the rules at work.

Rendering is checked as text, table by table. The rules at work are checked inside two network
namespaces this test creates and deletes (an "origin" and a "client" joined by a veth pair,
addressed from the documentation ranges 192.0.2.0/24 and 2001:db8::/32): the client connects
from an allowed and a disallowed source, before and after ``--apply``. Nothing outside those
namespaces is touched; the host's own ruleset is compared before and after.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "origin-firewall"
# Bound on every command the test runs.
COMMAND_TIMEOUT = 30.0
# How long a probe waits for a connection: a dropped SYN never gets an answer.
PROBE_TIMEOUT = 3.0


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("origin_firewall", str(SCRIPT))
    spec = importlib.util.spec_from_loader("origin_firewall", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


fw = load_script()


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def nets(*texts: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(t) for t in texts]


# --- rendering ---------------------------------------------------------------------------------


def test_render_both_families() -> None:
    out = fw.render(nets("192.0.2.10", "2001:db8::10"), [8443, 8080])
    assert "table inet revproxy_origin {" in out
    assert "delete table inet revproxy_origin" in out.split("table inet revproxy_origin {")[0]
    assert "elements = { 192.0.2.10 }" in out
    assert "elements = { 2001:db8::10 }" in out
    assert "elements = { 8080, 8443 }" in out
    chain = out.split("chain input {", 1)[1]
    rules = [line.strip() for line in chain.splitlines() if line.strip() and line.strip() != "}"]
    assert rules == [
        "type filter hook input priority filter; policy accept;",
        'iif "lo" accept',
        "ct state established,related accept",
        "tcp dport @origin_ports ip saddr @proxies_v4 accept",
        "tcp dport @origin_ports ip6 saddr @proxies_v6 accept",
        "tcp dport @origin_ports drop",
    ]


@pytest.mark.parametrize(
    "proxies, present, absent",
    [
        (["192.0.2.10"], ["@proxies_v4 accept", "type ipv4_addr"], ["proxies_v6", "ip6 saddr"]),
        (["2001:db8::10"], ["@proxies_v6 accept", "type ipv6_addr"], ["proxies_v4", "ip saddr"]),
        (["192.0.2.0/28", "198.51.100.7"], ["elements = { 192.0.2.0/28, 198.51.100.7 }"], []),
        (["192.0.2.10", "192.0.2.0/24"], ["elements = { 192.0.2.0/24 }"], ["192.0.2.10 "]),
        (["[2001:db8::10]"], ["elements = { 2001:db8::10 }"], []),
        (["192.0.2.10", "192.0.2.10"], ["elements = { 192.0.2.10 }"], []),
    ],
)
def test_render_proxy_sets(proxies: list[str], present: list[str], absent: list[str]) -> None:
    out = fw.render([fw.parse_proxy(p) for p in proxies], [8080])
    for text in present:
        assert text in out, out
    for text in absent:
        assert text not in out, out


def test_ports_are_deduplicated_and_sorted() -> None:
    out = fw.render(nets("192.0.2.10"), [443, 80, 443, 8080])
    assert "elements = { 80, 443, 8080 }" in out


def test_cli_prints_the_ruleset() -> None:
    res = run_script("--proxy", "192.0.2.10", "--port", "8080")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout == fw.render(nets("192.0.2.10"), [8080])


def test_cli_remove() -> None:
    res = run_script("--remove")
    assert res.returncode == 0
    assert res.stdout.splitlines()[-1] == "delete table inet revproxy_origin"
    assert "chain" not in res.stdout


def test_help() -> None:
    res = run_script("--help")
    assert res.returncode == 0
    for word in ("--proxy", "--port", "--apply", "--remove", "nft list table"):
        assert word in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give at least one --proxy"),
        (["--port", "80"], "give at least one --proxy"),
        (["--proxy", "192.0.2.10"], "give at least one --port"),
        (["--proxy", "proxy.example", "--port", "80"], "'proxy.example': not an IP address"),
        (["--proxy", "192.0.2.10:443", "--port", "80"], "no ports"),
        (["--proxy", "192.0.2.1/24", "--port", "80"], "write 192.0.2.0/24, or 192.0.2.1"),
        (["--proxy", "192.0.2.10", "--port", "0"], "'0': a TCP port is 1-65535"),
        (["--proxy", "192.0.2.10", "--port", "65536"], "a TCP port is 1-65535"),
        (["--proxy", "192.0.2.10", "--port", "http"], "'http': not a number"),
        (["--remove", "--port", "80"], "--remove takes no --proxy or --port"),
    ],
)
def test_invalid_input_is_refused_clearly(args: list[str], message: str) -> None:
    res = run_script(*args)
    assert res.returncode == 2
    assert res.stdout == ""
    assert message in res.stderr, res.stderr
    assert res.stderr.startswith("origin-firewall: ")


def test_every_problem_is_reported_at_once() -> None:
    res = run_script("--proxy", "nope", "--proxy", "192.0.2.10", "--port", "x", "--port", "0")
    assert res.returncode == 2
    assert res.stderr.count("origin-firewall: --") == 3, res.stderr


# --- applied inside network namespaces --------------------------------------------------------


ORIGIN_V4, ALLOWED_V4, DENIED_V4 = "192.0.2.1", "192.0.2.10", "192.0.2.20"
ORIGIN_V6, ALLOWED_V6, DENIED_V6 = "2001:db8::1", "2001:db8::10", "2001:db8::20"
GUARDED, OTHER = 8080, 9090

SERVER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"ok\\n")
        c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = """
import json, socket, sys, threading
timeout = float(sys.argv[1])
probes = json.loads(sys.argv[2])
out = {}
def probe(key, src, dst, port):
    try:
        with socket.create_connection((dst, port), timeout=timeout, source_address=(src, 0)) as s:
            s.settimeout(timeout)
            out[key] = "connected" if s.recv(3) == b"ok\\n" else "no answer"
    except TimeoutError:
        out[key] = "dropped"
    except ConnectionRefusedError:
        out[key] = "refused"
    except OSError as exc:
        out[key] = f"error: {exc}"
ts = [threading.Thread(target=probe, args=(k, *v)) for k, v in probes.items()]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
"""


@dataclass
class Namespaces:
    origin: str
    client: str

    def run(self, ns: str, *cmd: str, input: str | None = None) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        assert res.returncode == 0, f"{cmd} in {ns}: {res.stderr}"
        return res.stdout

    def probe(
        self, probes: dict[str, tuple[str, str, int]], ns: str | None = None
    ) -> dict[str, str]:
        out = self.run(
            ns or self.client, sys.executable, "-c", PROBE, str(PROBE_TIMEOUT), json.dumps(probes)
        )
        result: dict[str, str] = json.loads(out)
        return result


def ip(*args: str) -> None:
    res = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, f"ip {' '.join(args)}: {res.stderr}"


def host_ruleset() -> str:
    # -s (stateless): the rules without their counters, which the host's own traffic moves.
    res = subprocess.run(["nft", "-s", "list", "ruleset"], capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT)  # fmt: skip
    return res.stdout + res.stderr


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: apt-get install -y iproute2 nftables")
    prefix = f"revproxy-test-{secrets.token_hex(4)}"
    ns = Namespaces(origin=f"{prefix}-o", client=f"{prefix}-c")
    probe = subprocess.run(["ip", "netns", "add", ns.origin], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here: {probe.stderr.strip()}")
    created = [ns.origin]
    try:
        ip("netns", "add", ns.client)
        created.append(ns.client)
        # The veth pair is created inside the client namespace and one end moved to the
        # origin's: the host's own interfaces are never touched.
        ip("-n", ns.client, "link", "add", "veth-c", "type", "veth", "peer", "name", "veth-o")
        ip("-n", ns.client, "link", "set", "veth-o", "netns", ns.origin)
        for addr in (f"{ORIGIN_V4}/24", f"{ORIGIN_V6}/64"):
            ip("-n", ns.origin, "addr", "add", addr, "dev", "veth-o", "nodad")
        for addr in (f"{ALLOWED_V4}/24", f"{DENIED_V4}/24", f"{ALLOWED_V6}/64",
                     f"{DENIED_V6}/64"):  # fmt: skip
            ip("-n", ns.client, "addr", "add", addr, "dev", "veth-c", "nodad")
        for name, dev in ((ns.origin, "veth-o"), (ns.client, "veth-c")):
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", dev, "up")
        yield ns
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True,
                           timeout=COMMAND_TIMEOUT)  # fmt: skip


@pytest.fixture
def origin_server(namespaces: Namespaces) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespaces.origin, sys.executable, "-c", SERVER,
         str(GUARDED), str(OTHER)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        yield
    finally:
        proc.kill()
        proc.wait(timeout=COMMAND_TIMEOUT)


PROBES = {
    "allowed-v4": (ALLOWED_V4, ORIGIN_V4, GUARDED),
    "denied-v4": (DENIED_V4, ORIGIN_V4, GUARDED),
    "allowed-v6": (ALLOWED_V6, ORIGIN_V6, GUARDED),
    "denied-v6": (DENIED_V6, ORIGIN_V6, GUARDED),
    "denied-v4-other-port": (DENIED_V4, ORIGIN_V4, OTHER),
    "denied-v6-other-port": (DENIED_V6, ORIGIN_V6, OTHER),
}
ALL_CONNECT = {key: "connected" for key in PROBES}
FIREWALLED = {
    **ALL_CONNECT,
    "denied-v4": "dropped",
    "denied-v6": "dropped",
}


@pytest.mark.e2e
@pytest.mark.usefixtures("origin_server")
def test_apply_in_a_namespace(namespaces: Namespaces) -> None:
    ns = namespaces
    host_before = host_ruleset()
    args = ["--proxy", ALLOWED_V4, "--proxy", ALLOWED_V6, "--port", str(GUARDED)]
    # Without rules, every source reaches every port: the network itself works.
    assert ns.probe(PROBES) == ALL_CONNECT
    # The printed ruleset is valid nftables (checked, not applied).
    rendered = run_script(*args).stdout
    ns.run(ns.origin, "nft", "-c", "-f", "-", input=rendered)

    ns.run(ns.origin, sys.executable, str(SCRIPT), *args, "--apply")
    assert ns.probe(PROBES) == FIREWALLED
    # Loopback on the origin itself is still allowed.
    local = {
        "loopback-v4": ("127.0.0.1", "127.0.0.1", GUARDED),
        "loopback-v6": ("::1", "::1", GUARDED),
    }
    assert ns.probe(local, ns.origin) == {"loopback-v4": "connected", "loopback-v6": "connected"}

    # Applying again replaces the table: still one table, same behaviour.
    ns.run(ns.origin, sys.executable, str(SCRIPT), *args, "--apply")
    tables = ns.run(ns.origin, "nft", "list", "tables")
    assert tables.split() == ["table", "inet", "revproxy_origin"]
    assert ns.probe(PROBES) == FIREWALLED

    # Removing the table opens the port again.
    ns.run(ns.origin, sys.executable, str(SCRIPT), "--remove", "--apply")
    assert ns.run(ns.origin, "nft", "list", "tables").strip() == ""
    assert ns.probe(PROBES) == ALL_CONNECT

    # The client namespace and the host were never touched.
    assert ns.run(ns.client, "nft", "list", "ruleset").strip() == ""
    assert host_ruleset() == host_before


APPLY_BROKEN = """
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("origin_firewall", sys.argv[1])
spec = importlib.util.spec_from_loader("origin_firewall", loader)
fw = importlib.util.module_from_spec(spec)
loader.exec_module(fw)
sys.exit(fw.apply("table inet revproxy_origin { chain input { no such rule } }\\n"))
"""


@pytest.mark.e2e
def test_apply_reports_nft_errors(namespaces: Namespaces) -> None:
    """--remove --apply where there is no table succeeds (it is created first); a ruleset nft
    refuses is reported with nft's own words and a failing status."""
    ns = namespaces
    ns.run(ns.origin, sys.executable, str(SCRIPT), "--remove", "--apply")
    res = subprocess.run(
        ["ip", "netns", "exec", ns.origin, sys.executable, "-c", APPLY_BROKEN, str(SCRIPT)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode != 0
    assert "origin-firewall: nft refused the ruleset:" in res.stderr, res.stderr
    assert "Error:" in res.stderr
    assert ns.run(ns.origin, "nft", "list", "tables").strip() == ""
