"""The access log's [global] keys: formats, templates, clocks, facilities and targets, each
bad value named by file, key path and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from revproxy.config.load import load_config_text
from revproxy.errors import ConfigError

BASE = '[[listener]]\nname = "web"\nbind = ":80"\n[[route]]\nrespond = { status = 200 }\n'
FILE = "conf/10-test.toml"

ERRORS = [
    ('access_log_format = "{time} {nope}"', "global.access_log_format: {nope} is not a log field"),
    ('access_log_format = "{time:>10}"',
     "global.access_log_format: {time}: no format spec or conversion"),
    ('access_log_format = "{time"', "global.access_log_format: '{time': expected '}'"),
    ('access_log_format = "{}"', "global.access_log_format: {} is not a log field"),
    ('log_time = "tokyo"', 'global.log_time: expected one of "utc", "local", got "tokyo"'),
    ('facility = "local9"', 'global.facility: expected one of "kern", "user"'),
    ('access_log = "syslog:udp://127.0.0.1:99999"',
     "global.access_log: 'syslog:udp://127.0.0.1:99999': expected \"syslog:udp://HOST:PORT\""),
    ('access_log = "syslog:udp://a b:514"', "global.access_log: 'syslog:udp://a b:514'"),
    ('access_log = "syslog:unix:relative"', 'expected "syslog:unix:/absolute/path"'),
    ('access_log = "/nonexistent/a.log"', "global.access_log: /nonexistent does not exist"),
    ('access_log = "/tmp"', "global.access_log: /tmp is a directory"),
]  # fmt: skip


@pytest.mark.parametrize(("snippet", "expected"), ERRORS)
def test_one_problem(snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text([(FILE, BASE + "[global]\n" + snippet + "\n")])
    found = [str(p) for p in caught.value.problems]
    assert len(found) == 1, found
    assert found[0].startswith(f"{FILE}: ") and expected in found[0], found


@pytest.mark.parametrize(
    ("snippet", "key", "value"),
    [
        ('access_log_format = "combined"', "access_log_format", "combined"),
        ('access_log_format = "{time} {{x}} {client}:{client_port}"', "access_log_format",
         "{time} {{x}} {client}:{client_port}"),
        ('log_time = "local"', "log_time", "local"),
        ('facility = "daemon"', "facility", "daemon"),
        ('access_log = "syslog:udp://[::1]:514"', "access_log", "syslog:udp://[::1]:514"),
        ('access_log = "syslog:udp://logs.internal:514"', "access_log",
         "syslog:udp://logs.internal:514"),
    ],
)  # fmt: skip
def test_good_values(snippet: str, key: str, value: str) -> None:
    config = load_config_text([(FILE, BASE + "[global]\n" + snippet + "\n")])
    assert getattr(config.global_, key) == value


def test_unwritable_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    import os

    if os.access(folder, os.W_OK):
        pytest.skip("running as root: every folder is writable")
    with pytest.raises(ConfigError, match="is not writable by this user"):
        load_config_text([(FILE, BASE + f'[global]\naccess_log = "{folder}/a.log"\n')])
