"""``[global] buffer_size``: what one connection may hold for a peer that does not take it."""

from __future__ import annotations

import pytest

from revproxy.config.load import load_config_text
from revproxy.config.model import Global
from revproxy.errors import ConfigError

BASE = """
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
pool = "web"

[pool.web]
servers = ["127.0.0.1:9000"]
"""


def test_the_default_is_64_kib() -> None:
    config = load_config_text([("conf/10-test.toml", BASE)])
    assert config.global_.buffer_size == Global().buffer_size == 64 * 1024


def test_a_size_is_read_with_its_unit() -> None:
    text = '[global]\nbuffer_size = "256k"\n' + BASE
    config = load_config_text([("conf/10-test.toml", text)])
    assert config.global_.buffer_size == 256 * 1024


@pytest.mark.parametrize("value", ['"1k"', '"64m"', '"lots"', "-1"])
def test_a_size_out_of_bounds_is_refused(value: str) -> None:
    text = f"[global]\nbuffer_size = {value}\n" + BASE
    with pytest.raises(ConfigError) as caught:
        load_config_text([("conf/10-test.toml", text)])
    assert any("global.buffer_size" in str(p) for p in caught.value.problems)
