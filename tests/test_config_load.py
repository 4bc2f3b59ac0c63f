"""conf/*.toml → Config: every validation, table-driven (like Caddy's addresses_test.go).

Each error case is a TOML snippet added to a small valid config, and the one problem it must
produce, written as "key path: reason" so a test failure shows the operator's view.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from revproxy.config import (
    Bind,
    CertPair,
    Config,
    Global,
    Listener,
    ListenerTLS,
    Pool,
    ProxyProtocolIn,
    Respond,
    Route,
    Server,
    Timeouts,
)
from revproxy.config_load import (
    load_config,
    load_config_text,
    parse_bind,
    parse_duration,
    parse_server,
    parse_size,
    summary,
)
from revproxy.config_values import parse_host_pattern, parse_network
from revproxy.errors import ConfigError

FILE = "conf/10-test.toml"

# A small valid config: listener[0] "http" on :80, pool "web". Cases add tables after it.
BASE = """
[[listener]]
name = "http"
bind = ":80"

[pool.web]
servers = ["10.0.0.10:8080"]
"""


def problems(*texts: str) -> list[str]:
    """Problems of the files `texts` (named conf/10-test.toml, conf/11-test.toml, ...)."""
    files = [(f"conf/{10 + i}-test.toml", text) for i, text in enumerate(texts)]
    with pytest.raises(ConfigError) as caught:
        load_config_text(files)
    return [str(problem) for problem in caught.value.problems]


def load(*texts: str) -> Config:
    return load_config_text([(f"conf/{10 + i}-test.toml", text) for i, text in enumerate(texts)])


# --- one problem each ---------------------------------------------------------------------

NEW = '[[listener]]\nname = "b"\nbind = ":81"\n'  # listener[1]

ERRORS: list[tuple[str, str, str]] = [
    # (id, TOML added to BASE, "key: reason" the single problem must contain)
    # [global]
    ("workers-word", '[global]\nworkers = "many"',
     'global.workers: expected an integer >= 1 or "auto", got "many"'),
    ("workers-zero", "[global]\nworkers = 0",
     'global.workers: expected an integer >= 1 or "auto", got 0'),
    ("workers-bool", "[global]\nworkers = true", "global.workers: expected an integer >= 1"),
    ("global-unknown", '[global]\nadmin_sockt = "x"',
     "global.admin_sockt: unknown key (allowed keys: workers, access_log,"),
    ("log-format", '[global]\naccess_log_format = "xml"',
     'global.access_log_format: expected one of "text", "json", got "xml"'),
    ("http1-parser", '[global]\nhttp1_parser = "fast"',
     'global.http1_parser: expected one of "auto", "httptools", "h11", got "fast"'),
    ("access-log-empty", '[global]\naccess_log = ""',
     'global.access_log: expected a non-empty string, got ""'),
    ("duration-no-unit", '[global]\nheader_timeout = "10"',
     'global.header_timeout: "10" has no unit (write "10s")'),
    ("duration-words", '[global]\nkeepalive_timeout = "1 minute"',
     'global.keepalive_timeout: "1 minute" is not a duration'),
    ("duration-zero", '[global]\nheader_timeout = "0s"',
     'global.header_timeout: must be more than zero, got "0s"'),
    ("duration-negative", "[global]\nshutdown_timeout = -1",
     "global.shutdown_timeout: a duration cannot be negative"),
    ("size-words", '[global]\nmax_header_size = "16 kb"',
     'global.max_header_size: "16 kb" is not a size'),
    ("size-small", "[global]\nmax_header_size = 100",
     "global.max_header_size: must be at least 1024 bytes, got 100"),
    ("size-negative", "[global]\nmax_body_size = -1",
     "global.max_body_size: a size cannot be negative"),
    ("size-float", "[global]\nmax_body_size = 1.5", "global.max_body_size: expected a size"),
    ("state-dir-type", "[global]\nstate_dir = 5",
     "global.state_dir: expected a non-empty string, got 5"),
    # top level
    ("top-unknown", '[listeners]\nname = "x"',
     'listeners: unknown key (did you mean "listener"?'),
    # [[listener]]
    ("listener-no-name", '[[listener]]\nbind = ":81"', "listener[1].name: required"),
    ("listener-no-bind", '[[listener]]\nname = "b"',
     'listener[1].bind: needs at least one address (write e.g. bind = [":443"])'),
    ("listener-empty-bind", '[[listener]]\nname = "b"\nbind = []',
     "listener[1].bind: needs at least one address"),
    ("bind-no-port", '[[listener]]\nname = "b"\nbind = "127.0.0.1"',
     'listener[1].bind: "127.0.0.1" has no port (write "127.0.0.1:8080")'),
    ("bind-brackets", '[[listener]]\nname = "b"\nbind = ["127.0.0.1:81", "[::1:81"]',
     'listener[1].bind[1]: "[::1:81" has a "[" without its "]"'),
    ("bind-port-range", '[[listener]]\nname = "b"\nbind = ":70000"',
     'listener[1].bind: ":70000": port 70000 is out of range (1 to 65535)'),
    ("bind-twice", '[[listener]]\nname = "b"\nbind = [":81", ":81"]',
     'listener[1].bind[1]: ":81" is listed twice (also listener[1].bind[0])'),
    ("bind-int", '[[listener]]\nname = "b"\nbind = 81',
     "listener[1].bind: expected a string, got 81"),
    ("listener-unknown", NEW + 'tsl = {}',
     'listener[1].tsl: unknown key (did you mean "tls"? allowed keys: name, bind, mode, tls,'),
    ("mode", NEW + 'mode = "udp"',
     'listener[1].mode: expected one of "http", "tcp", got "udp"'),
    ("tls-type", NEW + 'tls = "yes"',
     'listener[1].tls: expected a table, got "yes"'),
    ("tls-unknown-sni", NEW + 'tls = { unknown_sni = "drop" }',
     'listener[1].tls.unknown_sni: expected one of "generated", "reject", got "drop"'),
    ("tls-alpn", NEW + 'tls = { alpn = ["h2", "h3"] }',
     'listener[1].tls.alpn[1]: expected one of "h2", "http/1.1", got "h3"'),
    ("tls-alpn-empty", NEW + 'tls = { alpn = [] }',
     "listener[1].tls.alpn: must name at least one protocol"),
    ("tls-cert-no-key",
     NEW + 'tls = { certs = [{ cert = "/x/a.pem" }] }',
     "listener[1].tls.certs[0].key: required"),
    ("tls-certs-not-table", NEW + 'tls = { certs = ["a"] }',
     'listener[1].tls.certs[0]: expected a table, got "a"'),
    ("tls-redirect", NEW + 'tls = {}\nredirect_https = true',
     "listener[1].redirect_https: a TLS listener already serves HTTPS"),
    ("redirect-nowhere", NEW + 'redirect_https = true',
     "listener[1].redirect_https: there is no TLS listener to redirect to"),
    ("redirect-port", NEW + 'redirect_port = 0',
     "listener[1].redirect_port: expected an integer from 1 to 65535, got 0"),
    ("trusted-host-bits", NEW + 'trusted_proxies = ["10.0.0.1/8"]',
     'listener[1].trusted_proxies[0]: "10.0.0.1/8" has host bits set (write "10.0.0.0/8"'),
    ("trusted-name", NEW + 'trusted_proxies = ["lb.internal"]',
     'listener[1].trusted_proxies[0]: "lb.internal" is not an IP address or CIDR network'),
    ("pp-mode", NEW + 'proxy_protocol = { mode = "maybe" }',
     'listener[1].proxy_protocol.mode: expected one of "off", "optional", "required"'),
    ("pp-untrusted", NEW + 'proxy_protocol = { mode = "optional" }',
     'listener[1].proxy_protocol.trusted: mode "optional" needs the addresses allowed'),
    ("pp-timeout",
     NEW + 'proxy_protocol = { timeout = "soon" }',
     'listener[1].proxy_protocol.timeout: "soon" is not a duration'),
    ("pp-unknown", NEW + 'proxy_protocol = { trust = [] }',
     'listener[1].proxy_protocol.trust: unknown key (did you mean "trusted"?'),
    ("forwarded", NEW + 'forwarded = "yes"',
     'listener[1].forwarded: expected true or false, got "yes"'),
    ("http-pool", NEW + 'pool = "web"',
     'listener[1].pool: only for mode = "tcp"'),
    ("tcp-no-pool", NEW + 'mode = "tcp"',
     "listener[1].pool: required on a tcp listener"),
    ("tcp-tls", NEW + 'mode = "tcp"\npool = "web"\ntls = {}',
     'listener[1].tls: only for mode = "http"'),
    ("tcp-redirect",
     NEW + 'mode = "tcp"\npool = "web"\nredirect_https = true',
     'listener[1].redirect_https: only for mode = "http"'),
    ("tcp-forwarded",
     NEW + 'mode = "tcp"\npool = "web"\nforwarded = true',
     'listener[1].forwarded: only for mode = "http"'),
    ("tcp-missing-pool", NEW + 'mode = "tcp"\npool = "pg"',
     'listener[1].pool: no pool named "pg" (defined pools: web)'),
    ("listener-dup-name", '[[listener]]\nname = "http"\nbind = ":81"',
     'listener[1].name: duplicate listener name "http" (first used by listener[0] in '
     f"{FILE})"),
    ("bind-clash", '[[listener]]\nname = "b"\nbind = ":80"',
     f'listener[1].bind: :80 clashes with :80 of listener "http" (listener[0].bind in {FILE})'),
    ("bind-clash-wildcard", '[[listener]]\nname = "b"\nbind = ["127.0.0.1:80"]',
     'listener[1].bind[0]: 127.0.0.1:80 clashes with :80 of listener "http"'),
    ("bind-clash-any-v4",
     '[[listener]]\nname = "b"\nbind = "0.0.0.0:81"\n'
     '[[listener]]\nname = "c"\nbind = "10.0.0.1:81"',
     'listener[2].bind: 10.0.0.1:81 clashes with 0.0.0.0:81 of listener "b"'),
    ("bind-clash-v6-normalised",
     '[[listener]]\nname = "b"\nbind = "[::1]:81"\n[[listener]]\nname = "c"\nbind = "[0::1]:81"',
     'listener[2].bind: [::1]:81 clashes with [::1]:81 of listener "b"'),
    # [[route]]
    ("route-no-action", '[[route]]\nhost = "example.com"',
     "route[0]: needs one of pool, redirect or respond"),
    ("route-two-actions", '[[route]]\npool = "web"\nrespond = { status = 404 }',
     "route[0]: has pool and respond; a route does exactly one of them"),
    ("route-unknown", '[[route]]\nhosts = "a.example"\npool = "web"',
     'route[0].hosts: unknown key (did you mean "host"?'),
    ("host-port", '[[route]]\nhost = ["example.com", "Example.org:8080"]\npool = "web"',
     'route[0].host[1]: "Example.org:8080": no port in host (write "example.org";'),
    ("host-wildcard-middle", '[[route]]\nhost = "a.*.example.com"\npool = "web"',
     'route[0].host: "a.*.example.com": "*" may only be the whole first label'),
    ("host-wildcard-partial", '[[route]]\nhost = ["*example.com"]\npool = "web"',
     'route[0].host[0]: "*example.com": "*" may only be the whole first label'),
    ("host-star", '[[route]]\nhost = "*"\npool = "web"',
     'route[0].host: "*" is not needed: leave host out to match any host'),
    ("host-int", '[[route]]\nhost = 5\npool = "web"', "route[0].host: expected a string, got 5"),
    ("host-twice", '[[route]]\nhost = ["a.example", "A.example"]\npool = "web"',
     'route[0].host[1]: "a.example" is listed twice (also route[0].host[0])'),
    ("host-ipv6-bare", '[[route]]\nhost = "::1"\npool = "web"',
     'route[0].host: "::1": an IPv6 address needs brackets (write "[::1]")'),
    ("host-unicode", '[[route]]\nhost = "bücher.de"\npool = "web"',
     'route[0].host: "bücher.de": write the name in its ASCII form ("xn--bcher-kva.de")'),
    ("path-slash", '[[route]]\npath = "api/"\npool = "web"',
     'route[0].path: "api/" must start with "/" (write "/api/")'),
    ("path-query", '[[route]]\npath = "/a?b=1"\npool = "web"',
     "route[0].path: \"/a?b=1\": paths match without the query"),
    ("path-type", '[[route]]\npath = 1\npool = "web"', "route[0].path: expected a string, got 1"),
    ("route-missing-pool", '[[route]]\npool = "api"\n[pool.static]\nservers = ["10.0.0.2:80"]',
     'route[0].pool: no pool named "api" (defined pools: web, static)'),
    ("route-missing-listener", '[[route]]\npool = "web"\nlisteners = ["https"]',
     'route[0].listeners[0]: no listener named "https" (defined listeners: http)'),
    ("route-tcp-listener",
     '[[listener]]\nname = "pg"\nbind = ":5432"\nmode = "tcp"\npool = "web"\n'
     '[[route]]\npool = "web"\nlisteners = ["http", "pg"]',
     'route[0].listeners[1]: listener "pg" is a tcp listener; routes apply to http listeners'),
    ("redirect-target", '[[route]]\nredirect = "example.org"',
     'route[0].redirect: "example.org" is not a redirect target'),
    ("redirect-status", '[[route]]\nredirect = "https://example.org/"\nredirect_status = 305',
     "route[0].redirect_status: expected one of 301, 302, 303, 307, 308, got 305"),
    ("redirect-status-alone", '[[route]]\npool = "web"\nredirect_status = 301',
     "route[0].redirect_status: only used with redirect"),
    ("respond-status", '[[route]]\nrespond = { status = 700 }',
     "route[0].respond.status: expected an integer from 200 to 599, got 700"),
    ("respond-status-1xx", '[[route]]\nrespond = { status = 101 }',
     "route[0].respond.status: expected an integer from 200 to 599, got 101"),
    ("respond-204-body", '[[route]]\nrespond = { status = 204, body = "x" }',
     "route[0].respond.body: a 204 response cannot have a body"),
    ("respond-content-type",
     '[[route]]\nrespond = { content_type = "text/plain\\r\\nX-Evil: 1" }',
     "route[0].respond.content_type: must not contain line breaks"),
    ("respond-unknown", '[[route]]\nrespond = { code = 404 }',
     'route[0].respond.code: unknown key (allowed keys: status, body, content_type)'),
    ("route-shadowed",
     '[[route]]\nhost = "example.com"\npool = "web"\n'
     '[[route]]\nhost = ["www.example.com", "example.com"]\nrespond = { status = 404 }',
     f'route[1]: never used for host "example.com" and path "/": route[0] ({FILE}) matches'),
    ("route-shadowed-any-host", '[[route]]\npool = "web"\n[[route]]\nrespond = {}',
     'route[1]: never used for any host and path "/": route[0]'),
    ("route-shadowed-listener",
     '[[route]]\npool = "web"\n[[route]]\nlisteners = ["http"]\nrespond = {}',
     'route[1]: never used for any host and path "/": route[0]'),
    # [pool.NAME]
    ("pool-no-servers", "[pool.api]\nbalance = \"leastconn\"",
     'pool.api.servers: a pool needs at least one server (write servers = ["HOST:PORT"])'),
    ("pool-empty-servers", "[pool.api]\nservers = []", "pool.api.servers: a pool needs at least"),
    ("server-no-port", '[pool.api]\nservers = ["10.0.0.4:80", "10.0.0.5"]',
     'pool.api.servers[1]: "10.0.0.5" has no port (write "10.0.0.5:8080")'),
    ("server-v6-no-brackets", '[pool.api]\nservers = ["::1:8080"]',
     'pool.api.servers[0]: "::1:8080": IPv6 addresses go in brackets, before the port '
     '(write "[::1]:8080" or'),
    ("server-url", '[pool.api]\nservers = ["http://10.0.0.5:8080/"]',
     'pool.api.servers[0]: "http://10.0.0.5:8080/" is a URL; write only host and port '
     '(write "10.0.0.5:8080")'),
    ("server-twice", '[pool.api]\nservers = ["10.0.0.5:80", "10.0.0.5:80"]',
     "pool.api.servers[1]: 10.0.0.5:80 is listed twice (also servers[0])"),
    ("server-twice-normalised",
     '[pool.api]\nservers = ["[::1]:80", { address = "[0:0::1]:80", weight = 2 }]',
     "pool.api.servers[1]: [::1]:80 is listed twice (also servers[0])"),
    ("server-twice-case", '[pool.api]\nservers = ["App.internal:80", "app.internal:80"]',
     "pool.api.servers[1]: app.internal:80 is listed twice"),
    ("weight-zero", '[pool.api]\nservers = [{ address = "10.0.0.5:80", weight = 0 }]',
     "pool.api.servers[0].weight: expected an integer from 1 to 256, got 0"),
    ("weight-big", '[pool.api]\nservers = [{ address = "10.0.0.5:80", weight = 257 }]',
     "pool.api.servers[0].weight: expected an integer from 1 to 256, got 257"),
    ("weight-string", '[pool.api]\nservers = [{ address = "10.0.0.5:80", weight = "2" }]',
     'pool.api.servers[0].weight: expected an integer from 1 to 256, got "2"'),
    ("all-backup",
     '[pool.api]\nservers = [{ address = "10.0.0.5:80", backup = true },'
     ' { address = "10.0.0.6:80", backup = true }]',
     "pool.api.servers: every server is a backup; at least one must not be"),
    ("server-names",
     '[pool.api]\nservers = [{ address = "10.0.0.5:80", name = "a" },'
     ' { address = "10.0.0.6:80", name = "a" }]',
     'pool.api.servers[1].name: server name "a" is used twice (also servers[0])'),
    ("server-no-address", '[pool.api]\nservers = [{ weight = 2 }]',
     'pool.api.servers[0].address: required (write e.g. address = "10.0.0.10:8080")'),
    ("server-unknown", '[pool.api]\nservers = [{ address = "10.0.0.5:80", port = 80 }]',
     'pool.api.servers[0].port: unknown key (allowed keys: address, weight, backup, name,'),
    ("server-int", "[pool.api]\nservers = [8080]",
     'pool.api.servers[0]: expected "HOST:PORT" or a table with address, got 8080'),
    ("server-only-port", '[pool.api]\nservers = ["8080"]',
     'pool.api.servers[0]: "8080" is only a port (write e.g. "10.0.0.5:8080")'),
    ("servers-string", '[pool.api]\nservers = "10.0.0.5:80"',
     'pool.api.servers: expected an array, got "10.0.0.5:80"'),
    ("max-conns", '[pool.api]\nservers = [{ address = "10.0.0.5:80", max_conns = 0 }]',
     "pool.api.servers[0].max_conns: expected an integer >= 1, got 0"),
    ("balance", '[pool.api]\nservers = ["10.0.0.5:80"]\nbalance = "fastest"',
     'pool.api.balance: expected one of "roundrobin", "leastconn", "source", "uri", "random",'
     ' got "fastest"'),
    ("timeouts", '[pool.api]\nservers = ["10.0.0.5:80"]\ntimeouts = { connect = "5" }',
     'pool.api.timeouts.connect: "5" has no unit (write "5s")'),
    ("timeouts-unknown", '[pool.api]\nservers = ["10.0.0.5:80"]\ntimeouts = { read = "5s" }',
     "pool.api.timeouts.read: unknown key (allowed keys: connect, response, idle)"),
    ("send-proxy", '[pool.api]\nservers = ["10.0.0.5:80"]\nsend_proxy = "v3"',
     'pool.api.send_proxy: expected one of "v1", "v2", got "v3"'),
    ("hide-headers", '[pool.api]\nservers = ["10.0.0.5:80"]\nhide_headers = ["X Debug"]',
     'pool.api.hide_headers[0]: "X Debug" is not a header name'),
    ("server-header", '[pool.api]\nservers = ["10.0.0.5:80"]\nserver_header = "a\\nb"',
     "pool.api.server_header: must not contain line breaks"),
    ("keepalive", '[pool.api]\nservers = ["10.0.0.5:80"]\nkeepalive = -1',
     "pool.api.keepalive: expected an integer >= 0, got -1"),
    ("resolve-interval", '[pool.api]\nservers = ["10.0.0.5:80"]\nresolve_interval = 0',
     "pool.api.resolve_interval: must be more than zero, got 0"),
    ("pool-unknown", '[pool.api]\nservers = ["10.0.0.5:80"]\nhealth = {}',
     "pool.api.health: unknown key (allowed keys: servers, balance,"),
    ("pool-name", '[pool."my pool"]\nservers = ["10.0.0.5:80"]',
     'pool.my pool: pool names are letters, digits, "_", "-" and "."'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("snippet", "expected"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_one_problem(snippet: str, expected: str) -> None:
    found = problems(BASE + "\n" + snippet + "\n")
    assert len(found) == 1, found
    assert found[0] == f"{FILE}: {expected}" or found[0].startswith(f"{FILE}: {expected}"), found


# Shapes that need a file of their own, since BASE already fixes them.
SHAPE_ERRORS = [
    ("listener-string", 'listener = "x"',
     'conf/11-test.toml: listener: expected an array of tables ([[listener]]), got "x"'),
    ("listener-table", '[listener]\nname = "x"',
     "conf/11-test.toml: listener: expected an array of tables ([[listener]]), got a table"),
    ("route-not-table", "route = [1]",
     "conf/11-test.toml: route[0]: expected a table ([[route]]), got 1"),
    ("pool-without-name", '[pool]\nservers = ["10.0.0.5:80"]',
     "conf/11-test.toml: pool.servers: expected a table ([pool.servers]), got an array"),
    ("pool-not-table", "pool = 1", "conf/11-test.toml: pool: expected tables ([pool.NAME]), got 1"),
    ("global-not-table", "global = 1",
     "conf/11-test.toml: global: expected a table ([global]), got 1"),
    ("syntax", "[global\nworkers = 1",
     "conf/11-test.toml: TOML syntax error: Expected ']' at the end of a table declaration"
     " (at line 1, column 8)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in SHAPE_ERRORS], ids=[c[0] for c in SHAPE_ERRORS]
)
def test_shape_problem(text: str, expected: str) -> None:
    assert problems(BASE, text) == [expected]


VALID = [
    ("tls-generated-only", '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}'),
    ("tls-cert-dir-missing",
     '[[listener]]\nname = "s"\nbind = ":443"\ntls = { cert_dir = "/nonexistent/live" }'),
    ("redirect-with-port", NEW + 'redirect_https = true\n'
     "redirect_port = 8443"),
    ("v4-v6-any-apart", '[[listener]]\nname = "b"\nbind = ["[::]:81", "127.0.0.1:81"]'),
    ("same-port-other-address", '[[listener]]\nname = "b"\nbind = ["127.0.0.1:81"]\n'
     '[[listener]]\nname = "c"\nbind = ["127.0.0.2:81"]'),
    ("same-host-other-listener",
     '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}\n'
     '[[route]]\nhost = "a.example"\nlisteners = ["http"]\nredirect = "https://a.example/"\n'
     '[[route]]\nhost = "a.example"\npool = "web"'),
    ("exact-and-wildcard", '[[route]]\nhost = "*.example.com"\npool = "web"\n'
     '[[route]]\nhost = "a.example.com"\npool = "web"'),
    ("specific-after-any", '[[route]]\npool = "web"\n[[route]]\nhost = "a.example"\npool = "web"'),
    ("longer-path-after", '[[route]]\npool = "web"\n[[route]]\npath = "/api/"\npool = "web"'),
    ("pp-off-with-trusted", NEW + 'proxy_protocol = { trusted = ["10.0.0.0/8"] }'),
    ("respond-empty-204", '[[route]]\nrespond = { status = 204 }'),
    ("redirect-path", '[[route]]\nredirect = "/elsewhere"'),
    ("host-ip", '[[route]]\nhost = ["192.0.2.1", "[2001:DB8::1]"]\npool = "web"'),
    ("workers-auto", '[global]\nworkers = "auto"'),
    ("durations-as-numbers", "[global]\nheader_timeout = 2.5\nshutdown_timeout = 0"),
]  # fmt: skip


@pytest.mark.parametrize("snippet", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid(snippet: str) -> None:
    load(BASE + "\n" + snippet + "\n")


def test_no_listeners() -> None:
    assert problems('[pool.web]\nservers = ["10.0.0.5:80"]') == [
        'listener: no listeners are defined (add one: [[listener]] name = "http", bind = [":80"])'
    ]


def test_three_errors_three_problems() -> None:
    text = (
        BASE
        + '[global]\nworkers = "many"\n'
        + '[[route]]\nhost = "example.com:443"\npool = "api"\n'
    )
    found = problems(text)
    assert found == [
        f'{FILE}: global.workers: expected an integer >= 1 or "auto", got "many"',
        f'{FILE}: route[0].host: "example.com:443": no port in host (write "example.com"; '
        "pick ports with the route's listeners)",
        f'{FILE}: route[0].pool: no pool named "api" (defined pools: web)',
    ]
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value).count("\n") == 2


def test_allowed_keys_are_the_dataclass_fields() -> None:
    """Field name = TOML key: a field added to config.py must be read here too."""
    from revproxy import config_load as cl

    def fields(cls: type, *skip: str) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - set(skip)

    assert set(cl._GLOBAL_KEYS) == fields(Global)
    assert set(cl._LISTENER_KEYS) == fields(Listener, "source")
    assert set(cl._TLS_KEYS) == fields(ListenerTLS)
    assert set(cl._CERT_KEYS) == fields(CertPair)
    assert set(cl._PROXY_PROTOCOL_KEYS) == fields(ProxyProtocolIn)
    assert set(cl._ROUTE_KEYS) == fields(Route, "index", "source")
    assert set(cl._RESPOND_KEYS) == fields(Respond)
    assert set(cl._POOL_KEYS) == fields(Pool, "name", "source")
    assert set(cl._SERVER_KEYS) == fields(Server, "port")
    assert set(cl._TIMEOUT_KEYS) == fields(Timeouts)


# --- a full config, every key -------------------------------------------------------------

FULL = """
[global]
workers = 4
access_log = "logs/access.log"
access_log_format = "json"
http1_parser = "h11"
shutdown_timeout = "1m30s"
header_timeout = "500ms"
keepalive_timeout = 75
max_header_size = "32k"
max_body_size = "1g"
state_dir = "state"

