"""The keys of DNS discovery and runtime servers: ``resolve = "all"`` and ``srv`` on a pool's
servers, ``[global] resolvers``, and the ``[[server]]`` tables ``ctl add server --persist``
writes. Every mistake is named by file, key path and reason."""

from __future__ import annotations

import pytest

from revproxy.config.load import load_config_text
from revproxy.config.model import Config, Server
from revproxy.errors import ConfigError

BASE = """
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "app"
"""


def problems(*texts: str) -> list[str]:
    files = [(f"conf/{10 + i}-test.toml", text) for i, text in enumerate(texts)]
    with pytest.raises(ConfigError) as caught:
        load_config_text(files)
    return [str(problem) for problem in caught.value.problems]


def load(*texts: str) -> Config:
    return load_config_text([(f"conf/{10 + i}-test.toml", t) for i, t in enumerate(texts)])


def test_resolve_all_srv_and_resolvers_are_read() -> None:
    config = load(
        BASE
        + '[global]\nresolvers = ["10.0.0.2:5353", "10.0.0.3", "[fd00::2]:53", "fd00::3"]\n'
        + "[pool.app]\nservers = ["
        + '{ address = "App.Internal:8080", resolve = "all", weight = 2 }, '
        + '{ srv = "_http._tcp.app.internal", backup = true }, "10.0.0.9:80"]\n'
    )
    assert config.global_.resolvers == (
        ("10.0.0.2", 5353),
        ("10.0.0.3", 53),
        ("fd00::2", 53),
        ("fd00::3", 53),
    )
    all_, srv, plain = config.pool("app").servers
    assert all_ == Server(address="app.internal", port=8080, weight=2, resolve="all")
    assert srv == Server(
        address="_http._tcp.app.internal", port=0, backup=True, srv="_http._tcp.app.internal"
    )
    assert (all_.discovered, srv.discovered, plain.discovered) == (True, True, False)
    assert str(srv) == "srv:_http._tcp.app.internal"


def test_mistakes_in_discovery_keys_are_named() -> None:
    text = (
        BASE
        + '[global]\nresolvers = ["dns.internal:53", "10.0.0.2:99999"]\n'
        + "[pool.app]\nservers = ["
        + '{ address = "10.0.0.1:80", resolve = "all" }, '
        + '{ address = "app.internal:80", resolve = "some" }, '
        + '{ address = "app.internal:81", resolve = "all", name = "app" }, '
        + '{ srv = "app.internal" }, '
        + '{ srv = "_http._tcp.app.internal", address = "app.internal:80" }]\n'
    )
    f = "conf/10-test.toml"
    assert problems(text) == [
        f'{f}: global.resolvers[0]: "dns.internal:53" is not an IP address with an optional '
        'port (write e.g. "10.0.0.2:53": a resolver named by a host name would need a resolver '
        "itself)",
        f"{f}: global.resolvers[1]: " + problems_of_port(),
        f"{f}: pool.app.servers[0].resolve: 10.0.0.1 is an IP address: there is nothing to resolve",
        f'{f}: pool.app.servers[1].resolve: expected one of "one", "all", got "some"',
        f"{f}: pool.app.servers[2].name: each address found is a server of its own, named "
        "POOL/ADDRESS:PORT (a name would be shared by all of them)",
        f'{f}: pool.app.servers[3].srv: "app.internal" is not an SRV name: write '
        '"_SERVICE._tcp.DOMAIN" (e.g. "_http._tcp.app.internal")',
        f"{f}: pool.app.servers[4].address: an srv server takes its addresses and ports from "
        "the record",
    ]


def problems_of_port() -> str:
    """What the shared server-address parser says of port 99999 (config/values.py)."""
    found = problems(BASE + '[pool.app]\nservers = ["10.0.0.2:99999"]\n')
    return found[0].split("servers[0]: ", 1)[1]


def test_server_tables_add_servers_to_pools_of_other_files() -> None:
    pool = BASE + '[pool.app]\nservers = ["10.0.0.1:80"]\n'
    added = '[[server]]\npool = "app"\naddress = "10.0.0.2:80"\nweight = 2\n'
    config = load(pool, added)
    assert [str(s) for s in config.pool("app").servers] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert config.pool("app").servers[1].weight == 2


def test_mistakes_in_server_tables_are_named() -> None:
    pool = BASE + '[pool.app]\nservers = ["10.0.0.1:80"]\n'
    added = (
        '[[server]]\naddress = "10.0.0.2:80"\n'
        '[[server]]\npool = "api"\naddress = "10.0.0.2:80"\n'
        '[[server]]\npool = "app"\naddress = "10.0.0.1:80"\n'
        '[[server]]\npool = "app"\naddress = "10.0.0.3"\n'
        '[[server]]\npool = "app"\naddress = "10.0.0.4:80"\ncolour = "red"\n'
    )
    f = "conf/11-test.toml"
    found = problems(pool, added)
    assert found[:4] == [
        f'{f}: server[0].pool: required (write e.g. pool = "app")'.replace('"app"', '"web"'),
        f'{f}: server[1].pool: no pool named "api" (defined pools: app)',
        f'{f}: server[2].address: 10.0.0.1:80 is already a server of pool "app"',
        f'{f}: server[3].address: "10.0.0.3" has no port (write "10.0.0.3:8080")',
    ]
    assert found[4].startswith(f"{f}: server[4].colour: unknown key")
