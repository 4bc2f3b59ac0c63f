"""conf/*.toml → Config: every validation, table-driven (like Caddy's addresses_test.go).

Each error case is a TOML snippet added to a small valid config, and the one problem it must
produce, written as "key path: reason" so a test failure shows the operator's view.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from revproxy.certs.files import cert_pair_problem
from revproxy.config import limits as config_limits
from revproxy.config import listener as config_listener
from revproxy.config import load as config_load
from revproxy.config import pool as config_pool
from revproxy.config import route as config_route
from revproxy.config.load import load_config, load_config_text, summary
from revproxy.config.model import (
    Acme,
    Admin,
    BasicAuth,
    Bind,
    CertPair,
    Config,
    ConnLimit,
    Global,
    H2Settings,
    Health,
    Limit,
    Listener,
    ListenerTLS,
    Passive,
    Pool,
    PoolTLS,
    ProxyProtocolIn,
    Respond,
    Route,
    Server,
    Timeouts,
)
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
        load_config_text(files, check_cert_pair=cert_pair_problem)
    return [str(problem) for problem in caught.value.problems]


def load(*texts: str) -> Config:
    files = [(f"conf/{10 + i}-test.toml", text) for i, text in enumerate(texts)]
    return load_config_text(files, check_cert_pair=cert_pair_problem)


# --- one problem each ---------------------------------------------------------------------

NEW = '[[listener]]\nname = "b"\nbind = ":81"\n'  # listener[1]
TLS = '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}\n'  # listener[1], with TLS
PASS = '[[route]]\npassthrough = true\nsni = "a.example"\npool = "web"\n'
API = '[pool.api]\nservers = ["10.0.0.5:80"]\n'

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
     'global.access_log_format: expected one of "text", "json", "combined" or a template'),
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
     'listener[1].mode: expected one of "http", "tcp", "forward", "socks5", "tunnel", got "udp"'),
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
    ("tcp-tls-alpn", NEW + 'mode = "tcp"\npool = "web"\ntls = { alpn = ["http/1.1"] }',
     "listener[1].tls.alpn: not on a tcp listener (ALPN would announce HTTP to the client)"),
    ("tcp-tls-client-ca-missing",
     NEW + 'mode = "tcp"\npool = "web"\ntls = { client_ca = "/nonexistent/ca.pem" }',
     "listener[1].tls.client_ca: /nonexistent/ca.pem does not exist"),
    ("tcp-tls-client-cert-no-ca",
     NEW + 'mode = "tcp"\npool = "web"\ntls = { client_cert = "required" }',
     "listener[1].tls.client_cert: needs client_ca"),
    ("tcp-tls-redirect-nowhere",
     NEW + 'redirect_https = true\n[[listener]]\nname = "pg"\nbind = ":5432"\n'
     'mode = "tcp"\npool = "web"\ntls = {}',
     "listener[1].redirect_https: there is no TLS listener to redirect to"),
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
     "route[0]: needs one of pool, redirect, respond or static"),
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
     "pool.api.timeouts.read: unknown key (allowed keys: connect, response, idle, tunnel)"),
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
    ("pool-unknown", '[pool.api]\nservers = ["10.0.0.5:80"]\nhealthcheck = {}',
     'pool.api.healthcheck: unknown key (did you mean "health"? allowed keys: servers, balance,'),
    ("pool-name", '[pool."my pool"]\nservers = ["10.0.0.5:80"]',
     'pool.my pool: pool names are letters, digits, "_", "-" and "."'),
    # --- [global]: watch, pid_file, h2 ---
    ("watch", '[global]\nwatch = "yes"', 'global.watch: expected true or false, got "yes"'),
    ("pid-file-type", "[global]\npid_file = 1",
     "global.pid_file: expected a non-empty string, got 1"),
    ("pid-file-dir", '[global]\npid_file = "/tmp"',
     'global.pid_file: /tmp is a directory (name the file, e.g. "/run/revproxy.pid")'),
    ("h2-type", "[global]\nh2 = 1", "global.h2: expected a table, got 1"),
    ("h2-unknown", "[global.h2]\nmax_streams = 5",
     'global.h2.max_streams: unknown key (did you mean "max_concurrent_streams"?'),
    ("h2-streams-zero", "[global.h2]\nmax_concurrent_streams = 0",
     "global.h2.max_concurrent_streams: expected an integer from 1 to 2147483647, got 0"),
    ("h2-streams-big", "[global.h2]\nmax_concurrent_streams = 2147483648",
     "global.h2.max_concurrent_streams: expected an integer from 1 to 2147483647, got 2147483648"),
    ("h2-window-negative", "[global.h2]\ninitial_window_size = -1",
     "global.h2.initial_window_size: expected an integer from 0 to 2147483647, got -1"),
    ("h2-window-big", "[global.h2]\ninitial_window_size = 2147483648",
     "global.h2.initial_window_size: expected an integer from 0 to 2147483647, got 2147483648"),
    ("h2-frame-small", "[global.h2]\nmax_frame_size = 16383",
     "global.h2.max_frame_size: expected an integer from 16384 to 16777215, got 16383"),
    ("h2-frame-big", "[global.h2]\nmax_frame_size = 16777216",
     "global.h2.max_frame_size: expected an integer from 16384 to 16777215, got 16777216"),
    ("h2-header-list-small", '[global.h2]\nmax_header_list_size = "512"',
     'global.h2.max_header_list_size: must be at least 1024 bytes, got "512"'),
    ("h2-header-list-words", '[global.h2]\nmax_header_list_size = "lots"',
     'global.h2.max_header_list_size: "lots" is not a size'),
    ("h2-header-list-huge", '[global.h2]\nmax_header_list_size = "8g"',
     'global.h2.max_header_list_size: must be at most 4294967295 bytes, got "8g"'),
    ("h2-resets-zero", "[global.h2]\nmax_resets_per_second = 0",
     "global.h2.max_resets_per_second: expected an integer >= 1, got 0"),
    ("h2-control-frames-zero", "[global.h2]\nmax_control_frames_per_second = 0",
     "global.h2.max_control_frames_per_second: expected an integer >= 1, got 0"),
    ("h2-control-frames-words", '[global.h2]\nmax_control_frames_per_second = "lots"',
     'global.h2.max_control_frames_per_second: expected an integer >= 1, got "lots"'),
    ("h2-ping-zero", '[global.h2]\nping_interval = "0s"',
     'global.h2.ping_interval: must be more than zero, got "0s"'),
    ("h2-ping-timeout-unit", '[global.h2]\nping_timeout = "10"',
     'global.h2.ping_timeout: "10" has no unit (write "10s")'),
    # --- [admin] ---
    ("admin-unknown", "[admin]\nport = 8404",
     "admin.port: unknown key (allowed keys: socket, bind, auth)"),
    ("admin-socket-type", "[admin]\nsocket = true",
     "admin.socket: expected a non-empty string, got true"),
    ("admin-socket-long", f'[admin]\nsocket = "/{"a" * 120}"',
     f"admin.socket: /{'a' * 120} is 121 bytes long; a Unix socket path holds at most 107"),
    ("admin-socket-dir", '[admin]\nsocket = "/tmp"', "admin.socket: /tmp is a directory"),
    ("admin-bind-no-port", '[admin]\nbind = "127.0.0.1"',
     'admin.bind: "127.0.0.1" has no port (write "127.0.0.1:8080")'),
    ("admin-bind-array", '[admin]\nbind = [":8404"]',
     "admin.bind: expected a string, got an array"),
    ("admin-bind-clash", '[admin]\nbind = "127.0.0.1:80"',
     f'admin.bind: 127.0.0.1:80 clashes with :80 of listener "http" (listener[0].bind in {FILE})'),
    ("admin-auth-no-bind", '[admin]\nauth = { user = "ops", password = "s3cret" }',
     "admin.auth: protects the HTTP address, and there is none (set bind, e.g. "
     'bind = "127.0.0.1:8404"; the socket is guarded by its file mode)'),
    ("admin-auth-no-password", '[admin]\nbind = "127.0.0.1:8404"\nauth = { user = "ops" }',
     "admin.auth.password: required (the password HTTP clients send)"),
    ("admin-auth-empty-user",
     '[admin]\nbind = "127.0.0.1:8404"\nauth = { user = "", password = "x" }',
     'admin.auth.user: expected a non-empty string, got ""'),
    ("admin-auth-colon",
     '[admin]\nbind = "127.0.0.1:8404"\nauth = { user = "a:b", password = "x" }',
     'admin.auth.user: must not contain ":" (RFC 7617'),
    ("admin-auth-string", '[admin]\nbind = "127.0.0.1:8404"\nauth = "ops:x"',
     'admin.auth: expected a table, got "ops:x"'),
    ("admin-auth-unknown",
     '[admin]\nbind = "127.0.0.1:8404"\nauth = { user = "a", password = "b", realm = "x" }',
     "admin.auth.realm: unknown key (allowed keys: user, password)"),
    # --- [acme] ---
    ("acme-unknown", '[acme]\nemial = "a@example.com"',
     'acme.emial: unknown key (did you mean "email"?'),
    ("acme-both", '[acme]\nwebroot = "/var/www/acme"\nforward = "127.0.0.1:8081"',
     "acme.forward: set one of webroot or forward, not both (webroot: challenge answers are "
     "files certbot --webroot writes there; forward: challenges go to certbot --standalone)"),
    ("acme-forward-no-port", '[acme]\nforward = "127.0.0.1"',
     'acme.forward: "127.0.0.1" has no port (write "127.0.0.1:8080")'),
    ("acme-forward-url", '[acme]\nforward = "http://127.0.0.1:8081/"',
     'acme.forward: "http://127.0.0.1:8081/" is a URL; write only host and port'),
    ("acme-forward-type", "[acme]\nforward = 8081", "acme.forward: expected a string, got 8081"),
    ("acme-forward-loop", '[acme]\nforward = "127.0.0.1:80"',
     "acme.forward: 127.0.0.1:80 is revproxy's own :80 of listener \"http\" "
     f"(listener[0].bind in {FILE}): challenges would come back here"),
    ("acme-webroot-file", '[acme]\nwebroot = "/dev/null"',
     "acme.webroot: /dev/null is not a directory"),
    ("acme-email", '[acme]\nemail = "admin"',
     'acme.email: "admin" is not an email address (write e.g. "admin@example.com")'),
    ("acme-email-type", "[acme]\nemail = 1", "acme.email: expected a string, got 1"),
    ("acme-certbot-empty", '[acme]\ncertbot = ""',
     'acme.certbot: expected a non-empty string, got ""'),
    ("acme-certbot-args", '[acme]\ncertbot = "certbot --staging"',
     'acme.certbot: "certbot --staging": write a command name or path, no arguments'),
    ("acme-server", '[acme]\nserver = "acme.example/directory"',
     'acme.server: "acme.example/directory" is not an ACME directory URL'),
    ("acme-config-dir-type", "[acme]\nconfig_dir = 5",
     "acme.config_dir: expected a non-empty string, got 5"),
    ("acme-logs-dir-file", '[acme]\nlogs_dir = "/dev/null"',
     "acme.logs_dir: /dev/null is not a directory"),
    # --- [[listener]]: acme, h2c, max_conns ---
    ("listener-acme-type", NEW + 'acme = "on"',
     'listener[1].acme: expected true or false, got "on"'),
    ("listener-acme-tls", NEW + "tls = {}\nacme = true",
     "listener[1].acme: only on plain http listeners: ACME HTTP-01 challenges come over plain "
     "HTTP (to port 80); set acme on that listener"),
    ("listener-acme-tcp", NEW + 'mode = "tcp"\npool = "web"\nacme = true',
     'listener[1].acme: only for mode = "http" (a tcp listener relays bytes untouched)'),
    ("listener-h2c-tls", NEW + "tls = {}\nh2c = true",
     "listener[1].h2c: only on plain http listeners: h2c is HTTP/2 without TLS "
     '(for HTTP/2 over TLS, add "h2" to tls.alpn)'),
    ("listener-h2c-tcp", NEW + 'mode = "tcp"\npool = "web"\nh2c = true',
     'listener[1].h2c: only for mode = "http"'),
    ("listener-h2c-type", NEW + "h2c = 1", "listener[1].h2c: expected true or false, got 1"),
    ("listener-max-conns", NEW + "max_conns = 0",
     "listener[1].max_conns: expected an integer >= 1, got 0"),
    ("listener-max-conns-float", NEW + "max_conns = 1.5",
     "listener[1].max_conns: expected an integer >= 1, got 1.5"),
    # --- [[route]]: sni and passthrough ---
    ("sni-without-passthrough", '[[route]]\nsni = "a.example"\npool = "web"',
     "route[0].sni: only for passthrough routes (add passthrough = true to relay TLS "
     "connections for these names undecrypted; routes that end TLS match by host)"),
    ("sni-passthrough-false", '[[route]]\nsni = "a.example"\npassthrough = false\npool = "web"',
     "route[0].sni: only for passthrough routes"),
    ("passthrough-type", '[[route]]\npassthrough = "yes"\npool = "web"',
     'route[0].passthrough: expected true or false, got "yes"'),
    ("passthrough-no-sni", TLS + '[[route]]\npassthrough = true\npool = "web"',
     "route[0].sni: required on a passthrough route: the TLS server names it takes "
     '(write e.g. sni = ["legacy.example.com"])'),
    ("passthrough-empty-sni", TLS + '[[route]]\npassthrough = true\nsni = []\npool = "web"',
     "route[0].sni: must name at least one server name"),
    ("passthrough-no-pool", TLS + '[[route]]\npassthrough = true\nsni = "a.example"',
     "route[0].pool: required on a passthrough route (the servers that get the TLS bytes)"),
    ("passthrough-host", TLS + PASS + 'host = "a.example"',
     "route[0].host: not on a passthrough route: it never decrypts, so it sees no Host "
     "(name the TLS server names in sni)"),
    ("passthrough-path", TLS + PASS + 'path = "/api/"',
     "route[0].path: not on a passthrough route: it never decrypts, so it sees no path"),
    ("passthrough-redirect", TLS + PASS + 'redirect = "https://a.example/"',
     "route[0].redirect: not on a passthrough route: it relays bytes to its pool, never answers"),
    ("passthrough-respond", TLS + PASS + "respond = { status = 404 }",
     "route[0].respond: not on a passthrough route"),
    ("sni-ip", TLS + '[[route]]\npassthrough = true\nsni = "192.0.2.1"\npool = "web"',
     'route[0].sni: "192.0.2.1": SNI carries host names, never IP addresses (RFC 6066)'),
    ("sni-port", TLS + '[[route]]\npassthrough = true\nsni = ["a.example", "b.example:443"]\n'
     'pool = "web"', 'route[0].sni[1]: "b.example:443": no port in host (write "b.example";'),
    ("sni-twice", TLS + '[[route]]\npassthrough = true\nsni = ["a.example", "A.example"]\n'
     'pool = "web"', 'route[0].sni[1]: "a.example" is listed twice (also route[0].sni[0])'),
    ("sni-missing-pool", TLS + PASS.replace('"web"', '"legacy"'),
     'route[0].pool: no pool named "legacy" (defined pools: web)'),
    ("passthrough-no-tls-listener", PASS,
     "route[0].passthrough: there is no TLS listener to take connections from "
     "(passthrough routes apply to listeners with tls)"),
    ("passthrough-plain-listener", TLS + PASS + 'listeners = ["http"]',
     'route[0].listeners[0]: listener "http" has no tls; passthrough routes take TLS '
     "connections (name a listener with tls)"),
    ("passthrough-tcp-listener",
     '[[listener]]\nname = "pg"\nbind = ":5432"\nmode = "tcp"\npool = "web"\n'
     + PASS + 'listeners = ["pg"]',
     'route[0].listeners[0]: listener "pg" is a tcp listener; routes apply to TLS http '
     "listeners"),
    ("passthrough-missing-listener", TLS + PASS + 'listeners = ["https"]',
     'route[0].listeners[0]: no listener named "https" (defined listeners: http, s)'),
    ("passthrough-sni-clash", TLS + PASS + PASS,
     f'route[1].sni: "a.example" is already passed through on listener "s" by route[0] ({FILE})'),
    ("passthrough-sni-clash-named",
     TLS + PASS + 'listeners = ["s"]\n'
     '[[route]]\npassthrough = true\nsni = ["b.example", "A.example"]\npool = "web"',
     f'route[1].sni[1]: "a.example" is already passed through on listener "s" by route[0] '
     f"({FILE})"),
    ("host-route-passed-through",
     TLS + PASS + '[[route]]\nhost = ["b.example", "a.example"]\nlisteners = ["s"]\npool = "web"',
     f'route[1]: never used for host "a.example": passthrough route[0] ({FILE}) relays every '
     "TLS connection for it on its listeners"),
    ("host-route-passed-through-wildcard",
     TLS + '[[route]]\npassthrough = true\nsni = "*.example.com"\npool = "web"\n'
     '[[route]]\nhost = "a.example.com"\nlisteners = ["s"]\nrespond = {}',
     'route[1]: never used for host "a.example.com": passthrough route[0]'),
    # --- [pool.NAME]: tunnel, health, passive, slow_start, protocol, tls ---
    ("timeouts-tunnel", API + 'timeouts = { tunnel = "0s" }',
     'pool.api.timeouts.tunnel: must be more than zero, got "0s"'),
    ("health-type", API + "health = true", "pool.api.health: expected a table, got true"),
    ("health-unknown", API + 'health = { url = "/" }',
     "pool.api.health.url: unknown key (allowed keys: path, interval, timeout, rise, fall, "
     "expect, tcp, host)"),
    ("health-path", API + 'health = { path = "healthz" }',
     'pool.api.health.path: "healthz" must start with "/" (write "/healthz")'),
    ("health-path-type", API + "health = { path = 1 }",
     "pool.api.health.path: expected a string, got 1"),
    ("health-interval", API + 'health = { interval = "2" }',
     'pool.api.health.interval: "2" has no unit (write "2s")'),
    ("health-timeout-long", API + 'health = { interval = "2s", timeout = "2s" }',
     "pool.api.health.timeout: must be shorter than interval (2s): a check still waiting when "
     "the next is due would overlap it"),
    ("health-timeout-default-interval", API + 'health = { timeout = "5s" }',
     "pool.api.health.timeout: must be shorter than interval (2s, the default)"),
    ("health-interval-below-default-timeout", API + 'health = { interval = "500ms" }',
     "pool.api.health.interval: must be longer than timeout (1s, the default; or set a shorter "
     "timeout)"),
    ("health-timeout-bad-no-compare", API + 'health = { interval = "1s", timeout = "soon" }',
     'pool.api.health.timeout: "soon" is not a duration'),
    ("health-rise", API + "health = { rise = 0 }",
     "pool.api.health.rise: expected an integer >= 1, got 0"),
    ("health-fall", API + "health = { fall = -1 }",
     "pool.api.health.fall: expected an integer >= 1, got -1"),
    ("health-expect", API + 'health = { expect = "ok" }',
     'pool.api.health.expect: "ok": "ok" is not a status, range or class'),
    ("health-expect-range", API + 'health = { expect = "2xx,399-200" }',
     'pool.api.health.expect: "2xx,399-200": the range 399-200 goes down (write "200-399")'),
    ("health-expect-type", API + "health = { expect = 200 }",
     "pool.api.health.expect: expected a string, got 200"),
    ("health-host", API + 'health = { host = "*.example.com" }',
     'pool.api.health.host: "*.example.com": one host name, not a wildcard'),
    ("health-tcp-type", API + 'health = { tcp = "yes" }',
     'pool.api.health.tcp: expected true or false, got "yes"'),
    ("health-tcp-path", API + 'health = { tcp = true, path = "/healthz" }',
     "pool.api.health.path: only for HTTP checks (tcp = true only opens a connection)"),
    ("health-tcp-expect", API + 'health = { tcp = true, expect = "2xx" }',
     "pool.api.health.expect: only for HTTP checks"),
    ("health-tcp-host", API + 'health = { tcp = true, host = "app.internal" }',
     "pool.api.health.host: only for HTTP checks"),
    ("passive-type", API + 'passive = "off"',
     'pool.api.passive: expected a table (e.g. passive = { failures = 3, cooldown = "10s" }) '
     'or false (no passive checks), got "off"'),
    ("passive-failures", API + "passive = { failures = 0 }",
     "pool.api.passive.failures: expected an integer >= 1, got 0"),
    ("passive-cooldown", API + 'passive = { cooldown = "0s" }',
     'pool.api.passive.cooldown: must be more than zero, got "0s"'),
    ("passive-unknown", API + "passive = { fails = 3 }",
     'pool.api.passive.fails: unknown key (did you mean "failures"?'),
    ("slow-start-negative", API + "slow_start = -1",
     "pool.api.slow_start: a duration cannot be negative, got -1"),
    ("slow-start-words", API + 'slow_start = "slowly"',
     'pool.api.slow_start: "slowly" is not a duration'),
    ("protocol", API + 'protocol = "http2"',
     'pool.api.protocol: expected one of "http1", "h2", "h2c", got "http2"'),
    ("protocol-h2-no-tls", API + 'protocol = "h2"',
     'pool.api.protocol: "h2" to origins runs over TLS: add tls = {} '
     '(or write "h2c" for HTTP/2 without TLS)'),
    ("protocol-h2-bad-tls", API + 'protocol = "h2"\ntls = "yes"',
     'pool.api.tls: expected a table, got "yes"'),
    ("protocol-h2c-tls", API + 'protocol = "h2c"\ntls = {}',
     'pool.api.protocol: "h2c" is HTTP/2 without TLS, but this pool has tls (write "h2")'),
    ("pool-tls-unknown", API + "tls = { verify_peer = false }",
     'pool.api.tls.verify_peer: unknown key (did you mean "verify"?'),
    ("pool-tls-sni-ip", API + 'tls = { sni = "10.0.0.5" }',
     'pool.api.tls.sni: "10.0.0.5": SNI carries host names, never IP addresses (RFC 6066)'),
    ("pool-tls-sni-wildcard", API + 'tls = { sni = "*.internal" }',
     'pool.api.tls.sni: "*.internal": a server name sent to origins cannot be a wildcard'),
    ("pool-tls-verify", API + 'tls = { verify = "no" }',
     'pool.api.tls.verify: expected true or false, got "no"'),
    ("pool-tls-ca-missing", API + 'tls = { ca = "/nonexistent/ca.pem" }',
     "pool.api.tls.ca: /nonexistent/ca.pem does not exist (name a PEM file of CA certificates)"),
    ("pool-tls-ca-dir", API + 'tls = { ca = "/tmp" }',
     "pool.api.tls.ca: /tmp is a directory (name a PEM file of CA certificates)"),
    ("pool-tls-ca-not-pem", API + 'tls = { ca = "/dev/null" }',
     "pool.api.tls.ca: /dev/null holds no usable PEM certificate"),
    ("pool-tls-cert-no-key", API + 'tls = { cert = "/x/client.pem" }',
     'pool.api.tls.cert: needs key (its private key, e.g. key = "client.key")'),
    ("pool-tls-key-no-cert", API + 'tls = { key = "/x/client.key" }',
     'pool.api.tls.key: needs cert (the client certificate chain, e.g. cert = "client.pem")'),
    ("pool-tls-cert-missing",
     API + 'tls = { cert = "/nonexistent/client.pem", key = "/nonexistent/client.key" }',
     "pool.api.tls.cert: certificate file /nonexistent/client.pem does not exist"),
    ("pool-tls-cert-not-pem", API + 'tls = { cert = "/dev/null", key = "/dev/null" }',
     "pool.api.tls.cert: certificate file /dev/null is not PEM"),
    ("pool-tls-cert-type", API + 'tls = { cert = 1, key = "/x/client.key" }',
     "pool.api.tls.cert: expected a non-empty string, got 1"),
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
    ("tcp-tls", NEW + 'mode = "tcp"\npool = "web"\ntls = { unknown_sni = "reject" }'),
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
    ("h2-edges", "[global.h2]\nmax_concurrent_streams = 2147483647\ninitial_window_size = 0\n"
     'max_frame_size = 16777215\nmax_header_list_size = "4m"\nmax_resets_per_second = 1\n'
     "max_control_frames_per_second = 1"),
    ("admin-socket-only", '[admin]\nsocket = "/run/revproxy/admin.sock"'),
    ("admin-bind-other-port", '[admin]\nbind = "127.0.0.1:8404"\n'
     'auth = { user = "ops", password = "s3cret" }'),
    ("admin-bind-v6-beside-v4-any",
     '[[listener]]\nname = "b"\nbind = "0.0.0.0:8404"\n[admin]\nbind = "[::1]:8404"'),
    ("acme-forward", '[acme]\nforward = "127.0.0.1:8081"\nemail = "a@example.com"'),
    ("acme-staging", '[acme]\nserver = "https://acme-staging-v02.api.letsencrypt.org/directory"'),
    ("acme-certbot-name", '[acme]\ncertbot = "certbot-3"'),
    ("listener-plain-flags", NEW + "acme = true\nh2c = true\nmax_conns = 1000"),
    ("listener-acme-off-on-80", '[[listener]]\nname = "b"\nbind = "127.0.0.1:8080"\nacme = false'),
    ("listener-false-flags-on-tls", TLS + "acme = false\nh2c = false"),
    ("listener-tcp-max-conns", NEW + 'mode = "tcp"\npool = "web"\nmax_conns = 10\nacme = false'),
    ("tls-alpn-h2", TLS.replace("tls = {}", 'tls = { alpn = ["h2", "http/1.1"] }')),
    ("passthrough", TLS + PASS),
    ("passthrough-explicit-root-path", TLS + PASS + 'path = "/"'),
    ("passthrough-beside-any-host-route", TLS + '[[route]]\npool = "web"\n' + PASS),
    ("passthrough-before-any-host-route", TLS + PASS + '[[route]]\npool = "web"\n'),
    ("passthrough-same-sni-other-listeners",
     TLS + '[[listener]]\nname = "t"\nbind = ":8443"\ntls = {}\n'
     + PASS + 'listeners = ["s"]\n' + PASS + 'listeners = ["t"]'),
    ("passthrough-exact-and-wildcard",
     TLS + PASS + '[[route]]\npassthrough = true\nsni = "*.example"\npool = "web"'),
    ("host-route-same-name-also-plain", TLS + PASS + '[[route]]\nhost = "a.example"\npool = "web"'),
    ("host-route-wildcard-beside-exact-passthrough",
     TLS + PASS + '[[route]]\nhost = "*.example"\nlisteners = ["s"]\npool = "web"'),
    ("pool-health-http", API + 'health = { path = "/healthz?full=1", interval = "5s", '
     'timeout = "2s", rise = 1, fall = 1, expect = "2xx,301", host = "app.internal" }'),
    ("pool-health-tcp", API + 'health = { tcp = true, interval = "10s" }'),
    ("pool-health-defaults", API + "health = {}"),
    ("pool-passive-off", API + "passive = false"),
    ("pool-passive-on", API + "passive = true"),
    ("pool-h2-tls", API + 'protocol = "h2"\ntls = { sni = "app.internal", verify = false }'),
    ("pool-h2c", API + 'protocol = "h2c"'),
    ("pool-http1-tls", API + "tls = {}"),
    ("pool-slow-start", API + 'slow_start = "30s"\ntimeouts = { tunnel = "2h" }'),
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
    """Field name = TOML key: a field added to config/model.py must be read here too."""

    def fields(cls: type, *skip: str) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - set(skip)

    top = {"global_": "global", "listeners": "listener", "routes": "route", "pools": "pool",
           "limits": "limit", "tunnels": "tunnel"}  # fmt: skip
    # [[server]] tables add servers to pools (ctl add server --persist): no field of their own.
    assert set(config_load._TOP_KEYS) == {
        top.get(name, name) for name in fields(Config, "files")
    } | {"server"}
    assert set(config_load._GLOBAL_KEYS) == fields(Global)
    assert set(config_load._H2_KEYS) == fields(H2Settings)
    assert set(config_load._ADMIN_KEYS) == fields(Admin)
    assert set(config_load._AUTH_KEYS) == fields(BasicAuth)
    assert set(config_load._ACME_KEYS) == fields(Acme)
    assert set(config_listener._LISTENER_KEYS) == fields(Listener, "source")
    assert set(config_listener._TLS_KEYS) == fields(ListenerTLS)
    assert set(config_listener._CERT_KEYS) == fields(CertPair)
    assert set(config_listener._PROXY_PROTOCOL_KEYS) == fields(ProxyProtocolIn)
    assert set(config_route._ROUTE_KEYS) == fields(Route, "index", "source")
    assert set(config_route._RESPOND_KEYS) == fields(Respond)
    pool_fields = fields(Pool, "name", "source", "source_addresses")
    assert set(config_pool._POOL_KEYS) == pool_fields | {"source"}  # source_addresses' key
    assert set(config_pool._SERVER_KEYS) == fields(Server, "port")
    assert set(config_pool._TIMEOUT_KEYS) == fields(Timeouts)
    assert set(config_pool._HEALTH_KEYS) == fields(Health)
    assert set(config_pool._PASSIVE_KEYS) == fields(Passive)
    assert set(config_pool._POOL_TLS_KEYS) == fields(PoolTLS)
    # rate = "N/T" fills requests and period.
    assert set(config_limits.LIMIT_KEYS) == fields(
        Limit, "name", "requests", "period", "source"
    ) | {"rate"}
    assert set(config_limits.CONN_LIMIT_KEYS) == fields(ConnLimit)


def test_config_load_still_exports_the_parsers_and_summary() -> None:
    """Callers import these from config_load (revproxy check uses summary)."""
    for name in ("summary", "parse_bind", "parse_duration", "parse_server", "parse_size"):
        assert callable(getattr(config_load, name))


# --- a full config, every key -------------------------------------------------------------

FULL = """
[global]
workers = 4
access_log = "access.log"
access_log_format = "json"
http1_parser = "h11"
shutdown_timeout = "1m30s"
header_timeout = "500ms"
keepalive_timeout = 75
max_header_size = "32k"
max_body_size = "1g"
state_dir = "state"
watch = false
pid_file = "run/revproxy.pid"

