"""``[[listener]] tunnel = true`` (docs/tunnel.md): the agents of the reverse tunnel on an http
listener with tls, told apart by ALPN; anywhere else the key is a problem with its path."""

from __future__ import annotations

import pytest

from revproxy.config.load import load_config_text
from revproxy.errors import ConfigError

BASE = """
[global]
state_dir = "/var/lib/revproxy"
[[listener]]
name = "web"
bind = [":8080"]
[[listener]]
name = "tunnel"
bind = [":8443"]
mode = "tunnel"
[[route]]
pool = "web"
[pool.web]
servers = ["10.0.0.1:80"]
[tunnel.home]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text([("conf/10.toml", text)])
    return [str(p) for p in info.value.problems]


def test_default_is_off() -> None:
    config = load_config_text([("conf/10.toml", BASE)])
    assert config.listener("web").tunnel is False


def test_on_a_tls_http_listener() -> None:
    text = BASE.replace(
        'bind = [":8080"]',
        'bind = [":8443"]\ntls = { cert_dir = "/etc/revproxy/certs" }\ntunnel = true',
    ).replace('bind = [":8443"]\nmode = "tunnel"', 'bind = [":9443"]\nmode = "tunnel"')
    config = load_config_text([("conf/10.toml", text)])
    assert config.listener("web").tunnel is True


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # No tls: nothing to read ALPN from.
        (('bind = [":8080"]', 'bind = [":8080"]\ntunnel = true'),
         "listener[0].tunnel: only on a mode = \"http\" listener with tls"),
        # A tcp listener relays bytes untouched.
        (('bind = [":8080"]', 'bind = [":8080"]\nmode = "tcp"\npool = "web"\ntunnel = true'),
         "listener[0].tunnel: only on a mode = \"http\" listener with tls"),
        (('bind = [":8080"]', 'bind = [":8080"]\ntunnel = "yes"'), "listener[0].tunnel"),
    ],
)  # fmt: skip
def test_problems(change: tuple[str, str], expected: str) -> None:
    found = problems(BASE.replace(*change))
    assert any(expected in p for p in found), found