[[listener]]
name = "http"
bind = [":80", "[::]:80"]
redirect_https = true
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]
proxy_protocol = { mode = "optional", trusted = ["10.0.0.0/8"], timeout = "3s" }
forwarded = true

[[listener]]
name = "https"
bind = ["127.0.0.1:8443", "[::1]:8443"]
tls = { cert_dir = "/etc/letsencrypt/live", unknown_sni = "reject", alpn = ["h2", "http/1.1"] }

[[listener]]
name = "pg"
bind = "localhost:5432"
mode = "tcp"
pool = "pg"

[[route]]
host = ["Example.com", "*.example.com"]
path = "/api/"
pool = "web"
listeners = ["https"]

[[route]]
host = "old.example"
redirect = "https://example.org/"
redirect_status = 301

[[route]]
respond = { status = 404, body = "not here", content_type = "text/html" }

[pool.web]
servers = [
    "10.0.0.10:8080",
    { address = "App.internal:8080", weight = 2, backup = true, name = "app1", max_conns = 100 },
]
balance = "leastconn"
timeouts = { connect = "2s", response = "30s", idle = "1m" }
send_proxy = "v2"
hide_headers = ["X-Debug", "x-powered-by"]
server_header = "edge"
resolve_interval = "10s"
keepalive = 8

