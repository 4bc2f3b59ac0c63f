"""HTTP rules and response services in the configuration (config/rules.py): every key read into
its dataclass, and every mistake reported with its key path and reason."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from revproxy.certs.files import cert_pair_problem
from revproxy.config.load import load_config_text
from revproxy.config.model import (
    CacheSettings,
    Compress,
    Config,
    FieldMatch,
    HeaderEdits,
    Match,
    RouteCache,
    Static,
)
from revproxy.errors import ConfigError

FILE = "conf/10-test.toml"
BASE = """
[[listener]]
name = "http"
bind = ":80"

[pool.web]
servers = ["10.0.0.10:8080"]
"""


def load(tmp_path: Path, text: str) -> Config:
    return load_config_text(
        [(FILE, BASE + text)], base_dir=tmp_path, check_cert_pair=cert_pair_problem
    )


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [str(p) for p in caught.value.problems]


def test_every_rule_key_read(tmp_path: Path) -> None:
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "50x.html").write_bytes(b"<h1>Back soon</h1>\n")
    (tmp_path / "www").mkdir()
    cfg = load(
        tmp_path,
        """
[cache]
size = "64m"
max_object = "512k"

[pool.web2]
servers = ["10.0.0.11:8080"]
host_header = "Origin.Internal"

[[route]]
path = "/api/"
pool = "web"
response_headers = { remove = ["X-Powered-By"] }
strip_prefix = "/api"
add_prefix = "/v1"
error_pages = { 502 = "errors/50x.html", 503 = "errors/50x.html" }
cache = { ttl_max = "30s", cookies = true }

[route.match]
methods = ["GET", "HEAD"]
headers = { "X-Api-Version" = ["2", "~^v[23]$"] }
query = { debug = "1" }
src = ["10.0.0.0/8"]

[route.request_headers]
set = { "X-Env" = "prod" }
add = { "X-Client" = "{client_ip}" }
remove = ["Cache-Control"]

[route.compress]
encodings = ["zstd", "gzip"]
types = ["text/*", "Application/JSON"]
min_size = "2k"
level = 5

