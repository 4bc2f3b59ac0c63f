"""allow/deny lists (policy/access.py, config/access.py) and the client they decide on."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from revproxy.config.load import load_config_text
from revproxy.config.model import Access, Config
from revproxy.errors import ConfigError
from revproxy.policy.access import AccessList, compile_access
from revproxy.proto.forwarding import policy_client


def acl(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> AccessList:
    access = Access(
        allow=tuple(ipaddress.ip_network(a) for a in allow),
        deny=tuple(ipaddress.ip_network(d) for d in deny),
    )
    compiled = compile_access(access)
    assert compiled is not None
    return compiled


def test_nothing_checked_compiles_to_nothing() -> None:
    assert compile_access(Access()) is None


def test_deny_wins_over_allow_and_an_allow_list_refuses_the_rest() -> None:
    a = acl(allow=("10.0.0.0/8",), deny=("10.6.6.0/24",))
    assert a.permits("10.1.2.3")
    assert not a.permits("10.6.6.6")
    assert not a.permits("192.0.2.1")
    d = acl(deny=("192.0.2.0/24", "2001:db8::/32"))
    assert d.permits("198.51.100.1") and not d.permits("192.0.2.9")
    assert not d.permits("2001:db8::5") and d.permits("::1")


def test_an_empty_allow_file_refuses_everyone(tmp_path: Path) -> None:
    (tmp_path / "allow.txt").write_text("# nobody yet\n")
    config = load(tmp_path, 'allow_file = "allow.txt"')
    compiled = compile_access(config.listeners[0].access)
    assert compiled is not None and not compiled.permits("127.0.0.1")


def load(tmp_path: Path, listener_keys: str, route_keys: str = "") -> Config:
    text = f"""
[[listener]]
name = "web"
bind = ":8080"
{listener_keys}

[[route]]
respond = {{ status = 200 }}
{route_keys}
"""
    return load_config_text([("conf/10-test.toml", text)], base_dir=tmp_path)


def problems(tmp_path: Path, listener_keys: str, route_keys: str = "") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, listener_keys, route_keys)
    return [str(p) for p in caught.value.problems]


def test_files_are_read_with_comments(tmp_path: Path) -> None:
    (tmp_path / "deny.txt").write_text("# scanners\n192.0.2.0/24  # a range\n\n198.51.100.7\n")
    config = load(tmp_path, 'allow = ["10.0.0.0/8"]', 'deny_file = "deny.txt"')
    assert config.listeners[0].access.allow == (ipaddress.ip_network("10.0.0.0/8"),)
    route_access = config.routes[0].access
    assert route_access.deny == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("198.51.100.7/32"),
    )
    assert route_access.deny_file == tmp_path / "deny.txt"


def test_bad_lines_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "deny.txt").write_text("10.0.0.0/8\nnot an address\n10.0.0.1/8\n")
    found = problems(tmp_path, 'deny_file = "deny.txt"')
    assert len(found) == 2
    assert found[0].startswith(f"conf/10-test.toml: listener[0].deny_file: {tmp_path}/deny.txt:2: ")
    assert "deny.txt:3: " in found[1] and "host bits set" in found[1]


def test_a_broken_file_of_many_lines_gives_few_problems(tmp_path: Path) -> None:
    (tmp_path / "allow.txt").write_text("bad\n" * 1000)
    found = problems(tmp_path, 'allow_file = "allow.txt"')
    assert len(found) == 11 and found[-1].endswith("990 more bad lines")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('allow_file = "missing.txt"', "does not exist"),
        ('allow = ["10.0.0.0/33"]', "not an IP address or CIDR network"),
        ('deny = "10.0.0.1/8"', "host bits set"),
    ],
)
def test_bad_keys(tmp_path: Path, keys: str, message: str) -> None:
    (found,) = problems(tmp_path, keys)
    assert message in found


def test_passthrough_routes_take_no_access_keys(tmp_path: Path) -> None:
    text = """
[[listener]]
name = "tls"
bind = ":8443"
tls = {}

[[route]]
sni = ["legacy.example.com"]
passthrough = true
pool = "p"
allow = ["10.0.0.0/8"]

[pool.p]
servers = ["127.0.0.1:9"]
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text([("conf/10-test.toml", text)], base_dir=tmp_path)
    assert any("put allow/deny on its listener" in str(p) for p in caught.value.problems)


TRUSTED = [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("address", "xff", "client"),
    [
        ("203.0.113.7", [b"6.6.6.6"], "203.0.113.7"),  # untrusted sender: its socket address
        ("10.0.0.2", [b"198.51.100.9"], "198.51.100.9"),  # trusted proxy: the hop before it
        ("10.0.0.2", [b"6.6.6.6, 198.51.100.9, 10.0.0.3"], "198.51.100.9"),
        ("10.0.0.2", [b"6.6.6.6", b"198.51.100.9"], "198.51.100.9"),
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", [b"10.0.0.5, 10.0.0.4"], "10.0.0.5"),
    ],
)
def test_policy_client(address: str, xff: list[bytes], client: str) -> None:
    headers = [(b"x-forwarded-for", v) for v in xff]
    assert policy_client(headers, address, TRUSTED) == client
    assert policy_client(headers, address, []) == address
