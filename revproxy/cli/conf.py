"""Where the configuration lives and how every command loads it.

Rule of this room: one way to load. ``revproxy check``, ``run``, ``reload`` and ``cert`` read
the same files with the same checks, so a configuration ``check`` accepts is one ``run``
starts with; certificate pairs are read here (``certs.files``), since ``revproxy.config``
imports no part above it. The serving process (``serving=True``) has the same functions read
them in a child process (``certs.probe``): it never loads cryptography.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from revproxy.certs.files import cert_pair_problem
from revproxy.certs.probe import load_checked
from revproxy.config.load import load_config, load_config_text
from revproxy.config.model import Config


def default_conf_dir() -> Path:
    """``./conf`` in a checkout, ``/etc/revproxy`` when installed."""
    here = Path.cwd()
    if (here / "conf").is_dir() and (here / "pyproject.toml").is_file():
        return here / "conf"
    return Path("/etc/revproxy")


def load(conf_dir: Path, *, serving: bool = False) -> Config:
    """``conf_dir/*.toml`` → Config, certificate pairs read too; raises ConfigError."""
    if serving:
        return load_checked(lambda check: load_config(conf_dir, check_cert_pair=check))
    return load_config(conf_dir, check_cert_pair=cert_pair_problem)


def load_text(files: Sequence[tuple[str, str]], *, serving: bool = False) -> Config:
    """(file name, TOML text) pairs → Config, as ``load`` reads a folder."""
    if serving:
        return load_checked(lambda check: load_config_text(files, check_cert_pair=check))
    return load_config_text(files, check_cert_pair=cert_pair_problem)
