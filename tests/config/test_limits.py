"""``[limit.NAME]``, ``limits`` and ``conn_limit``: what they read to, and every problem named
by file, key path and reason."""

from __future__ import annotations

import pytest

from revproxy.config.load import load_config_text
from revproxy.config.model import ConnLimit, Limit
from revproxy.errors import ConfigError

BASE = """
[[listener]]
name = "http"
bind = ":80"

[pool.web]
servers = ["10.0.0.10:8080"]
"""
ROUTE = '[[route]]\npool = "web"\n'
TCP = '[[listener]]\nname = "db"\nbind = ":5432"\nmode = "tcp"\npool = "web"\n'  # listener[1]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text([("conf/10-test.toml", BASE + text)])
    return [str(problem) for problem in caught.value.problems]


def test_a_limit_and_where_it_applies() -> None:
    config = load_config_text([("conf/10-test.toml", """
[global]
client_ipv6_prefix = 56

[[listener]]
name = "http"
bind = ":80"
limits = ["per_ip"]
conn_limit = { per_client = 50, streams_per_client = 200 }

[[route]]
pool = "web"
limits = ["api", "per_ip"]

[pool.web]
servers = ["10.0.0.10:8080"]

[limit.per_ip]
rate = "100/10s"
burst = 20

[limit.api]
rate = "5/s"
key = "header:X-Api-Key"
action = "log"
headers = true
store = "redis://127.0.0.1:6379/0"
on_store_error = "deny"
""")])  # fmt: skip
    assert config.global_.client_ipv6_prefix == 56
    assert config.limit("per_ip") == Limit(
        name="per_ip", requests=100, period=10.0, burst=20, source="conf/10-test.toml"
    )
    api = config.limit("api")
    assert (api.requests, api.period, api.key, api.action, api.headers) == (
        5, 1.0, "header:x-api-key", "log", True,
    )  # fmt: skip
    assert (api.store, api.on_store_error) == ("redis://127.0.0.1:6379/0", "deny")
    assert config.listeners[0].limits == ("per_ip",)
    assert config.listeners[0].conn_limit == ConnLimit(per_client=50, streams_per_client=200)
    assert config.routes[0].limits == ("api", "per_ip")


def test_identity_changes_with_what_counts() -> None:
    a = Limit(name="a", requests=10, period=1.0)
    assert a.identity == Limit(name="a", requests=10, period=1.0, action="log").identity
    assert a.identity != Limit(name="a", requests=10, period=1.0, burst=1).identity
    assert a.identity != Limit(name="a", requests=10, period=2.0).identity
    assert a.identity != Limit(name="a", requests=10, period=1.0, key="user").identity


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[limit.a]\nburst = 2', 'limit.a.rate: required: requests per period, e.g. rate ='),
        ('[limit.a]\nrate = "100"', 'limit.a.rate: "100": write requests/period, e.g. "100/10s"'),
        ('[limit.a]\nrate = "0/s"', 'limit.a.rate: "0/s": at least 1 request per period'),
        ('[limit.a]\nrate = "5/w"', 'limit.a.rate: "5/w": the period is a duration like'),
        ('[limit.a]\nrate = "5/s"\nburst = -1', "limit.a.burst: expected an integer >= 0"),
        ('[limit.a]\nrate = "5/s"\nkey = "ip"',
         'limit.a.key: "ip": one of "client", "user", "client+route" or "header:NAME"'),
        ('[limit.a]\nrate = "5/s"\nkey = "header:"', 'limit.a.key: "header:": write header:NAME'),
        ('[limit.a]\nrate = "5/s"\naction = "drop"',
         'limit.a.action: expected one of "reject", "log", got "drop"'),
        ('[limit.a]\nrate = "5/s"\nstore = "memcached://x"',
         'limit.a.store: "memcached://x": a Redis URL'),
        ('[limit.a]\nrate = "5/s"\nstore = "redis://h:99999/0"', "the port is not a number"),
        ('[limit.a]\nrate = "5/s"\nstore = "redis://h/x"', "the database after the"),
        ('[limit.a]\nrate = "5/s"\non_store_error = "deny"',
         'limit.a.on_store_error: only used with store = "redis://…"'),
        ('[limit.a]\nrate = "5/s"\nwindow = "1s"', "limit.a.window: unknown key"),
        ('[limit]\na = 1', "limit.a: expected a table ([limit.a]), got 1"),
        (ROUTE + 'limits = ["nope"]',
         'route[0].limits[0]: no limit named "nope" (no limits are defined'),
        (ROUTE + 'limits = ["u"]\n[limit.u]\nrate = "5/s"\nkey = "user"',
         'route[0].limits[0]: limit "u" counts per user, and this has no auth'),
        ('[limit.u]\nrate = "5/s"\nkey = "user"\n' + TCP + 'limits = ["u"]',
         'listener[1].limits[0]: limit "u" counts per user, and this is a listener'),
        ('[limit.h]\nrate = "5/s"\nkey = "header:X-K"\n' + TCP + 'limits = ["h"]',
         "listener[1].limits[0]: limit \"h\" counts per header:x-k; a tcp listener counts new"),
        ('[limit.r]\nrate = "5/s"\nkey = "client+route"\n' + TCP + 'limits = ["r"]',
         "listener[1].limits[0]: limit \"r\" counts per client+route; a tcp listener"),
        (TCP + "conn_limit = { streams_per_client = 3 }",
         "listener[1].conn_limit.streams_per_client: HTTP/2 streams exist on http listeners"),
        (TCP + "conn_limit = { per_client = 0 }", "listener[1].conn_limit.per_client: expected"),
        (TCP + "conn_limit = {}", "listener[1].conn_limit: set per_client and/or"),
        ('[global]\nclient_ipv6_prefix = 129', "global.client_ipv6_prefix: expected an integer"),
    ],
)  # fmt: skip
def test_problems(snippet: str, expected: str) -> None:
    found = problems(snippet)
    assert len(found) == 1, found
    assert expected in found[0], found[0]
    assert found[0].startswith("conf/10-test.toml: ")


def test_passthrough_routes_take_no_limits() -> None:
    found = problems(
        '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}\n'
        '[[route]]\npassthrough = true\nsni = "a.example"\npool = "web"\nlimits = ["a"]\n'
        '[limit.a]\nrate = "5/s"\n'
    )
    assert any("route[0].limits: not on a passthrough route" in p for p in found), found


def test_check_summary_names_each_limit_and_hides_the_store_password() -> None:
    from revproxy.config.load import summary

    config = load_config_text([("conf/10-test.toml", BASE + ROUTE + """limits = ["a"]
[limit.a]
rate = "5/s"
burst = 2
action = "log"
store = "redis://:s3cret@127.0.0.1:6379/0"
""")])  # fmt: skip
    text = summary(config)
    assert (
        "  a: 5 per 1s + burst 2; per client; logs only (dry run); counted in "
        "redis://127.0.0.1:6379/0 (on store error: allow); on route[0]"
    ) in text
    assert "s3cret" not in text
