"""Certificate pairs read by a child process, so that the serving process never loads
cryptography.

Rule of this room: the serving process (``revproxy run`` and its workers) learns what
``load_cert_pair`` and ``scan_cert_dir`` say about its certificate files without importing
cryptography, whose Rust binding carries an OpenSSL of its own (about 12 MiB resident in every
process that imports it; docs/performance.md). One child, ``python -m revproxy.certs.probe``
on the same interpreter, runs today's functions on every pair and cert_dir asked for at once
and answers in JSON, so every certificate found and every refusal is the same, word for word,
as ``revproxy check`` reports in-process.

A reading is kept with a digest of the files it read (their bytes, or why they could not be
read; for a cert_dir also its folders): asking again about unchanged files starts no child. So
a reload reads its certificates once (the configuration check, then the generation built from
it), and the certificate watcher reads again only what changed on disk.

A child that cannot run, dies, or answers nonsense refuses every pair and cert_dir it was asked
about, naming the files and why: a reload is rejected and the running certificates stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revproxy.certs.files import CERTBOT_CHAIN, CERTBOT_KEY, LoadedCert
from revproxy.errors import CertificateError, ConfigError

if TYPE_CHECKING:
    from revproxy.config.model import Config
    from revproxy.config.reader import CertPairCheck

__all__ = [
    "PROBE_TIMEOUT",
    "CertReading",
    "config_cert_dirs",
    "generate_default_cert",
    "load_checked",
    "read_certs",
]

MODULE = "revproxy.certs.probe"
# A child that has not answered after this long (s) is killed and its reading refused. It
# reads a few small files; this bounds a hung file system, not normal work.
PROBE_TIMEOUT = 60.0


# --- what one look at the files found ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PairOutcome:
    """``load_cert_pair``'s result: the certificate, or what it raised."""

    cert: LoadedCert | None = None
    refused: str = ""  # a CertificateError's text
    os_error: str = ""  # an OSError's text (load_cert_pair lets none through today)
    failed: bool = False  # refused because the child failed, not for the files: not kept

    def value(self) -> LoadedCert:
        if self.cert is not None:
            return self.cert
        if self.os_error:
            raise OSError(self.os_error)
        raise CertificateError(self.refused)


@dataclass(frozen=True, slots=True)
class _DirOutcome:
    """``scan_cert_dir``'s result, or what stopped it."""

    certs: tuple[LoadedCert, ...] = ()
    errors: tuple[str, ...] = ()
    failed: str = ""  # the child could not read it (a CertificateError's text): not kept
    os_error: str = ""  # scan_cert_dir raised an OSError (an unreadable folder)

    def value(self) -> tuple[list[LoadedCert], list[str]]:
        if self.failed:
            raise CertificateError(self.failed)
        if self.os_error:
            raise OSError(self.os_error)
        return list(self.certs), list(self.errors)


# --- digests of the files a reading depends on ------------------------------------------