[pool.pg]
servers = ["[::1]:5432"]
"""


def test_full_config_round_trip(tmp_path: Path) -> None:
    net = ipaddress.ip_network
    config = load_config_text([("conf/50-full.toml", FULL)], base_dir=tmp_path)
    source = "conf/50-full.toml"
    assert config == Config(
        global_=Global(
            workers=4,
            access_log=str(tmp_path / "logs/access.log"),
            access_log_format="json",
            http1_parser="h11",
            shutdown_timeout=90.0,
            header_timeout=0.5,
            keepalive_timeout=75.0,
            max_header_size=32768,
            max_body_size=1 << 30,
            state_dir=tmp_path / "state",
        ),
        listeners=(
            Listener(
                name="http",
                bind=(Bind(host="", port=80), Bind(host="::", port=80)),
                redirect_https=True,
                trusted_proxies=(net("10.0.0.0/8"), net("192.0.2.1/32")),
                proxy_protocol=ProxyProtocolIn(
                    mode="optional", trusted=(net("10.0.0.0/8"),), timeout=3.0
                ),
                forwarded=True,
                source=source,
            ),
            Listener(
                name="https",
                bind=(Bind(host="127.0.0.1", port=8443), Bind(host="::1", port=8443)),
                tls=ListenerTLS(
                    cert_dir=Path("/etc/letsencrypt/live"),
                    unknown_sni="reject",
                    alpn=("h2", "http/1.1"),
                ),
                source=source,
            ),
            Listener(
                name="pg",
                bind=(Bind(host="localhost", port=5432),),
                mode="tcp",
                pool="pg",
                source=source,
            ),
        ),
        routes=(
            Route(
                host=("example.com", "*.example.com"),
                path="/api/",
                pool="web",
                listeners=("https",),
                index=0,
                source=source,
            ),
            Route(
                host=("old.example",),
                redirect="https://example.org/",
                redirect_status=301,
                index=1,
                source=source,
            ),
            Route(
                respond=Respond(status=404, body="not here", content_type="text/html"),
                index=2,
                source=source,
            ),
        ),
        pools=(
            Pool(
                name="web",
                servers=(
                    Server(address="10.0.0.10", port=8080),
                    Server(
                        address="app.internal",
                        port=8080,
                        weight=2,
                        backup=True,
                        name="app1",
                        max_conns=100,
                    ),
                ),
                balance="leastconn",
                timeouts=Timeouts(connect=2.0, response=30.0, idle=60.0),
                send_proxy="v2",
                hide_headers=("x-debug", "x-powered-by"),
                server_header="edge",
                resolve_interval=10.0,
                keepalive=8,
                source=source,
            ),
            Pool(name="pg", servers=(Server(address="::1", port=5432),), source=source),
        ),
        files=(Path("conf/50-full.toml"),),
    )


def test_defaults() -> None:
    config = load(BASE)
    assert config.global_ == Global()
    assert config.listeners == (Listener(name="http", bind=(Bind(host="", port=80),), source=FILE),)
    assert config.pools == (
        Pool(name="web", servers=(Server(address="10.0.0.10", port=8080),), source=FILE),
    )
    assert config.routes == ()


def test_summary() -> None:
    text = summary(load_config_text([("conf/50-full.toml", FULL)]))
    lines = text.splitlines()
    assert lines[0] == "files: conf/50-full.toml"
    assert "workers 4" in lines[1] and "max body size 1g" in lines[1]
    assert (
        "  http: http on :80, [::]:80; redirects to https on port 8443; "
        "PROXY protocol optional from 10.0.0.0/8; "
        "trusts X-Forwarded-For from 10.0.0.0/8, 192.0.2.1/32; adds Forwarded"
    ) in lines
    assert (
        "  https: http on 127.0.0.1:8443, [::1]:8443; tls (certificates in "
        "/etc/letsencrypt/live; unknown sni: reject; alpn: h2, http/1.1)"
    ) in lines
    assert "  pg: tcp on localhost:5432; to pool pg" in lines
    routes = [line for line in lines if " -> " in line]
    assert routes == [
        "  1. example.com /api/ -> pool web (listeners: https)  [route[0] in conf/50-full.toml]",
        "  2. old.example / -> redirect 301 https://example.org/  [route[1] in conf/50-full.toml]",
        "  3. *.example.com /api/ -> pool web (listeners: https)  [route[0] in conf/50-full.toml]",
        "  4. (any host) / -> respond 404  [route[2] in conf/50-full.toml]",
    ]
    assert "  web: leastconn; sends PROXY v2" in lines
    assert "    10.0.0.10:8080: weight 1" in lines
    assert "    app.internal:8080 (app1): weight 2, backup, max_conns 100" in lines
    assert "    [::1]:5432: weight 1" in lines


def test_summary_match_order() -> None:
    """Exact hosts before wildcards (longer wildcard first) before any host; then longer
    paths; then config order."""
    text = BASE + "".join(
        f'[[route]]\n{host}path = "{path}"\nrespond = {{ status = {200 + i} }}\n'
        for i, (host, path) in enumerate(
            [
                ("", "/"),
                ('host = "*.example.com"\n', "/"),
                ('host = "*.a.example.com"\n', "/"),
                ('host = "b.example.com"\n', "/"),
                ('host = "a.example.com"\n', "/x/"),
                ("", "/static/"),
                ('host = "c.example.com"\n', "/"),
            ]
        )
    )
    lines = [line for line in summary(load(text)).splitlines() if "-> respond" in line]
    assert [line.split("  [")[0] for line in lines] == [
        "  1. a.example.com /x/ -> respond 204",
        "  2. b.example.com / -> respond 203",
        "  3. c.example.com / -> respond 206",
        "  4. *.a.example.com / -> respond 202",
        "  5. *.example.com / -> respond 201",
        "  6. (any host) /static/ -> respond 205",
        "  7. (any host) / -> respond 200",
    ]


def test_summary_marks_unused_pools() -> None:
    assert "  web: roundrobin; not used by any route or listener" in summary(load(BASE))


# --- several files ------------------------------------------------------------------------


def write(conf: Path, files: dict[str, str]) -> Path:
    conf.mkdir(exist_ok=True)
    for name, text in files.items():
        (conf / name).write_text(text, encoding="utf-8")
    return conf


def load_problems(conf: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    return [str(problem) for problem in caught.value.problems]


def test_files_merge_in_name_order(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf",
        {
            "30-routes.toml": '[[route]]\nhost = "b.example"\npool = "web"\n'
            '[[listener]]\nname = "alt"\nbind = ":8080"\n',
            "10-global.toml": '[global]\nworkers = 2\n[[listener]]\nname = "http"\nbind = ":80"\n',
            "20-pools.toml": '[global]\naccess_log = "off"\n[pool.web]\nservers = ["10.0.0.1:80"]\n'
            '[[route]]\nhost = "a.example"\npool = "web"\n',
            "README.md": "not config",
            ".#10-global.toml": "emacs lock, not config",
        },
    )
    config = load_config(conf)
    assert config.files == tuple(
        conf.resolve() / name for name in ("10-global.toml", "20-pools.toml", "30-routes.toml")
    )
    assert config.global_.workers == 2
    assert config.global_.access_log == "off"
    assert [lst.name for lst in config.listeners] == ["http", "alt"]
    assert [lst.source for lst in config.listeners] == [
        "conf/10-global.toml",
        "conf/30-routes.toml",
    ]
    assert [(r.host, r.index, r.source) for r in config.routes] == [
        (("a.example",), 0, "conf/20-pools.toml"),
        (("b.example",), 1, "conf/30-routes.toml"),
    ]
    assert config.pool("web").source == "conf/20-pools.toml"


def test_conflicts_between_files(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf",
        {
            "10-a.toml": '[global]\nworkers = 2\n[[listener]]\nname = "http"\nbind = ":80"\n'
            '[pool.web]\nservers = ["10.0.0.1:80"]\n',
            "20-b.toml": '[global]\nworkers = 3\n[[listener]]\nname = "http"\nbind = ":81"\n'
            '[pool.web]\nservers = ["10.0.0.2:80"]\n',
        },
    )
    assert load_problems(conf) == [
        "conf/20-b.toml: global.workers: set again (first set in conf/10-a.toml)",
        "conf/20-b.toml: pool.web: pool defined again (first in conf/10-a.toml)",
        'conf/20-b.toml: listener[1].name: duplicate listener name "http" '
        "(first used by listener[0] in conf/10-a.toml)",
    ]


def test_bind_clash_between_files(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf",
        {
            "10-a.toml": '[[listener]]\nname = "http"\nbind = [":80"]\n',
            "20-b.toml": '[[listener]]\nname = "other"\nbind = ["[::1]:80"]\n',
        },
    )
    assert load_problems(conf) == [
        'conf/20-b.toml: listener[1].bind[0]: [::1]:80 clashes with :80 of listener "http" '
        "(listener[0].bind[0] in conf/10-a.toml)"
    ]


def test_syntax_error_names_file_and_skips_cross_checks(tmp_path: Path) -> None:
    """The file defining pool "web" is broken: its syntax error is reported, but not the
    route naming "web" nor the missing listeners, which would only be noise."""
    conf = write(
        tmp_path / "conf",
        {
            "10-sites.toml": '[[route]]\npool = "web"\n',
            "20-pools.toml": '[pool.web]\nservers = ["10.0.0.1:80"]\nbalance =\n',
            "30-more.toml": '[global]\nworkers = "many"\n',
        },
    )
    found = load_problems(conf)
    assert len(found) == 2
    assert found[0].startswith("conf/20-pools.toml: TOML syntax error: ")
    assert "(at line 3, column 10)" in found[0]
    assert (
        found[1]
        == 'conf/30-more.toml: global.workers: expected an integer >= 1 or "auto", got "many"'
    )


def test_empty_and_missing_directories(tmp_path: Path) -> None:
    assert load_problems(write(tmp_path / "conf", {})) == [
        f"{(tmp_path / 'conf').resolve()}: no *.toml files in it"
    ]
    assert load_problems(tmp_path / "nope") == [f"{(tmp_path / 'nope').resolve()}: not a directory"]


def test_unreadable_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "conf", {"10-a.toml": BASE})
    (conf / "20-b.toml").write_bytes(b"\xff\xfe not utf-8")
    found = load_problems(conf)
    assert len(found) == 1 and found[0].startswith("conf/20-b.toml: cannot read: ")


def test_relative_paths_resolve_against_conf_dir(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf",
        {
            "10-a.toml": BASE + '[global]\nstate_dir = "../state"\naccess_log = "access.log"\n'
            '[[listener]]\nname = "s"\nbind = ":443"\ntls = { cert_dir = "live" }\n'
        },
    )
    config = load_config(conf)
    assert config.global_.state_dir == conf.resolve() / "../state"
    assert config.global_.access_log == str(conf.resolve() / "access.log")
    tls = config.listener("s").tls
    assert tls is not None and tls.cert_dir == conf.resolve() / "live"


# --- certificates -------------------------------------------------------------------------


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_listener(certs: str) -> str:
    return f'[[listener]]\nname = "s"\nbind = ":443"\ntls = {{ certs = [{certs}] }}\n'


def test_cert_pairs_load(tmp_path: Path) -> None:
    make_cert(tmp_path, "a.example")
    make_cert(tmp_path, "b.example")
    conf = write(
        tmp_path / "conf",
        {
            "10-a.toml": BASE
            + tls_listener(
                '{ cert = "../a.example.pem", key = "../a.example.key" }, '
                f'{{ cert = "{tmp_path / "b.example.pem"}", key = "{tmp_path / "b.example.key"}" }}'
            )
        },
    )
    tls = load_config(conf).listener("s").tls
    assert tls is not None
    assert tls.certs == (
        CertPair(cert=conf.resolve() / "../a.example.pem", key=conf.resolve() / "../a.example.key"),
        CertPair(cert=tmp_path / "b.example.pem", key=tmp_path / "b.example.key"),
    )


def test_cert_problems_name_the_pair(tmp_path: Path) -> None:
    a_cert, a_key = make_cert(tmp_path, "a.example")
    _, b_key = make_cert(tmp_path, "b.example")
    found = problems(
        BASE
        + tls_listener(
            f'{{ cert = "{a_cert}", key = "{a_key}" }}, '
            f'{{ cert = "{a_cert}", key = "{b_key}" }}, '
            f'{{ cert = "{tmp_path / "missing.pem"}", key = "{a_key}" }}'
        )
    )
    assert len(found) == 2, found
    assert found[0].startswith(f"{FILE}: listener[1].tls.certs[1]: ")
    assert str(b_key) in found[0]  # the colleague's reason: which key does not match
    assert found[1].startswith(f"{FILE}: listener[1].tls.certs[2]: ")
    assert "missing.pem" in found[1]


# --- single values ------------------------------------------------------------------------

DURATIONS = [
    ("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0),
    ("1h2m3s", 3723.0), ("1.5s", 1.5), ("0s", 0.0), (5, 5.0), (0.25, 0.25), (0, 0.0),
]  # fmt: skip
BAD_DURATIONS = [
    ("30", '"30" has no unit (write "30s")'),
    ("5 min", '"5 min" is not a duration (write e.g. "500ms", "30s", "5m" or "1m30s")'),
    ("1m 30s", '"1m 30s" is not a duration'),
    ("-1s", '"-1s" is not a duration'),
    ("", '"" is not a duration'),
    ("1d", '"1d" is not a duration'),
    (-1, "a duration cannot be negative, got -1"),
    (True, 'expected a duration like "30s" or a number of seconds, got true'),
    ([1], "got an array"),
    (float("inf"), "inf is not a duration"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "seconds"), DURATIONS)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(("value", "reason"), BAD_DURATIONS)
def test_parse_duration_errors(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert reason in str(caught.value)


SIZES = [
    (16384, 16384), (0, 0), ("0", 0), ("512", 512), ("16k", 16384), ("16K", 16384),
    ("16kb", 16384), ("16KiB", 16384), ("1m", 1 << 20), ("1g", 1 << 30), ("100b", 100),
]  # fmt: skip
BAD_SIZES = [
    ("16 kb", '"16 kb" is not a size (write e.g. 16384, "16k", "1m" or "1g")'),
    ("1.5m", '"1.5m" is not a size'),
    ("1t", '"1t" is not a size'),
    ("", '"" is not a size'),
    (-1, "a size cannot be negative, got -1"),
    (1.5, "expected a size"),
    (False, "got false"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "size"), SIZES)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(("value", "reason"), BAD_SIZES)
def test_parse_size_errors(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert reason in str(caught.value)


BINDS = [
    (":443", "", 443),
    ("127.0.0.1:8443", "127.0.0.1", 8443),
    ("[::1]:8443", "::1", 8443),
    ("[::]:80", "::", 80),
    ("[2001:DB8:0::1]:80", "2001:db8::1", 80),
    ("localhost:80", "localhost", 80),
    ("LB.Internal:80", "lb.internal", 80),
    ("0.0.0.0:65535", "0.0.0.0", 65535),
    ("a:1", "a", 1),
]
BAD_BINDS = [
    ("127.0.0.1", '"127.0.0.1" has no port (write "127.0.0.1:8080")'),
    ("localhost", '"localhost" has no port (write "localhost:8080")'),
    ("8443", '"8443" has no host (write ":8443" for every address, or "127.0.0.1:8443")'),
    ("*:443", '"*:443": write ":443" to listen on every address'),
    ("a:0", '"a:0": port 0 is out of range (1 to 65535)'),
    (":65536", '":65536": port 65536 is out of range (1 to 65535)'),
    ("a:http", '"a:http": port "http" is not a number'),
    ("a:", '"a:" has no port number after the colon'),
    ("[::1:80", '"[::1:80" has a "[" without its "]"'),
    ("::1]:80", '"::1]:80" has a "]" without its "["'),
    ("[::1]80", '"[::1]80": expected ":PORT" after "]"'),
    ("[::1]", '"[::1]" has no port (write "[::1]:8080")'),
    ("[127.0.0.1]:80", '"[127.0.0.1]:80": brackets are for IPv6 addresses only '
     '(write "127.0.0.1:80")'),
    ("::1", '"::1": IPv6 addresses go in brackets, before the port (write "[::1]:8080")'),
    ("fe80::1:443", '(write "[fe80::1]:443" or "[fe80::1:443]:8080")'),
    ("10.0.0.256:80", '"10.0.0.256:80": "10.0.0.256" is not a valid IPv4 address'),
    ("a..b:80", '"a..b:80": "a..b" is not a valid host name'),
    ("-a:80", '"-a" is not a valid host name'),
    ("a b:80", '"a b:80" contains white space'),
    ("", 'empty address (write e.g. "127.0.0.1:8080")'),
]  # fmt: skip


@pytest.mark.parametrize(("value", "host", "port"), BINDS)
def test_parse_bind(value: str, host: str, port: int) -> None:
    assert parse_bind(value) == Bind(host=host, port=port)


@pytest.mark.parametrize(("value", "reason"), BAD_BINDS)
def test_parse_bind_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_bind(value)
    assert reason in str(caught.value)


def test_bind_str_round_trips() -> None:
    for value in (":443", "127.0.0.1:8443", "[::1]:8443", "localhost:80"):
        assert str(parse_bind(value)) == value


SERVERS = [
    ("10.0.0.10:8080", ("10.0.0.10", 8080)),
    ("[::1]:8080", ("::1", 8080)),
    ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
    ("app.internal:8080", ("app.internal", 8080)),
    ("App_1.Internal:443", ("app_1.internal", 443)),
]
BAD_SERVERS = [
    ("10.0.0.5", '"10.0.0.5" has no port (write "10.0.0.5:8080")'),
    ("app.internal", '"app.internal" has no port (write "app.internal:8080")'),
    (":8080", '":8080" has no host (write e.g. "10.0.0.5:8080")'),
    ("8080", '"8080" is only a port (write e.g. "10.0.0.5:8080")'),
    ("[::1]", '"[::1]" has no port (write "[::1]:8080")'),
    ("http://app:8080/x", 'is a URL; write only host and port (write "app:8080")'),
    ("app:99999", "port 99999 is out of range"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), SERVERS)
def test_parse_server(value: str, expected: tuple[str, int]) -> None:
    assert parse_server(value) == expected


@pytest.mark.parametrize(("value", "reason"), BAD_SERVERS)
def test_parse_server_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_server(value)
    assert reason in str(caught.value)


HOSTS = [
    ("Example.COM", "example.com"),
    ("*.Example.com", "*.example.com"),
    ("192.0.2.1", "192.0.2.1"),
    ("[2001:DB8::1]", "[2001:db8::1]"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("localhost", "localhost"),
]
BAD_HOSTS = [
    ("example.com:8080", 'no port in host (write "example.com";'),
    ("[::1]:443", 'no port in host (write "[::1]";'),
    ("*", "leave host out to match any host"),
    ("", "leave host out to match any host"),
    ("*.", '"*" may only be the whole first label'),
    ("**.example.com", '"*" may only be the whole first label'),
    ("a.*", '"*" may only be the whole first label'),
    ("example.com.", 'no trailing dot (write "example.com")'),
    ("exa mple.com", "is not a valid host name"),
    ("[example.com]", "is not a bracketed IPv6 address"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), HOSTS)
def test_parse_host_pattern(value: str, expected: str) -> None:
    assert parse_host_pattern(value) == expected


@pytest.mark.parametrize(("value", "reason"), BAD_HOSTS)
def test_parse_host_pattern_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_host_pattern(value)
    assert reason in str(caught.value)


def test_parse_network() -> None:
    assert parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("192.0.2.1") == ipaddress.ip_network("192.0.2.1/32")
    assert parse_network("2001:db8::/32") == ipaddress.ip_network("2001:db8::/32")
    with pytest.raises(ValueError, match=r'"10.0.0.1/8" has host bits set \(write "10.0.0.0/8"'):
        parse_network("10.0.0.1/8")
    with pytest.raises(ValueError, match="is not an IP address or CIDR network"):
        parse_network("lb.internal")
