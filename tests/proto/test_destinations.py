"""The egress destination policy, pure: entries as written, the request judged by name and
port, the resolved address judged against the deny classes (table-driven)."""

from __future__ import annotations

import ipaddress

import pytest

from revproxy.proto.destinations import (
    DestinationPolicy,
    Rule,
    parse_authority,
    parse_deny,
    parse_port_range,
    parse_rule,
)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("*", Rule(name="*")),
        ("API.partner.example", Rule(name="api.partner.example")),
        ("*.payments.example", Rule(name="*.payments.example")),
        ("db.example.com:5432", Rule(name="db.example.com", port=5432)),
        ("198.51.100.0/24", Rule(network=ipaddress.ip_network("198.51.100.0/24"))),
        ("198.51.100.7", Rule(network=ipaddress.ip_network("198.51.100.7/32"))),
        ("198.51.100.7:443", Rule(network=ipaddress.ip_network("198.51.100.7/32"), port=443)),
        ("[2001:db8::1]:443", Rule(network=ipaddress.ip_network("2001:db8::1/128"), port=443)),
        ("2001:db8::/32", Rule(network=ipaddress.ip_network("2001:db8::/32"))),
        ("::ffff:127.0.0.1", Rule(network=ipaddress.ip_network("127.0.0.1/32"))),
    ],
)
def test_parse_rule(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("https://api.example", "not a URL"),
        ("198.51.100.1/24", "host bits"),
        ("a*.example.com", '"*" only'),
        ("example.com.", "trailing dot"),
        ("example.com:0", "port"),
        ("exa mple.com", "not a host name"),
        ("[10.0.0.1]:80", "IPv6 addresses only"),
    ],
)
def test_parse_rule_refusals(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_rule(text)


def test_ports_and_deny_entries() -> None:
    assert parse_port_range(443) == (443, 443)
    assert parse_port_range("1025-65535") == (1025, 65535)
    for bad in (0, "70000", "20-10", "x"):
        with pytest.raises(ValueError):
            parse_port_range(bad)
    assert parse_deny("metadata") == "metadata"
    assert parse_deny("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(ValueError, match="neither a class"):
        parse_deny("localhost")


@pytest.mark.parametrize(
    ("authority", "default", "parsed"),
    [
        ("Example.COM:443", None, ("example.com", 443)),
        ("example.com", 80, ("example.com", 80)),
        ("example.com.", 80, ("example.com", 80)),
        ("[2001:DB8::1]:443", None, ("2001:db8::1", 443)),
        ("example.com", None, None),
        ("user@example.com:80", None, None),
        ("example.com:99999", None, None),
        ("2001:db8::1:443", None, None),
        ("", 80, None),
    ],
)
def test_parse_authority(authority: str, default: int | None, parsed: object) -> None:
    assert parse_authority(authority, default) == parsed


POLICY = DestinationPolicy(
    rules=tuple(
        parse_rule(r)
        for r in (
            "api.partner.example",
            "*.payments.example",
            "db.example.com:5432",
            "198.51.100.0/24",
            "10.1.2.0/24",
        )
    ),
    ports=((80, 80), (443, 443), (1025, 65535)),
    connect_ports=((443, 443), (5432, 5432)),
)


@pytest.mark.parametrize(
    ("host", "port", "tunnel", "reason"),
    [
        ("api.partner.example", 443, True, ""),
        ("api.partner.example", 80, False, ""),
        ("api.partner.example", 80, True, "connect-port"),
        ("api.partner.example", 22, False, "port"),
        ("x.payments.example", 443, True, ""),
        ("a.b.payments.example", 443, True, ""),
        ("payments.example", 443, True, "destination"),
        ("db.example.com", 5432, True, ""),
        ("db.example.com", 443, True, "destination"),
        ("198.51.100.9", 443, True, ""),
        ("198.51.101.9", 443, True, "destination"),
        ("evil.example", 443, True, "destination"),
    ],
)
def test_check_request(host: str, port: int, tunnel: bool, reason: str) -> None:
    assert POLICY.check_request(host, port, tunnel=tunnel) == reason


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("93.184.216.34", ""),
        ("127.0.0.1", "deny:loopback"),
        ("127.9.9.9", "deny:loopback"),
        ("0.0.0.0", "deny:loopback"),
        ("::1", "deny:loopback"),
        ("::ffff:127.0.0.1", "deny:loopback"),
        ("10.9.9.9", "deny:private"),
        ("10.1.2.3", ""),  # written in destinations: the class does not refuse it
        ("172.16.0.1", "deny:private"),
        ("192.168.1.1", "deny:private"),
        ("fd12::1", "deny:private"),
        ("169.254.1.1", "deny:link-local"),
        ("fe80::1", "deny:link-local"),
        ("169.254.169.254", "deny:link-local"),
        ("fd00:ec2::254", "deny:private"),
        ("not an address", "deny:address"),
    ],
)
def test_check_address(address: str, reason: str) -> None:
    assert POLICY.check_address(address) == reason


def test_empty_destinations_allow_nothing_and_star_all_but_deny() -> None:
    nothing = DestinationPolicy()
    assert nothing.check_request("example.com", 443, tunnel=True) == "destination"
    anything = DestinationPolicy(rules=(parse_rule("*"),))
    assert anything.check_request("example.com", 443, tunnel=True) == ""
    assert anything.check_address("169.254.169.254") == "deny:link-local"
    metadata_only = DestinationPolicy(rules=(parse_rule("*"),), deny_classes=("metadata",))
    assert metadata_only.check_address("169.254.169.254") == "deny:metadata"
    assert metadata_only.check_address("127.0.0.1") == ""
    open_ = DestinationPolicy(rules=(parse_rule("*"),), deny_classes=())
    assert open_.check_address("127.0.0.1") == ""
    networks = DestinationPolicy(
        rules=(parse_rule("10.0.0.0/8"),),
        deny_networks=(ipaddress.ip_network("10.6.0.0/16"),),
    )
    assert networks.check_address("10.6.1.1") == "deny:10.6.0.0/16"
    assert networks.check_address("10.7.1.1") == ""
    kept, refusal = POLICY.allowed_addresses(["127.0.0.1", "93.184.216.34"])
    assert kept == ["93.184.216.34"] and refusal == "deny:loopback"