[global.h2]
max_concurrent_streams = 250
initial_window_size = 1048576
max_frame_size = 32768
max_header_list_size = "32k"
max_resets_per_second = 100
ping_interval = "30s"
ping_timeout = "5s"

[admin]
socket = "run/admin.sock"
bind = "127.0.0.1:8404"
auth = { user = "ops", password = "s3cret" }

[acme]
forward = "127.0.0.1:8081"
email = "admin@example.com"
certbot = "/usr/local/bin/certbot"
config_dir = "le/config"
work_dir = "le/work"
logs_dir = "le/logs"
server = "https://acme-staging-v02.api.letsencrypt.org/directory"

[[listener]]
name = "http"
bind = [":80", "[::]:80"]
redirect_https = true
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]
proxy_protocol = { mode = "optional", trusted = ["10.0.0.0/8"], timeout = "3s" }
forwarded = true
acme = true
h2c = true
max_conns = 5000

[[listener]]
name = "https"
bind = ["127.0.0.1:8443", "[::1]:8443"]
tls = { cert_dir = "/etc/letsencrypt/live", unknown_sni = "reject", alpn = ["h2", "http/1.1"] }

[[listener]]
name = "pg"
bind = "localhost:5432"
mode = "tcp"
pool = "pg"
max_conns = 100

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