[[route]]
path = "/static/"
static = { root = "www", index = false }
strip_prefix = "/static"
""",
    )
    api, files = cfg.routes
    assert api.match == Match(
        methods=("GET", "HEAD"),
        headers=(FieldMatch(name="x-api-version", values=("2",), patterns=("^v[23]$",)),),
        query=(FieldMatch(name="debug", values=("1",)),),
        src=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    assert api.match.conditions == 4
    assert api.request_headers == HeaderEdits(
        set=(("x-env", "prod"),), add=(("x-client", "{client_ip}"),), remove=("cache-control",)
    )
    assert api.response_headers == HeaderEdits(remove=("x-powered-by",))
    assert (api.strip_prefix, api.add_prefix) == ("/api", "/v1")
    assert [(p.status, p.body, p.content_type) for p in api.error_pages] == [
        (502, b"<h1>Back soon</h1>\n", "text/html; charset=utf-8"),
        (503, b"<h1>Back soon</h1>\n", "text/html; charset=utf-8"),
    ]
    assert api.compress == Compress(
        encodings=("zstd", "gzip"), types=("text/*", "application/json"), min_size=2048, level=5
    )
    assert api.cache == RouteCache(ttl_max=30.0, cookies=True)
    assert files.static == Static(root=tmp_path / "www", index=None)
    assert cfg.cache == CacheSettings(size=64 * 1024 * 1024, max_object=512 * 1024)
    assert cfg.pool("web2").host_header == "origin.internal"


def test_defaults(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    cfg = load(
        tmp_path,
        '[[route]]\npath = "/"\nstatic = { root = "www" }\ncompress = {}\n',
    )
    (route,) = cfg.routes
    assert route.static == Static(root=tmp_path / "www", index="index.html")
    assert route.compress == Compress()
    assert cfg.cache == CacheSettings()


def test_hsts_on_tls_listener(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}\n'
        'hsts = "max-age=63072000; includeSubDomains"\n'
        '[[route]]\npool = "web"\n',
    )
    assert cfg.listener("s").hsts == "max-age=63072000; includeSubDomains"


ROUTE = '[[route]]\npool = "web"\n'
ERRORS = [
    ("match-empty", ROUTE + "match = {}", "route[0].match: has no condition"),
    ("match-method-case", ROUTE + 'match = { methods = ["get"] }',
     'route[0].match.methods[0]: methods are case-sensitive and upper case (write "GET")'),
    ("match-regex", ROUTE + 'match = { headers = { "x-v" = "~^(v" } }',
     'route[0].match.headers.x-v: "~^(v" is not a valid regular expression'),
    ("match-header-name", ROUTE + 'match = { headers = { "x v" = "1" } }',
     'route[0].match.headers.x v: "x v" is not a header name'),
    ("match-src", ROUTE + 'match = { src = ["10.0.0.0/33"] }', "route[0].match.src[0]:"),
    ("match-unknown", ROUTE + 'match = { cookie = "a" }', "route[0].match.cookie: unknown key"),
    ("edit-framing", ROUTE + 'request_headers = { set = { "Content-Length" = "0" } }',
     'route[0].request_headers.set.Content-Length: "Content-Length" frames or routes'),
    ("edit-host", ROUTE + 'request_headers = { remove = ["Host"] }',
     "route[0].request_headers.remove[0]: \"Host\" frames or routes the message and cannot be "
     "edited (use the pool's host_header"),
    ("edit-template", ROUTE + 'request_headers = { set = { "X-A" = "{clientip}" } }',
     "route[0].request_headers.set.X-A: \"{clientip}\": unknown field {clientip}"),
    ("edit-crlf", ROUTE + 'response_headers = { add = { "X-A" = "a\\r\\nb" } }',
     "route[0].response_headers.add.X-A: a header value cannot contain CR, LF or NUL"),
    ("edit-twice", ROUTE + 'request_headers = { set = { "X-A" = "1", "x-a" = "2" } }',
     'route[0].request_headers.set.x-a: "x-a" is given twice'),
    ("edit-remove-and-set", ROUTE + 'request_headers = { set = { "X-A" = "1" }, remove = ["x-a"] }',
     'route[0].request_headers.set: "x-a" is both removed and set'),
    ("prefix-slash", ROUTE + 'strip_prefix = "/api/"',
     'route[0].strip_prefix: "/api/" must not end with "/" (write "/api")'),
    ("prefix-dots", ROUTE + 'add_prefix = "/a/../b"', 'route[0].add_prefix: "/a/../b" must not'),
    ("prefix-not-of-path", '[[route]]\npath = "/app/"\npool = "web"\nstrip_prefix = "/api"',
     "route[0].strip_prefix: \"/api\" is not a prefix of the route's path \"/app/\""),
    ("error-page-status", ROUTE + 'error_pages = { 200 = "x.html" }',
     'route[0].error_pages.200: "200" is not an error status (400-599)'),
    ("error-page-missing", ROUTE + 'error_pages = { 502 = "nope.html" }',
     "route[0].error_pages.502: "),
    ("compress-encoding", ROUTE + 'compress = { encodings = ["deflate"] }',
     'route[0].compress.encodings[0]: "deflate" is not an encoding revproxy makes'),
    ("compress-level", ROUTE + "compress = { level = 12 }",
     "route[0].compress.level: expected an integer from 1 to 9"),
    ("compress-type", ROUTE + 'compress = { types = ["json"] }',
     'route[0].compress.types[0]: "json" is not a content type'),
    ("cache-ttl", ROUTE + 'cache = { ttl_max = "0s" }', "route[0].cache.ttl_max: must be more"),
    ("cache-section", '[cache]\nsize = "2m"\nmax_object = "4m"\n' + ROUTE,
     "cache.max_object: is larger than size"),
    ("cache-unknown", '[cache]\nsise = "2m"\n' + ROUTE, "cache.sise: unknown key"),
    ("static-root-missing", '[[route]]\nstatic = { root = "nowhere" }',
     "route[0].static.root: "),
    ("static-and-pool", '[[route]]\npool = "web"\nstatic = { root = "." }',
     "route[0]: has pool and static; a route does exactly one of them"),
    ("static-cache", '[[route]]\nstatic = { root = "." }\ncache = {}',
     "route[0].cache: not on a route with static: only answers from a pool are cached"),
    ("redirect-compress", '[[route]]\nredirect = "/x"\ncompress = {}',
     "route[0].compress: not on a route with redirect"),
    ("passthrough-match",
     '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}\n[[route]]\npassthrough = true\n'
     'sni = "a.example"\npool = "web"\nmatch = { methods = ["GET"] }',
     "route[0].match: not on a passthrough route"),
    ("hsts-plain", '[[listener]]\nname = "p"\nbind = ":81"\nhsts = "max-age=1"\n' + ROUTE,
     "listener[1].hsts: only on TLS listeners"),
    ("hsts-no-age",
     '[[listener]]\nname = "s"\nbind = ":443"\ntls = {}\nhsts = "includeSubDomains"\n' + ROUTE,
     'listener[1].hsts: "includeSubDomains" needs exactly one max-age'),
    ("host-header", '[pool.x]\nservers = ["10.0.0.1:80"]\nhost_header = "a b"\n' + ROUTE,
     'pool.x.host_header: "a b" is not a host[:port]'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("snippet", "expected"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_one_problem(tmp_path: Path, snippet: str, expected: str) -> None:
    found = problems(tmp_path, snippet)
    assert len(found) == 1, found
    assert found[0].startswith(f"{FILE}: {expected}"), found


def test_same_path_other_conditions_not_shadowed(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[[route]]\npath = "/"\npool = "web"\n'
        '[[route]]\npath = "/"\npool = "web"\nmatch = { methods = ["POST"] }\n',
    )
    assert len(cfg.routes) == 2
    found = problems(
        tmp_path,
        '[[route]]\npath = "/"\npool = "web"\nmatch = { methods = ["POST"] }\n'
        '[[route]]\npath = "/"\npool = "web"\nmatch = { methods = ["POST"] }\n',
    )
    assert found == [
        f'{FILE}: route[1]: never used for any host and path "/": route[0] '
        f"({FILE}) matches them first"
    ]
