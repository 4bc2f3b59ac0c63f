"""Certificates read by a child process (``certs/probe.py``) and the session-ticket HKDF.

Every reading is compared with what the in-process functions (``load_cert_pair``,
``scan_cert_dir``, ``cert_pair_problem``, ``load_config``) say about the same files, word for
word; the child is the real ``python -m revproxy.certs.probe``. The HKDF is checked against
RFC 5869's SHA-256 vectors and against cryptography's HKDF.
"""

from __future__ import annotations

import os
import shutil
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from revproxy.certs import probe
from revproxy.certs.files import (
    DEFAULT_CERT_COMMON_NAME,
    cert_pair_problem,
    generate_self_signed,
    load_cert_pair,
    scan_cert_dir,
)
from revproxy.config.load import load_config_text
from revproxy.edge.tls import TICKET_KEYS_SIZE, hkdf_sha256, ticket_keys_from
from revproxy.errors import CertificateError, ConfigError

# --- HKDF ---------------------------------------------------------------------------------

# RFC 5869 appendix A, test cases 1 to 3 (SHA-256): IKM, salt, info, L, OKM.
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_hkdf_rfc5869_vectors(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    got = hkdf_sha256(
        bytes.fromhex(ikm), length=length, info=bytes.fromhex(info), salt=bytes.fromhex(salt)
    )
    assert got.hex() == okm


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 80, 255 * 32])
@pytest.mark.parametrize("salt", [b"", b"salt", bytes(32), b"s" * 100])
def test_hkdf_matches_cryptography(length: int, salt: bytes) -> None:
    secret = os.urandom(48)
    info = b"revproxy test " + length.to_bytes(2, "big")
    theirs = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info)
    assert hkdf_sha256(secret, length=length, info=info, salt=salt) == theirs.derive(secret)


def test_ticket_keys_are_what_cryptography_derived() -> None:
    # The keys a running instance hands its workers must not change with the implementation.
    secret = b"-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n"
    theirs = HKDF(
        algorithm=hashes.SHA256(),
        length=TICKET_KEYS_SIZE,
        salt=None,
        info=b"revproxy tls session ticket keys v1",
    )
    assert ticket_keys_from(secret) == theirs.derive(secret)


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_hkdf_refuses_lengths_rfc5869_does_not_allow(length: int) -> None:
    with pytest.raises(ValueError):
        hkdf_sha256(b"secret", length=length, info=b"")


# --- certificate files --------------------------------------------------------------------