[[route]]
sni = ["legacy.example.com", "*.Legacy.example.com"]
passthrough = true
pool = "legacy"
listeners = ["https"]

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
passive = { failures = 5, cooldown = "30s" }
slow_start = "1m"
protocol = "h2"
tls = { sni = "app.internal", verify = false }

[pool.web.health]
path = "/healthz"
interval = "5s"
timeout = "2s"
rise = 3
fall = 2
expect = "200-399"
host = "app.internal"

[pool.pg]
servers = ["[::1]:5432"]
passive = false

[pool.legacy]
servers = ["10.0.1.1:443"]
timeouts = { tunnel = "2h" }
health = { tcp = true }
"""


def test_full_config_round_trip(tmp_path: Path) -> None:
    net = ipaddress.ip_network
    config = load_config_text([("conf/50-full.toml", FULL)], base_dir=tmp_path)
    source = "conf/50-full.toml"
    assert config == Config(
        global_=Global(
            workers=4,
            access_log=str(tmp_path / "access.log"),
            access_log_format="json",
            http1_parser="h11",
            shutdown_timeout=90.0,
            header_timeout=0.5,
            keepalive_timeout=75.0,
            max_header_size=32768,
            max_body_size=1 << 30,
            state_dir=tmp_path / "state",
            watch=False,
            pid_file=tmp_path / "run/revproxy.pid",
            h2=H2Settings(
                max_concurrent_streams=250,
                initial_window_size=1 << 20,
                max_frame_size=32768,
                max_header_list_size=32768,
                max_resets_per_second=100,
                ping_interval=30.0,
                ping_timeout=5.0,
            ),
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
                acme=True,
                h2c=True,
                max_conns=5000,
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
                max_conns=100,
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
            Route(
                sni=("legacy.example.com", "*.legacy.example.com"),
                passthrough=True,
                pool="legacy",
                listeners=("https",),
                index=3,
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
                health=Health(
                    path="/healthz",
                    interval=5.0,
                    timeout=2.0,
                    rise=3,
                    fall=2,
                    expect="200-399",
                    host="app.internal",
                ),
                passive=Passive(failures=5, cooldown=30.0),
                slow_start=60.0,
                protocol="h2",
                tls=PoolTLS(sni="app.internal", verify=False),
                source=source,
            ),
            Pool(
                name="pg",
                servers=(Server(address="::1", port=5432),),
                passive=None,
                source=source,
            ),
            Pool(
                name="legacy",
                servers=(Server(address="10.0.1.1", port=443),),
                timeouts=Timeouts(tunnel=7200.0),
                health=Health(tcp=True),
                source=source,
            ),
        ),
        admin=Admin(
            socket=tmp_path / "run/admin.sock",
            bind=Bind(host="127.0.0.1", port=8404),
            auth=BasicAuth(user="ops", password="s3cret"),
        ),
        acme=Acme(
            webroot=None,
            forward="127.0.0.1:8081",
            email="admin@example.com",
            certbot="/usr/local/bin/certbot",
            config_dir=tmp_path / "le/config",
            work_dir=tmp_path / "le/work",
            logs_dir=tmp_path / "le/logs",
            server="https://acme-staging-v02.api.letsencrypt.org/directory",
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
    assert config.admin == Admin()
    assert config.acme == Acme()
    assert config.listeners[0].acme is None  # "default": on for plain listeners on port 80


def test_summary() -> None:
    text = summary(load_config_text([("conf/50-full.toml", FULL)]))
    lines = text.splitlines()
    assert lines[0] == "files: conf/50-full.toml"
    assert "workers 4" in lines[1] and "max body size 1g" in lines[1]
    assert lines[1].endswith("; watch conf: off; pid file run/revproxy.pid")
    expected = [
        "http/2 to clients: max 250 streams; window 1m; max frame 32k; max header list 32k; "
        "GOAWAY over 100 resets/s or 1000 control frames/s; ping after 30s idle, timeout 5s",
        'admin: socket run/admin.sock; http on 127.0.0.1:8404 (basic auth, user "ops")',
        "acme: challenges answered on http; forwarded to certbot --standalone on "
        "127.0.0.1:8081; certbot /usr/local/bin/certbot; email admin@example.com; "
        "server https://acme-staging-v02.api.letsencrypt.org/directory",
        "  http: http on :80, [::]:80; h2c (HTTP/2 without TLS); answers ACME challenges; "
        "redirects to https on port 8443; PROXY protocol optional from 10.0.0.0/8; "
        "trusts X-Forwarded-For from 10.0.0.0/8, 192.0.2.1/32; adds Forwarded; "
        "max 5000 connections",
        "  https: http on 127.0.0.1:8443, [::1]:8443; tls (certificates in "
        "/etc/letsencrypt/live; unknown sni: reject; alpn: h2, http/1.1)",
        "  pg: tcp on localhost:5432; max 100 connections; to pool pg",
        "  web: leastconn; h2 over TLS; tls (sni app.internal; verify off); sends PROXY v2; "
        "slow start 1m",
        "    health: GET /healthz (Host app.internal) expecting 200-399 every 5s, timeout 2s; "
        "up after 3, down after 2",
        "    passive checks: down after 5 failures in a row, for 30s",
        "    10.0.0.10:8080: weight 1",
        "    app.internal:8080 (app1): weight 2, backup, max_conns 100",
        "  pg: roundrobin",
        "    passive checks: off",
        "    [::1]:5432: weight 1",
        "  legacy: roundrobin",
        "    health: tcp connect every 2s, timeout 1s; up after 2, down after 3",
    ]
    for line in expected:
        assert line in lines, (line, lines)
    routes = [line for line in lines if " -> " in line]
    assert routes == [
        "  1. example.com /api/ -> pool web (listeners: https)  [route[0] in conf/50-full.toml]",
        "  2. old.example / -> redirect 301 https://example.org/  [route[1] in conf/50-full.toml]",
        "  3. *.example.com /api/ -> pool web (listeners: https)  [route[0] in conf/50-full.toml]",
        "  4. (any host) / -> respond 404  [route[2] in conf/50-full.toml]",
        "  legacy.example.com -> pool legacy (listeners: https)  [route[3] in conf/50-full.toml]",
        "  *.legacy.example.com -> pool legacy (listeners: https)  [route[3] in conf/50-full.toml]",
    ]
    # Passthrough routes are neither counted nor ordered with the host routes.
    assert lines.index(routes[3]) + 1 == lines.index(
        "passthrough (by SNI; 1 route; TLS relayed undecrypted, before any host route):"
    )


def test_summary_defaults() -> None:
    """Plain listeners on port 80 answer ACME challenges unless told otherwise; no h2 line
    while no listener offers HTTP/2; admin off."""
    lines = summary(load(BASE + NEW)).splitlines()
    assert "admin: off" in lines
    assert (
        "acme: challenges answered on http; webroot /var/lib/revproxy/acme; certbot certbot; "
        "server certbot default"
    ) in lines
    assert "  http: http on :80; answers ACME challenges (port 80)" in lines
    assert "  b: http on :81" in lines
    assert not any(line.startswith("http/2") for line in lines)
    assert "    passive checks: down after 3 failures in a row, for 10s" in lines
    off = summary(load(BASE.replace('bind = ":80"', 'bind = ":80"\nacme = false'))).splitlines()
    assert "acme: no listener answers HTTP-01 challenges" in off
    assert "  http: http on :80" in off


def test_summary_passthrough_on_every_tls_listener() -> None:
    text = (
        BASE
        + TLS
        + '[[listener]]\nname = "t"\nbind = ":8443"\ntls = { alpn = ["h2"] }\n'
        + '[[route]]\npassthrough = true\nsni = ["*.b.example", "a.example"]\npool = "web"\n'
        + '[[route]]\nhost = "a.example"\nlisteners = ["http"]\nredirect = "https://a.example/"\n'
    )
    lines = summary(load(text)).splitlines()
    assert lines[lines.index("passthrough (by SNI; 1 route; TLS relayed undecrypted, "
                             "before any host route):") + 1 :][:2] == [
        f"  a.example -> pool web (listeners: s, t)  [route[0] in {FILE}]",
        f"  *.b.example -> pool web (listeners: s, t)  [route[0] in {FILE}]",
    ]  # fmt: skip
    assert any(line.startswith("routes (1;") for line in lines)
    assert any(
        line.startswith("http/2 to clients: max 100 streams; window 65535;") for line in lines
    )
    assert "  web: roundrobin" in lines  # used by the passthrough route


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


def test_single_tables_merge_key_by_key(tmp_path: Path) -> None:
    """[global] (with its h2 table), [admin] and [acme] merge across files; each problem names
    the file that set the key."""
    conf = write(
        tmp_path / "conf",
        {
            "10-a.toml": BASE + '[admin]\nsocket = "admin.sock"\n[acme]\nwebroot = "acme"\n',
            "20-b.toml": "[global.h2]\nmax_frame_size = 1\n"
            '[admin]\nbind = "127.0.0.1:80"\n[acme]\nforward = "127.0.0.1:8081"\n',
            "30-c.toml": '[admin]\nsocket = "other.sock"\n',
        },
    )
    assert load_problems(conf) == [
        "conf/20-b.toml: global.h2.max_frame_size: expected an integer from 16384 to 16777215, "
        "got 1",
        "conf/20-b.toml: acme.forward: set one of webroot or forward, not both (webroot: "
        "challenge answers are files certbot --webroot writes there; forward: challenges go "
        "to certbot --standalone)",
        'conf/20-b.toml: admin.bind: 127.0.0.1:80 clashes with :80 of listener "http" '
        "(listener[0].bind in conf/10-a.toml)",
        "conf/30-c.toml: admin.socket: set again (first set in conf/10-a.toml)",
    ]


def test_single_tables_relative_paths(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf",
        {
            "10-a.toml": BASE + '[global]\npid_file = "run/revproxy.pid"\n'
            '[admin]\nsocket = "run/admin.sock"\n'
            '[acme]\nwebroot = "acme"\ncertbot = "bin/certbot"\nlogs_dir = "logs"\n'
        },
    )
    config = load_config(conf)
    base = conf.resolve()
    assert config.global_.pid_file == base / "run/revproxy.pid"
    assert config.admin.socket == base / "run/admin.sock"
    assert config.acme.webroot == base / "acme"
    assert config.acme.certbot == str(base / "bin/certbot")
    assert config.acme.logs_dir == base / "logs"
    assert config.acme.config_dir == Path("/etc/letsencrypt")  # defaults stay absolute


def test_shape_of_single_tables() -> None:
    assert problems(BASE, "admin = 1\nacme = []") == [
        "conf/11-test.toml: admin: expected a table ([admin]), got 1",
        "conf/11-test.toml: acme: expected a table ([acme]), got an array",
    ]


def test_passthrough_across_files(tmp_path: Path) -> None:
    """A passthrough route in one file names a TLS listener of another; a plain listener
    named there is reported with the route's file."""
    conf = write(
        tmp_path / "conf",
        {
            "10-listeners.toml": BASE + TLS,
            "20-routes.toml": PASS + 'listeners = ["s", "http"]\n',
        },
    )
    assert load_problems(conf) == [
        'conf/20-routes.toml: route[0].listeners[1]: listener "http" has no tls; passthrough '
        "routes take TLS connections (name a listener with tls)"
    ]


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


