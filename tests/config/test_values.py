"""Configuration values, one at a time: every parser whole-table-driven (like Caddy's
addresses_test.go) — what it returns for good input, and the operator's reason for bad input.
"""

from __future__ import annotations

import ipaddress

import pytest

from revproxy.config.model import Bind
from revproxy.config.values import (
    format_duration,
    format_size,
    parse_acme_server,
    parse_bind,
    parse_check_path,
    parse_duration,
    parse_email,
    parse_expect,
    parse_host_name,
    parse_host_pattern,
    parse_network,
    parse_server,
    parse_size,
    parse_sni_name,
    parse_sni_pattern,
)

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


SNI_PATTERNS = [
    ("Legacy.Example.com", "legacy.example.com"),
    ("*.Example.com", "*.example.com"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("localhost", "localhost"),
]
BAD_SNI_PATTERNS = [
    ("192.0.2.1", '"192.0.2.1": SNI carries host names, never IP addresses (RFC 6066)'),
    ("[2001:db8::1]", "SNI carries host names, never IP addresses"),
    ("2001:db8::1", "SNI carries host names, never IP addresses"),
    ("1.2.3", "SNI carries host names, never IP addresses"),
    ("a.example:443", '"a.example:443": no port in host (write "a.example";'),
    ("*", '"*" is not a server name (write e.g. "*.example.com")'),
    ("", 'empty server name (write e.g. "legacy.example.com")'),
    ("a.*.example", '"*" may only be the whole first label'),
    ("example.com.", 'no trailing dot (write "example.com")'),
    ("bücher.de", 'write the name in its ASCII form ("xn--bcher-kva.de")'),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), SNI_PATTERNS)
def test_parse_sni_pattern(value: str, expected: str) -> None:
    assert parse_sni_pattern(value) == expected


@pytest.mark.parametrize(("value", "reason"), BAD_SNI_PATTERNS)
def test_parse_sni_pattern_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sni_pattern(value)
    assert reason in str(caught.value)


BAD_SNI_NAMES = [
    ("*.example.com", '"*.example.com": a server name sent to origins cannot be a wildcard'),
    ("10.0.0.5", "SNI carries host names, never IP addresses"),
    ("app:443", '"app:443": no port in host (write "app"; the port is the server\'s)'),
    ("", "empty server name"),
]  # fmt: skip


def test_parse_sni_name() -> None:
    assert parse_sni_name("App.Internal") == "app.internal"


@pytest.mark.parametrize(("value", "reason"), BAD_SNI_NAMES)
def test_parse_sni_name_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sni_name(value)
    assert reason in str(caught.value)


HOST_NAMES = [
    ("App.Internal", "app.internal"),
    ("192.0.2.1", "192.0.2.1"),
    ("[2001:DB8::1]", "[2001:db8::1]"),
]
BAD_HOST_NAMES = [
    ("*.example.com", '"*.example.com": one host name, not a wildcard'),
    ("app:8080", '"app:8080": no port in host (write "app"; the port is the server\'s)'),
    ("[::1]:80", 'no port in host (write "[::1]";'),
    ("::1", 'an IPv6 address needs brackets (write "[::1]")'),
    ("", "empty host name"),
    ("a b", "is not a valid host name"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), HOST_NAMES)
def test_parse_host_name(value: str, expected: str) -> None:
    assert parse_host_name(value) == expected


@pytest.mark.parametrize(("value", "reason"), BAD_HOST_NAMES)
def test_parse_host_name_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_host_name(value)
    assert reason in str(caught.value)


