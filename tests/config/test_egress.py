"""``[egress.NAME]`` and the forward / socks5 listener keys: what they read to, and every
problem named by file, key path and reason."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest

from revproxy.config.load import load_config_text
from revproxy.config.model import EgressTimeouts
from revproxy.errors import ConfigError
from revproxy.proto.destinations import DEFAULT_DENY, parse_rule

FILE = "conf/10-test.toml"


def listener(mode: str = "forward", extra: str = "") -> str:
    return f'[[listener]]\nname = "egress"\nbind = "10.0.0.1:3128"\nmode = "{mode}"\n{extra}\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text([(FILE, text)])
    return [str(problem) for problem in caught.value.problems]


def test_the_issue_example(tmp_path: Path) -> None:
    users = tmp_path / "apps.htpasswd"
    users.write_text("app:$2y$05$" + "a" * 53 + "\n")
    config = load_config_text(
        [
            (
                FILE,
                f"""
[users.apps]
file = "{users}"

[[listener]]
name = "egress"
bind = ["10.0.0.1:3128"]
mode = "forward"
egress = "partners"
auth = {{ users = "apps", scheme = "basic" }}
allow = ["10.0.0.0/24"]
proxy_protocol = {{ mode = "required", trusted = ["10.0.0.0/8"] }}

[egress.partners]
destinations = ["api.partner.example", "*.payments.example", "db.example.com:5432",
                "198.51.100.0/24"]
ports = [80, 443, "1025-65535"]
connect_ports = [443, 5432]
deny = ["loopback", "private", "link-local", "metadata"]
source = ["203.0.113.7", "2001:db8::7"]
balance = "roundrobin"
timeouts = {{ connect = "5s", idle = "5m" }}
""",
            )
        ]
    )
    lst = config.listener("egress")
    assert lst.mode == "forward" and lst.egress == "partners"
    assert lst.auth is not None and lst.auth.users == "apps"
    egress = config.egress_named("partners")
    assert egress.destinations[2] == parse_rule("db.example.com:5432")
    assert egress.ports == ((80, 80), (443, 443), (1025, 65535))
    assert egress.connect_ports == ((443, 443), (5432, 5432))
    assert egress.deny == DEFAULT_DENY
    assert egress.source == ("203.0.113.7", "2001:db8::7")
    assert egress.balance == "roundrobin"
    assert egress.timeouts == EgressTimeouts(connect=5.0, idle=300.0)


def test_defaults_and_deny_override() -> None:
    config = load_config_text(
        [
            (
                FILE,
                listener(extra='egress = "e"')
                + """
[egress.e]
deny = ["metadata", "10.0.0.0/8"]
""",
            )
        ]
    )
    egress = config.egress_named("e")
    assert egress.destinations == ()  # nothing allowed
    assert egress.deny == ("metadata", ipaddress.ip_network("10.0.0.0/8"))
    assert egress.connect_ports == ((443, 443),)
    config = load_config_text(
        [(FILE, listener("socks5", 'egress = "e"') + "[egress.e]\ndeny = []\n")]
    )
    assert config.egress_named("e").deny == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (listener(), "listener[0].egress: required on a forward listener"),
        (listener(extra='egress = "x"'), 'listener[0].egress: no egress named "x"'),
        (
            listener("http", 'egress = "e"') + "[egress.e]\n",
            'listener[0].egress: only for mode = "forward" or "socks5"',
        ),
        (
            listener(extra='egress = "e"\npool = "p"') + "[egress.e]\n[pool.p]\nservers=['a:1']\n",
            "listener[0].pool: not on a forward listener",
        ),
        (
            listener(extra='egress = "e"\ntls = { cert_dir = "/x" }') + "[egress.e]\n",
            'listener[0].tls: only for mode = "http"',
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\ndestinations = ["https://a.example"]\n',
            'egress.e.destinations[0]: "https://a.example": write a host, not a URL',
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\ndestinations = ["10.0.0.1/8"]\n',
            "egress.e.destinations[0]",
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\nports = ["443-80"]\n',
            'egress.e.ports[0]: "443-80": the range is backwards',
        ),
        (
            listener(extra='egress = "e"') + "[egress.e]\nconnect_ports = [true]\n",
            'egress.e.connect_ports[0]: expected a port or "LOW-HIGH"',
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\ndeny = ["localhost"]\n',
            'egress.e.deny[0]: "localhost" is neither a class',
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\nsource = ["eth0"]\n',
            'egress.e.source[0]: "eth0" is not an IP address',
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\nbalance = "roundrobin"\n',
            "egress.e.balance: rotates outbound connections over several source addresses",
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\nbalance = "random"\n',
            'egress.e.balance: expected one of "first", "roundrobin"',
        ),
        (
            listener(extra='egress = "e"') + '[egress.e]\ntimeouts = { idle = "0s" }\n',
            "egress.e.timeouts.idle: must be more than zero",
        ),
        (listener(extra='egress = "e"') + '[egress.e]\nwhere = "x"\n', "egress.e.where"),
        (
            listener(extra='egress = "e"\nauth = { users = "nobody" }') + "[egress.e]\n",
            'listener[0].auth: no users named "nobody"',
        ),
    ],
)
def test_problems_name_file_key_and_reason(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(f"{FILE}: ") and expected in p for p in found), found


def test_users_must_suit_the_protocol(tmp_path: Path) -> None:
    basic = tmp_path / "b.htpasswd"
    basic.write_text("app:$2y$05$" + "a" * 53 + "\n")
    digest = tmp_path / "d.htdigest"
    digest.write_text("app:egress:" + hashlib.md5(b"app:egress:pw").hexdigest() + "\n")
    users = f'[users.b]\nfile = "{basic}"\n[users.d]\nfile = "{digest}"\n[egress.e]\n'
    found = problems(users + listener("socks5", 'egress = "e"\nauth = { users = "d", '
                                      'scheme = "digest", realm = "egress" }'))  # fmt: skip
    assert any("listener[0].auth: a socks5 listener checks RFC 1929" in p for p in found), found
    found = problems(users + listener(extra='egress = "e"\nauth = { users = "d" }'))
    assert any("come from an htdigest file" in p for p in found), found
    found = problems(users + listener(extra='egress = "e"\nauth = { users = "b", '
                                      'user_header = "X-User" }'))  # fmt: skip
    assert any("user_header is for routes" in p for p in found), found
    found = problems(users + listener("http", 'auth = { users = "b" }'))
    assert any("listener[0].auth: only for mode" in p for p in found), found