def pair_in(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """certbot's layout: <folder>/fullchain.pem + privkey.pem, self-signed for ``names``."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    generate_self_signed(names, cert, key)
    return cert, key


def _other_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _encrypt_key(cert: Path, key: Path) -> None:
    k = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


def _cert_is_dir(cert: Path, key: Path) -> None:
    cert.unlink()
    cert.mkdir()


def _unreadable_key(cert: Path, key: Path) -> None:
    key.chmod(0)


BAD_CERT_PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
BAD_KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"

SPOILED: list[tuple[str, Callable[[Path, Path], object]]] = [
    ("fine", lambda c, k: None),
    ("cert missing", lambda c, k: c.unlink()),
    ("key missing", lambda c, k: k.unlink()),
    ("cert is a folder", _cert_is_dir),
    ("cert garbage", lambda c, k: c.write_bytes(b"\x00junk")),
    ("cert is a key", lambda c, k: c.write_bytes(k.read_bytes())),
    (
        "cert malformed",
        lambda c, k: c.write_bytes(BAD_CERT_PEM),
    ),
    ("key is a cert", lambda c, k: k.write_bytes(c.read_bytes())),
    (
        "key malformed",
        lambda c, k: k.write_bytes(BAD_KEY_PEM),
    ),
    ("key of another cert", lambda c, k: k.write_bytes(_other_key())),
    ("key encrypted", _encrypt_key),
    ("key unreadable", _unreadable_key),
]


def in_process(cert: Path, key: Path) -> object:
    try:
        return load_cert_pair(cert, key)
    except CertificateError as exc:
        return f"refused: {exc}"


def in_child(reading: probe.CertReading, cert: Path, key: Path) -> object:
    try:
        return reading.pair(cert, key)
    except CertificateError as exc:
        return f"refused: {exc}"


def test_child_reads_pairs_as_load_cert_pair_does(tmp_path: Path) -> None:
    pairs = []
    for i, (_case, spoil) in enumerate(SPOILED):
        cert, key = pair_in(tmp_path / f"site{i}", [f"site{i}.test", f"*.site{i}.test"])
        spoil(cert, key)
        pairs.append((cert, key))
    reading = probe.read_certs(pairs)
    for (case, _spoil), (cert, key) in zip(SPOILED, pairs, strict=True):
        if case == "key unreadable" and os.access(key, os.R_OK):
            continue  # root reads any file: nothing to compare
        assert in_child(reading, cert, key) == in_process(cert, key), case
        assert reading.problem(cert, key) == cert_pair_problem(cert, key), case
    assert reading.pair(*pairs[0]).names == ("site0.test", "*.site0.test")


def test_child_scans_cert_dir_as_scan_cert_dir_does(tmp_path: Path) -> None:
    live = tmp_path / "live"
    archive = tmp_path / "archive" / "good.test"
    chain, key = pair_in(archive, ["good.test", "www.good.test"])
    (live / "good.test").mkdir(parents=True)
    (live / "good.test" / "fullchain.pem").symlink_to(chain)
    (live / "good.test" / "privkey.pem").symlink_to(key)
    pair_in(live / "mismatch.test", ["mismatch.test"])
    (live / "mismatch.test" / "privkey.pem").write_bytes(_other_key())
    pair_in(live / "half.test", ["half.test"])
    (live / "half.test" / "privkey.pem").unlink()
    (live / "README").write_text("certbot's note\n")
    (tmp_path / "file").write_text("")
    dirs = [live, tmp_path / "nothing", tmp_path / "file"]
    reading = probe.read_certs((), dirs)
    for d in dirs:
        assert reading.cert_dir(d) == scan_cert_dir(d)
    certs, errors = reading.cert_dir(live)
    assert [c.names for c in certs] == [("good.test", "www.good.test")]
    assert len(errors) == 2


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: Any) -> None:
    children: list[dict[str, Any]] = []
    real = probe._ask_child

    def counted(request: dict[str, Any]) -> dict[str, Any]:
        children.append(request)
        return real(request)

    monkeypatch.setattr(probe, "_ask_child", counted)
    cert, key = pair_in(tmp_path / "a", ["a.test"])
    first = probe.read_certs([(cert, key)], [tmp_path])
    again = probe.read_certs([(cert, key)], [tmp_path])
    assert len(children) == 1
    assert again.pair(cert, key) == first.pair(cert, key)
    assert again.cert_dir(tmp_path) == first.cert_dir(tmp_path)

    # A renewal: new files under the same names are read (only they: the folder is kept
    # apart from the pair, but it holds the pair, so it is read again too).
    old_serial = first.pair(cert, key).serial
    generate_self_signed(["a.test"], cert, key)
    renewed = probe.read_certs([(cert, key)], [tmp_path])
    assert len(children) == 2
    assert renewed.pair(cert, key).serial != old_serial == first.pair(cert, key).serial
    assert renewed.cert_dir(tmp_path) == scan_cert_dir(tmp_path)

    # A pair that went missing is read again, and refused as load_cert_pair refuses it.
    key.unlink()
    gone = probe.read_certs([(cert, key)])
    assert len(children) == 3
    assert gone.problem(cert, key) == cert_pair_problem(cert, key) != ""


def test_a_child_that_cannot_run_refuses_naming_the_files(tmp_path: Path, monkeypatch: Any) -> None:
    cert, key = pair_in(tmp_path / "site", ["site.test"])
    false = shutil.which("false")
    assert false is not None
    for executable, why in [
        (false, "exited with status 1"),
        (str(tmp_path / "no-python"), "cannot run"),
        ("", "sys.executable is not known"),
    ]:
        monkeypatch.setattr(sys, "executable", executable)
        reading = probe.read_certs([(cert, key)], [tmp_path])
        problem = reading.problem(cert, key)
        assert problem.startswith(
            f"certificate file {cert} and private key file {key} could not be read: "
        )
        assert why in problem and "-m revproxy.certs.probe" in problem
        with pytest.raises(CertificateError, match="could not be read"):
            reading.cert_dir(tmp_path)
        with pytest.raises(CertificateError, match="default certificate could not be made"):
            probe.generate_default_cert()
    monkeypatch.undo()
    # A failure is not remembered: with the interpreter back, the files are read.
    assert probe.read_certs([(cert, key)]).pair(cert, key).names == ("site.test",)


def test_default_certificate_from_the_child_names_nothing(tmp_path: Path) -> None:
    cert_pem, key_pem = probe.generate_default_cert()
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        DEFAULT_CERT_COMMON_NAME
    ]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")


# --- the configuration, checked through the child -----------------------------------------


def _config_files(
    good: tuple[Path, Path], bad: tuple[Path, Path], cert_dir: Path
) -> list[tuple[str, str]]:
    return [
        (
            "10-test.toml",
            f"""
[[listener]]
name = "tls"
bind = "127.0.0.1:8443"
tls = {{ cert_dir = "{cert_dir}", certs = [
    {{ cert = "{good[0]}", key = "{good[1]}" }},
    {{ cert = "{bad[0]}", key = "{bad[1]}" }},
] }}

[[route]]
pool = "app"

[pool.app]
servers = ["127.0.0.1:8080"]
tls = {{ verify = false, cert = "{bad[0]}", key = "{bad[1]}" }}
bogus = 1
""",
        )
    ]


@pytest.mark.parametrize("other_problem", [True, False])
def test_checked_load_reports_what_the_in_process_check_reports(
    tmp_path: Path, other_problem: bool
) -> None:
    # With another problem the first reading fails on its own; without, only the pairs'
    # refusals (found after it) make the configuration fail.
    good = pair_in(tmp_path / "good", ["good.test"])
    bad = pair_in(tmp_path / "bad", ["bad.test"])
    bad[1].write_bytes(_other_key())
    files = _config_files(good, bad, tmp_path / "live")
    if not other_problem:
        files = [(name, text.replace("bogus = 1\n", "")) for name, text in files]
    with pytest.raises(ConfigError) as here:
        load_config_text(files, check_cert_pair=cert_pair_problem)
    with pytest.raises(ConfigError) as there:
        probe.load_checked(lambda check: load_config_text(files, check_cert_pair=check))
    assert [str(p) for p in there.value.problems] == [str(p) for p in here.value.problems]
    assert sum("does not match" in str(p) for p in here.value.problems) == 2


def test_checked_load_of_a_good_configuration_is_the_same_config(tmp_path: Path) -> None:
    good = pair_in(tmp_path / "good", ["good.test"])
    other = pair_in(tmp_path / "other", ["other.test"])
    files = _config_files(good, other, tmp_path / "live")
    files = [(name, text.replace("bogus = 1\n", "")) for name, text in files]
    expected = load_config_text(files, check_cert_pair=cert_pair_problem)
    got = probe.load_checked(lambda check: load_config_text(files, check_cert_pair=check))
    assert got == expected


def test_run_says_so_when_the_default_certificate_cannot_be_made(
    monkeypatch: Any, capsys: Any
) -> None:
    """``revproxy run`` with no child process possible: one line and exit 1, no traceback."""
    import asyncio

    from revproxy.cli import main

    false = shutil.which("false")
    assert false is not None
    monkeypatch.setattr(sys, "executable", false)

    def loader() -> None:
        raise AssertionError("the configuration is read after the default certificate")

    assert asyncio.run(main._serve(loader, None, False)) == main.EXIT_RUNTIME
    err = capsys.readouterr().err
    assert err.startswith("revproxy: the default certificate could not be made: ")
    assert "Traceback" not in err
