"""``[tunnel.NAME]``, ``{ tunnel = "NAME/EXPOSE" }`` servers, ``mode = "tunnel"`` listeners and
agent.toml: every problem with its file, key path and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from revproxy.config.agent import load_agent_config
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
servers = [{ tunnel = "home/web" }, "10.0.0.1:80"]
[tunnel.home]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text([("conf/10.toml", text)])
    return [str(p) for p in info.value.problems]


def test_tunnel_server_and_section() -> None:
    config = load_config_text([("conf/10.toml", BASE)])
    server = config.pool("web").servers[0]
    assert server.tunnel == "home/web" and str(server) == "tunnel:home/web"
    tunnel = config.tunnel("home")
    assert tunnel is not None and tunnel.stream_window == 4 * 1024 * 1024
    assert config.listener("tunnel").mode == "tunnel"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('"home/web"', '"other/web"'), 'pool.web.servers[0].tunnel: no tunnel named "other"'),
        (('"home/web"', '"home"'), "pool.web.servers[0].tunnel"),
        (('{ tunnel = "home/web" }', '{ tunnel = "home/web", address = "1.2.3.4:80" }'),
         "pool.web.servers[0].address: a tunnel server has no address"),
        (('state_dir = "/var/lib/revproxy"', ""), "global.state_dir"),
        (('mode = "tunnel"', 'mode = "tunnel"\ntls = { cert_dir = "/x" }'),
         "listener[1].tls: not on a tunnel listener"),
        (("[tunnel.home]", "[tunnel.home]\nstream_window = 10"), "tunnel.home.stream_window"),
        (("[tunnel.home]", "[tunnel.home]\nbogus = 1"), "tunnel.home.bogus"),
    ],
)  # fmt: skip
def test_problems(change: tuple[str, str], expected: str) -> None:
    found = problems(BASE.replace(*change))
    assert any(expected in p and p.startswith("conf/10.toml") for p in found), found


def test_tunnel_without_listener() -> None:
    text = BASE.replace('[[listener]]\nname = "tunnel"\nbind = [":8443"]\nmode = "tunnel"\n', "")
    assert any("agents need a listener to dial in" in p for p in problems(text))



# --- ``[[listener]] tunnel = true``: agents on the sites' TLS listener, told apart by ALPN ------

_SITES_TLS = 'bind = [":8080"]\ntls = { cert_dir = "/etc/revproxy/certs" }\ntunnel = true'


def test_shared_port_is_off_by_default() -> None:
    config = load_config_text([("conf/10.toml", BASE)])
    assert config.listener("web").tunnel is False


def test_shared_port_on_a_tls_http_listener() -> None:
    config = load_config_text([("conf/10.toml", BASE.replace('bind = [":8080"]', _SITES_TLS))])
    assert config.listener("web").tunnel is True


def test_shared_port_is_a_listener_agents_dial() -> None:
    text = BASE.replace('[[listener]]\nname = "tunnel"\nbind = [":8443"]\nmode = "tunnel"\n', "")
    config = load_config_text([("conf/10.toml", text.replace('bind = [":8080"]', _SITES_TLS))])
    assert config.listener("web").tunnel is True
    assert all(lst.mode != "tunnel" for lst in config.listeners)


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
def test_shared_port_problems(change: tuple[str, str], expected: str) -> None:
    found = problems(BASE.replace(*change))
    assert any(expected in p for p in found), found

AGENT = """
server = "edge.example.com:8443"
name = "home"
credentials = "creds"
[[expose]]
name = "web"
target = "127.0.0.1:8080"
[[expose]]
name = "ssh"
target = "127.0.0.1:22"
mode = "tcp"
"""


def test_agent_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    config = load_agent_config(path)
    assert config.servers == (("edge.example.com", 8443),)
    assert config.credentials == tmp_path / "creds"
    assert [(e.name, e.port, e.mode) for e in config.exposes] == [
        ("web", 8080, "http"),
        ("ssh", 22, "tcp"),
    ]
    assert config.connections == 2


def test_agent_forward(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        AGENT
        + '[[forward]]\nlisten = "127.0.0.1:5432"\negress = "partners"\n'
        + 'destination = "db.example.com:5432"\n'
        + '[[forward]]\nlisten = "[::1]:6000"\negress = "partners"\n'
        + 'destination = "[2001:db8::1]:6000"\n'
    )
    config = load_agent_config(path)
    assert [(f.address, f.egress, f.destination) for f in config.forwards] == [
        (("127.0.0.1", 5432), "partners", "db.example.com:5432"),
        (("::1", 6000), "partners", "[2001:db8::1]:6000"),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('server = "edge.example.com:8443"', ""), ": server: required"),
        (('server = "edge.example.com:8443"', 'server = ["a:1", "b"]'), "server[1]"),
        (('mode = "tcp"', 'mode = "udp"'), "expose[1].mode"),
        (('target = "127.0.0.1:22"', 'target = "nowhere"'), "expose[1].target"),
        (('name = "ssh"', 'name = "web"'), 'expose[1].name: expose "web" is declared twice'),
        (('name = "home"', 'name = "a/b"'), "name: tunnel name"),
        (("credentials", "credentialz"), "credentialz"),
        (("", '[[forward]]\nlisten = "127.0.0.1:5432"\negress = "p"\ndestination = "db"\n'),
         "forward[0].destination: destination \"db\" is not HOST:PORT"),
        (("", '[[forward]]\nlisten = "nowhere"\negress = "p"\ndestination = "db:5432"\n'),
         "forward[0].listen"),
        (("", '[[forward]]\nlisten = "127.0.0.1:1"\negress = "a b"\ndestination = "db:1"\n'),
         "forward[0].egress: egress name"),
        (("", '[[forward]]\nlisten = "127.0.0.1:1"\ndestination = "db:1"\n'),
         "forward[0].egress: required"),
        (("", '[[forward]]\nlisten = "127.0.0.1:1"\negress = "p"\ndestination = "db:1"\n'
              '[[forward]]\nlisten = "127.0.0.1:1"\negress = "p"\ndestination = "db:2"\n'),
         "forward[1].listen: \"127.0.0.1:1\" is used by another [[forward]]"),
    ],
)  # fmt: skip
def test_agent_problems(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = tmp_path / "agent.toml"
    text = AGENT.replace(*change) if change[0] else AGENT + change[1]
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    found = [str(p) for p in info.value.problems]
    assert any(expected in p and str(path) in p for p in found), found


def test_tunnel_egress_names() -> None:
    text = BASE.replace("[tunnel.home]\n", '[tunnel.home]\negress = ["partners", "nope"]\n')
    text += '[egress.partners]\ndestinations = ["db.example.com"]\n'
    assert problems(text) == [
        'conf/10.toml: tunnel.home.egress[1]: no egress named "nope" (defined egress: partners)'
    ]
    ok = BASE.replace("[tunnel.home]\n", '[tunnel.home]\negress = ["partners"]\n')
    ok += '[egress.partners]\ndestinations = ["db.example.com"]\n'
    assert load_config_text([("conf/10.toml", ok)]).tunnel("home").egress == ("partners",)  # type: ignore[union-attr]
    bad = BASE.replace("[tunnel.home]\n", "[tunnel.home]\negress = [1]\n")
    assert any("tunnel.home.egress[0]" in p for p in problems(bad))