def _file_digest(path: Path) -> str:
    """The SHA-256 of the bytes, or why they cannot be read: all ``load_cert_pair`` reads."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"error {exc.errno}"


def _pair_digest(cert: Path, key: Path) -> tuple[str, str]:
    return _file_digest(cert), _file_digest(key)


def _dir_digest(cert_dir: Path) -> tuple[object, ...]:
    """What ``scan_cert_dir`` looks at: the folder, its listing, and in each sub-folder the
    two files (whether they are there, as links or not, and their bytes)."""
    head: tuple[object, ...] = (os.path.lexists(cert_dir), os.path.isdir(cert_dir))
    try:
        names = sorted(os.listdir(cert_dir))
    except OSError as exc:
        return (*head, f"error {exc.errno}")
    entries: list[object] = []
    for name in names:
        folder = cert_dir / name
        chain, key = folder / CERTBOT_CHAIN, folder / CERTBOT_KEY
        entries.append(
            (
                name,
                os.path.isdir(folder),
                os.path.lexists(chain),
                os.path.lexists(key),
                _file_digest(chain),
                _file_digest(key),
            )
        )
    return (*head, tuple(entries))


# Readings kept for files that have not changed since: (digest, outcome) by path. Threads
# ask too (the certificate watcher reloads in one), so the tables are locked; the child runs
# outside the lock.
_lock = threading.Lock()
_pairs: dict[tuple[str, str], tuple[tuple[str, str], _PairOutcome]] = {}
_dirs: dict[str, tuple[tuple[object, ...], _DirOutcome]] = {}
# Entries for files no longer asked about are dropped past this many.
_KEEP = 1024


class CertReading:
    """What the files held when they were read: every pair and cert_dir asked for."""

    def __init__(
        self, pairs: dict[tuple[str, str], _PairOutcome], dirs: dict[str, _DirOutcome]
    ) -> None:
        self._pairs = pairs
        self._dirs = dirs

    def _pair(self, cert: Path, key: Path) -> _PairOutcome:
        found = self._pairs.get((str(cert), str(key)))
        if found is None:  # not asked for: read it now (a configuration that changed)
            return read_certs([(cert, key)])._pairs[(str(cert), str(key))]
        return found

    def pair(self, cert: Path, key: Path) -> LoadedCert:
        """``load_cert_pair(cert, key)``: the certificate, or the CertificateError it raised."""
        return self._pair(cert, key).value()

    def problem(self, cert: Path, key: Path) -> str:
        """``cert_pair_problem(cert, key)``: why the pair cannot serve, "" if it can."""
        outcome = self._pair(cert, key)
        if outcome.os_error:
            return f"cannot read: {outcome.os_error}"
        return outcome.refused

    def cert_dir(self, cert_dir: Path) -> tuple[list[LoadedCert], list[str]]:
        """``scan_cert_dir(cert_dir)``: the certificates and the folders that did not load;
        CertificateError when the child could not read it."""
        found = self._dirs.get(str(cert_dir))
        if found is None:
            found = read_certs((), [cert_dir])._dirs[str(cert_dir)]
        return found.value()


def read_certs(pairs: Iterable[tuple[Path, Path]], cert_dirs: Iterable[Path] = ()) -> CertReading:
    """Every pair and cert_dir as ``load_cert_pair`` and ``scan_cert_dir`` find them: what
    changed since it was last read (or was never read) is read by one child process, the
    rest is the reading kept."""
    want_pairs = {(str(c), str(k)): (c, k) for c, k in pairs}
    want_dirs = {str(d): d for d in cert_dirs}
    pair_digests = {name: _pair_digest(*paths) for name, paths in want_pairs.items()}
    dir_digests = {name: _dir_digest(path) for name, path in want_dirs.items()}
    got_pairs: dict[tuple[str, str], _PairOutcome] = {}
    got_dirs: dict[str, _DirOutcome] = {}
    with _lock:
        for name, digest in pair_digests.items():
            kept = _pairs.get(name)
            if kept is not None and kept[0] == digest:
                got_pairs[name] = kept[1]
        for dname, ddigest in dir_digests.items():
            dkept = _dirs.get(dname)
            if dkept is not None and dkept[0] == ddigest:
                got_dirs[dname] = dkept[1]
    missing_pairs = [paths for name, paths in want_pairs.items() if name not in got_pairs]
    missing_dirs = [path for name, path in want_dirs.items() if name not in got_dirs]
    if missing_pairs or missing_dirs:
        new_pairs, new_dirs = _read_in_child(missing_pairs, missing_dirs)
        got_pairs.update(new_pairs)
        got_dirs.update(new_dirs)
        with _lock:
            if len(_pairs) + len(new_pairs) > _KEEP:
                _pairs.clear()
            if len(_dirs) + len(new_dirs) > _KEEP:
                _dirs.clear()
            # What a failed child could not read is asked for again next time.
            for name, outcome in new_pairs.items():
                if not outcome.failed:
                    _pairs[name] = (pair_digests[name], outcome)
            for dname, doutcome in new_dirs.items():
                if not doutcome.failed:
                    _dirs[dname] = (dir_digests[dname], doutcome)
    return CertReading(got_pairs, got_dirs)


def config_cert_dirs(config: Config) -> list[Path]:
    """The cert_dir of every TLS listener of ``config``."""
    return [
        Path(lst.tls.cert_dir)
        for lst in config.listeners
        if lst.tls is not None and lst.tls.cert_dir is not None
    ]


def load_checked(load: Callable[[CertPairCheck], Config]) -> Config:
    """``load(check)`` with the certificate pairs it names read by one child process.

    The configuration is read once with a check that notes each pair and lets it pass; then
    the pairs and every cert_dir are read together (the generation built next finds them
    read). Only when a pair is refused is the configuration read again with the answers, so
    that each refusal is reported where ``revproxy check`` reports it, among the others.
    """
    named: list[tuple[Path, Path]] = []

    def note(cert: Path, key: Path) -> str:
        named.append((cert, key))
        return ""

    try:
        config = load(note)
    except ConfigError:
        if not named:
            raise
        return load(read_certs(named).problem)  # raises: the same problems and the pairs'
    if not named and not config_cert_dirs(config):
        return config
    reading = read_certs(named, config_cert_dirs(config))
    if any(reading.problem(cert, key) for cert, key in named):
        return load(reading.problem)
    return config


def generate_default_cert() -> tuple[bytes, bytes]:
    """``files.generate_default_cert()`` made by a child process: ``(cert_pem, key_pem)``."""
    try:
        answer = _ask_child({"default_cert": True})
        cert, key = answer["default_cert"]
        return str(cert).encode("ascii"), str(key).encode("ascii")
    except _ChildFailed as failed:
        raise CertificateError(f"the default certificate could not be made: {failed}") from None
    except (KeyError, TypeError, ValueError, UnicodeError):
        raise CertificateError(
            f"the default certificate could not be made: {_child_name()} answered nonsense"
        ) from None


# --- the child and talking to it --------------------------------------------------------


class _ChildFailed(Exception):
    """The child could not be run or gave no usable answer; the text says why."""


def _child_name() -> str:
    return f"{sys.executable or 'python'} -m {MODULE}"


def _ask_child(request: dict[str, Any]) -> dict[str, Any]:
    if not sys.executable:
        raise _ChildFailed(f"{_child_name()} cannot run: sys.executable is not known")
    # The same revproxy as this process: its folder first on the child's path, and not the
    # working directory (-P), which could hold another copy.
    import revproxy

    root = str(Path(revproxy.__file__).parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-m", MODULE],
            input=json.dumps(request).encode("ascii"),
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            env=env,
            check=False,
            # A process group of its own: a SIGHUP or SIGUSR1 sent to the service's whole
            # group (a reload, a log reopen) must not end the reading half-way.
            process_group=0,
        )
    except subprocess.TimeoutExpired:
        raise _ChildFailed(f"{_child_name()} gave no answer in {PROBE_TIMEOUT:g} s") from None
    except OSError as exc:
        raise _ChildFailed(f"{_child_name()} cannot run: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        said = f": {lines[-1]}" if lines else ""
        raise _ChildFailed(f"{_child_name()} exited with status {done.returncode}{said}")
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise _ChildFailed(f"{_child_name()} answered nonsense") from None
    if not isinstance(answer, dict):
        raise _ChildFailed(f"{_child_name()} answered nonsense")
    return answer


def _read_in_child(
    pairs: Sequence[tuple[Path, Path]], cert_dirs: Sequence[Path]
) -> tuple[dict[tuple[str, str], _PairOutcome], dict[str, _DirOutcome]]:
    request = {
        "pairs": [[str(c), str(k)] for c, k in pairs],
        "dirs": [str(d) for d in cert_dirs],
    }
    try:
        answer = _ask_child(request)
        got_pairs = [_pair_from_json(x) for x in answer["pairs"]]
        got_dirs = [_dir_from_json(x) for x in answer["dirs"]]
        if len(got_pairs) != len(pairs) or len(got_dirs) != len(cert_dirs):
            raise _ChildFailed(f"{_child_name()} answered for other files")
    except _ChildFailed as exc:
        why = str(exc)
    except (KeyError, TypeError, ValueError):
        why = f"{_child_name()} answered nonsense"
    else:
        return (
            {(str(c), str(k)): got for (c, k), got in zip(pairs, got_pairs, strict=True)},
            {str(d): got for d, got in zip(cert_dirs, got_dirs, strict=True)},
        )
    return (
        {
            (str(c), str(k)): _PairOutcome(
                refused=f"certificate file {c} and private key file {k} could not be read: {why}",
                failed=True,
            )
            for c, k in pairs
        },
        {str(d): _DirOutcome(failed=f"{d}: could not be read: {why}") for d in cert_dirs},
    )


def _cert_to_json(cert: LoadedCert) -> dict[str, Any]:
    return {
        "cert_path": str(cert.cert_path),
        "key_path": str(cert.key_path),
        "names": list(cert.names),
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "issuer": cert.issuer,
        "subject": cert.subject,
        "serial": cert.serial,
    }


def _cert_from_json(data: dict[str, Any]) -> LoadedCert:
    return LoadedCert(
        cert_path=Path(data["cert_path"]),
        key_path=Path(data["key_path"]),
        names=tuple(str(n) for n in data["names"]),
        not_before=datetime.fromisoformat(data["not_before"]),
        not_after=datetime.fromisoformat(data["not_after"]),
        issuer=str(data["issuer"]),
        subject=str(data["subject"]),
        serial=int(data["serial"]),
    )


def _pair_from_json(data: dict[str, Any]) -> _PairOutcome:
    if "cert" in data:
        return _PairOutcome(cert=_cert_from_json(data["cert"]))
    if "os_error" in data:
        return _PairOutcome(os_error=str(data["os_error"]))
    return _PairOutcome(refused=str(data["refused"]))


def _dir_from_json(data: dict[str, Any]) -> _DirOutcome:
    if "os_error" in data:
        return _DirOutcome(os_error=str(data["os_error"]))
    if "refused" in data:
        return _DirOutcome(failed=str(data["refused"]))
    return _DirOutcome(
        certs=tuple(_cert_from_json(c) for c in data["certs"]),
        errors=tuple(str(e) for e in data["errors"]),
    )


# --- the child ---------------------------------------------------------------------------


def _unexpected(exc: Exception) -> str:
    # What today's in-process reading would have let escape (a bug, not a file's fault): kept
    # as a refusal that says what happened rather than taking the reader down.
    return f"cannot be read: {type(exc).__name__}: {exc}"


def read_request(request: dict[str, Any]) -> dict[str, Any]:
    """The child's work: ``load_cert_pair`` and ``scan_cert_dir`` on what ``request`` names
    (and ``generate_default_cert`` when asked), as JSON-ready values."""
    from revproxy.certs import files

    pairs: list[dict[str, Any]] = []
    for cert, key in request.get("pairs", []):
        try:
            pairs.append({"cert": _cert_to_json(files.load_cert_pair(Path(cert), Path(key)))})
        except CertificateError as refused:
            pairs.append({"refused": str(refused)})
        except OSError as os_error:
            pairs.append({"os_error": str(os_error)})
        except Exception as exc:
            pairs.append({"refused": f"certificate file {cert} {_unexpected(exc)}"})
    dirs: list[dict[str, Any]] = []
    for cert_dir in request.get("dirs", []):
        try:
            found, errors = files.scan_cert_dir(Path(cert_dir))
        except OSError as os_error:
            dirs.append({"os_error": str(os_error)})
        except Exception as exc:
            dirs.append({"refused": f"{cert_dir}: {_unexpected(exc)}"})
        else:
            dirs.append({"certs": [_cert_to_json(c) for c in found], "errors": errors})
    out: dict[str, Any] = {"pairs": pairs, "dirs": dirs}
    if request.get("default_cert"):
        cert_pem, key_pem = files.generate_default_cert()
        out["default_cert"] = [cert_pem.decode("ascii"), key_pem.decode("ascii")]
    return out


def main() -> int:
    """``python -m revproxy.certs.probe``: a JSON request on stdin, the answer on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    if not isinstance(request, dict):
        print(f"{MODULE}: the request must be a JSON object", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(read_request(request)))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