# --- CA files for TLS to origins ----------------------------------------------------------


def pool_tls(tls: str) -> str:
    return BASE + f'[pool.api]\nservers = ["10.0.0.5:443"]\ntls = {{ {tls} }}\n'


def test_pool_ca_resolves_against_conf_dir(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    make_cert(conf, "ca.internal")
    write(conf, {"10-a.toml": pool_tls('ca = "ca.internal.pem", sni = "app.internal"')})
    assert load_config(conf).pool("api").tls == PoolTLS(
        sni="app.internal", verify=True, ca=conf.resolve() / "ca.internal.pem"
    )


def test_pool_ca_problems(tmp_path: Path) -> None:
    ca, key = make_cert(tmp_path, "ca.internal")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert problems(pool_tls(f'ca = "{ca}", verify = false')) == [
        f"{FILE}: pool.api.tls.ca: only used with verify = true "
        "(verify = false checks no certificate)"
    ]
    found = problems(pool_tls(f'ca = "{garbage}"'))
    assert len(found) == 1 and found[0].startswith(
        f"{FILE}: pool.api.tls.ca: {garbage} holds no usable PEM certificate ("
    ), found
    found = problems(pool_tls(f'ca = "{key}"'))  # a key, not a certificate
    assert len(found) == 1 and f"{key} holds no usable PEM certificate" in found[0], found


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_pool_ca_unreadable(tmp_path: Path) -> None:
    ca, _ = make_cert(tmp_path, "ca.internal")
    ca.chmod(0)
    assert problems(pool_tls(f'ca = "{ca}"')) == [
        f"{FILE}: pool.api.tls.ca: cannot read {ca}: Permission denied"
    ]


# --- client certificates: on tcp listeners, and toward origins ------------------------------


def test_pool_client_cert_loads(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    make_cert(conf, "client")
    write(conf, {"10-a.toml": pool_tls('cert = "client.pem", key = "client.key"')})
    tls = load_config(conf).pool("api").tls
    assert tls == PoolTLS(cert=conf.resolve() / "client.pem", key=conf.resolve() / "client.key")


# (tls = { ... } of [pool.api] with {cert}, {key}, {other_key}, {dir} filled in, "key: reason")
CLIENT_CERT_ERRORS = [
    ('cert = "{cert}", key = "{other_key}"',
     "pool.api.tls.key: private key file {other_key} does not match certificate file {cert} "
     "(their public keys differ)"),
    ('cert = "{cert}", key = "{dir}/missing.key"',
     "pool.api.tls.key: private key file {dir}/missing.key does not exist"),
    ('cert = "{key}", key = "{key}"',
     "pool.api.tls.cert: certificate file {key} holds no certificate (found PRIVATE KEY)"),
    ('cert = "{cert}", key = "{cert}"',
     "pool.api.tls.key: private key file {cert} holds no private key (found CERTIFICATE)"),
    ('cert = "{dir}", key = "{key}"',
     "pool.api.tls.cert: certificate file {dir} is a directory, not a file"),
]  # fmt: skip


@pytest.mark.parametrize(("tls", "expected"), CLIENT_CERT_ERRORS)
def test_pool_client_cert_problems(tmp_path: Path, tls: str, expected: str) -> None:
    cert, key = make_cert(tmp_path, "client")
    _, other_key = make_cert(tmp_path, "other")
    names = {"cert": cert, "key": key, "other_key": other_key, "dir": tmp_path}
    assert problems(pool_tls(tls.format(**names))) == [f"{FILE}: {expected.format(**names)}"]


def tcp_tls_listener(tls: str) -> str:
    return (
        BASE
        + '[[listener]]\nname = "pg"\nbind = ":5432"\nmode = "tcp"\npool = "web"\n'
        + f"tls = {{ {tls} }}\n"
    )


def test_tcp_listener_tls_loads(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "db.example")
    ca, _ = make_cert(tmp_path, "clients-ca")
    tls = (
        load(
            tcp_tls_listener(
                f'certs = [{{ cert = "{cert}", key = "{key}" }}], client_ca = "{ca}", '
                'client_cert = "optional"'
            )
        )
        .listener("pg")
        .tls
    )
    assert tls == ListenerTLS(
        certs=(CertPair(cert=cert, key=key),), alpn=(), client_ca=ca, client_cert="optional"
    )


def test_tcp_listener_tls_adds_no_header(tmp_path: Path) -> None:
    ca, _ = make_cert(tmp_path, "clients-ca")
    assert problems(tcp_tls_listener(f'client_ca = "{ca}", client_cert_header = "X-Client"')) == [
        f'{FILE}: listener[1].tls.client_cert_header: only for mode = "http" (a tcp listener '
        'adds no headers; pass the subject with the pool\'s send_proxy = "v2")'
    ]