EXPECTS = [
    ("2xx", "2xx"), ("200", "200"), ("200-399", "200-399"), ("2xx,3xx", "2xx,3xx"),
    ("2XX, 301", "2xx,301"), ("204,2xx,300-308", "204,2xx,300-308"), ("599", "599"),
]  # fmt: skip
BAD_EXPECTS = [
    ("", '"" has an empty item (write e.g. "2xx", "200", "200-399" or "2xx,3xx")'),
    ("2xx,", '"2xx," has an empty item'),
    ("ok", '"ok": "ok" is not a status, range or class'),
    ("2x", '"2x" is not a status, range or class'),
    ("1xx", '"1xx" is not a status, range or class'),
    ("6xx", '"6xx" is not a status, range or class'),
    ("20", '"20" is not a status, range or class'),
    ("200 - 399", '"200 - 399" is not a status, range or class'),
    ("2xx-3xx", '"2xx-3xx" is not a status, range or class'),
    ("101", '"101": 101 is not a final status (200 to 599)'),
    ("200-600", '"200-600": 600 is not a final status (200 to 599)'),
    ("399-200", '"399-200": the range 399-200 goes down (write "200-399")'),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), EXPECTS)
def test_parse_expect(value: str, expected: str) -> None:
    assert parse_expect(value) == expected


@pytest.mark.parametrize(("value", "reason"), BAD_EXPECTS)
def test_parse_expect_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_expect(value)
    assert reason in str(caught.value)


BAD_CHECK_PATHS = [
    ("healthz", '"healthz" must start with "/" (write "/healthz")'),
    ("/health z", '"/health z" contains white space or control characters'),
    ("/a\x00", "contains white space or control characters"),
    ("/a#b", '"/a#b": a fragment ("#...") is never sent to a server'),
]  # fmt: skip


def test_parse_check_path() -> None:
    assert parse_check_path("/healthz") == "/healthz"
    assert parse_check_path("/status?full=1") == "/status?full=1"


@pytest.mark.parametrize(("value", "reason"), BAD_CHECK_PATHS)
def test_parse_check_path_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_check_path(value)
    assert reason in str(caught.value)


ACME_SERVERS = [
    "https://acme-staging-v02.api.letsencrypt.org/directory",
    "http://127.0.0.1:14000/dir",
    "https://ca.internal",
]
BAD_ACME_SERVERS = [
    "acme-v02.api.letsencrypt.org/directory",
    "ftp://ca/dir",
    "https://",
    "",
    "https://ca/a b",
]


@pytest.mark.parametrize("value", ACME_SERVERS)
def test_parse_acme_server(value: str) -> None:
    assert parse_acme_server(value) == value


@pytest.mark.parametrize("value", BAD_ACME_SERVERS)
def test_parse_acme_server_errors(value: str) -> None:
    with pytest.raises(
        ValueError, match=r"is not an ACME directory URL \(write one starting with https://"
    ):
        parse_acme_server(value)


EMAILS = [
    ("admin@example.com", "admin@example.com"),
    ("a+certs@mail.example.org", "a+certs@mail.example.org"),
    ("a@example.com, b@example.com", "a@example.com,b@example.com"),
]
BAD_EMAILS = [
    ("admin", '"admin" is not an email address (write e.g. "admin@example.com")'),
    ("admin@localhost", '"admin@localhost" is not an email address'),
    ("@example.com", '"@example.com" is not an email address'),
    ("a@@example.com", '"a@@example.com" is not an email address'),
    ("a b@example.com", '"a b@example.com" is not an email address'),
    ("a@example.com,", '"" is not an email address'),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), EMAILS)
def test_parse_email(value: str, expected: str) -> None:
    assert parse_email(value) == expected


@pytest.mark.parametrize(("value", "reason"), BAD_EMAILS)
def test_parse_email_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_email(value)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.5, "500ms"),
        (0, "0s"),
        (2, "2s"),
        (60, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (3723, "1h2m3s"),
    ],
)
def test_format_duration(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown
    assert parse_duration(shown) == seconds


@pytest.mark.parametrize(
    ("size", "shown"), [(0, "0"), (100, "100"), (16384, "16k"), (1 << 20, "1m"), (1536, "1536")]
)
def test_format_size(size: int, shown: str) -> None:
    assert format_size(size) == shown
    assert parse_size(shown) == size
