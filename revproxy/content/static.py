"""Static files: a route's ``static = { root = "www", index = "index.html" }`` answered from
the disk (the rest of the path after ``strip_prefix`` is looked up under ``root``, as nginx's
``alias``).

Rule of this room: nothing outside ``root`` is ever opened, whatever the path says, and
nothing is listed. The exchange hands us a path ``proto/target.py`` already normalised, but
this module is safe on its own (defence in depth):

- the path is split on ``/`` and each segment percent-decoded once (``%252e`` stays the
  literal name ``%2e``); a segment that then holds ``/``, ``\\`` or NUL, a literal backslash,
  a malformed escape, and a ``.`` or ``..`` segment are refused: ``Forbidden`` (403);
- a segment beginning with ``.`` (``.git``, ``.htpasswd``, ``.env``) is ``Missing`` (404):
  dotfiles are never served, and the answer does not say whether one exists;
- the name is resolved with every symlink followed (``os.path.realpath``); when the real path
  is not under the real root it is ``Missing`` (404, not 403: a client must not learn that a
  link is there), and so is a real path whose part under root has a dotfile segment (a link
  to ``.htpasswd``). Links that stay inside root are followed;
- the real path is opened with ``O_NOFOLLOW`` (a link swapped in since is refused) and, on
  Linux, the opened file's own path (``/proc/self/fd``) is checked again to be under root: a
  directory swapped for a link between the check and the open is caught;
- only regular files are served: FIFOs, sockets and devices are ``Missing`` (opened with
  ``O_NONBLOCK`` so that a FIFO swapped in cannot hold the open; the flag means nothing to a
  regular file). A directory is served by its ``index``: asked without the trailing slash it
  is a ``Redirect`` (301 to the path + ``/``, as nginx) when it has the index file, else
  ``Missing``; no index, no listing: ``Missing``.

What ``resolve`` finds is a ``Found``: an open descriptor (the caller closes it), size,
modification time, content type, a strong ETag ``"<mtime_ns hex>-<size hex>"`` and the
Last-Modified date. The content type comes from Python's built-in table
(``mimetypes.MimeTypes()`` without the machine's ``/etc/mime.types``) with a few pinned
entries (``_PINNED``) so that every machine and Python version answers alike; ``text/*``,
JavaScript and JSON say ``charset=utf-8``.

``resolve`` runs its filesystem calls (a few ``lstat``, ``open``, ``fstat``) inline, not in a
thread: on a local disk they cost microseconds from the kernel's caches, less than the hop to
a worker thread. ``plan_response`` is pure: given the request's method and fields and a
``Found`` it says the status (200, 206, 304, 412, 416, or 405 for a method other than GET and
HEAD), the head's fields and the bytes of the file to send (RFC 9110 §13.2.2 order through
``proto/conditional.py``, then ``Range`` through ``proto/ranges.py``).
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from revproxy.errors import LocalResourceError, is_local_shortage
from revproxy.proto.conditional import evaluate
from revproxy.proto.events import Headers
from revproxy.proto.httpdate import format_http_date
from revproxy.proto.ranges import ByteRange, Unsatisfiable, if_range_allows, parse_range

__all__ = [
    "Forbidden",
    "Found",
    "Missing",
    "Plan",
    "Redirect",
    "StaticSite",
    "content_type",
    "plan_response",
]

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Bytes a decoded segment must not hold: they would name another path than the one checked.
_SEPARATORS: Final = (b"/", b"\\", b"\x00")
_OPEN_FLAGS: Final = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
) | getattr(os, "O_CLOEXEC", 0)
# Where Linux shows what an open descriptor is: the opened file's path, checked once more.
_FD_PATHS: Final = "/proc/self/fd/"
_CAN_READ_FD_PATHS: Final = sys.platform == "linux" and os.path.isdir(_FD_PATHS)

# --- content types ---------------------------------------------------------------------------

# Python's own table, not the machine's (``MimeTypes()`` reads no file), then a few entries
# the versions of that table disagree on or lack (RFC 9239: JavaScript is text/javascript;
# RFC 8081: fonts), so that the answer is the same wherever revproxy runs.
_PINNED: Final = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".md": "text/markdown",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".otf": "font/otf",
    ".ttf": "font/ttf",
    ".wasm": "application/wasm",
    ".avif": "image/avif",
}
# A compressed file (``x.tar.gz``) is served as what it is, not as what it holds: no
# Content-Encoding is added, so the type must be the compressor's.
_ENCODED: Final = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}
_CHARSET_TYPES: Final = frozenset({"application/javascript", "application/json"})
_DEFAULT_TYPE: Final = "application/octet-stream"
_types = mimetypes.MimeTypes()
for _ext, _type in _PINNED.items():
    _types.add_type(_type, _ext, strict=True)


def content_type(name: str) -> bytes:
    """The Content-Type of a file named ``name`` (see the module's rule)."""
    kind, encoding = _types.guess_type(name, strict=True)
    if encoding is not None:
        kind = _ENCODED.get(encoding, _DEFAULT_TYPE)
    if kind is None:
        kind = _DEFAULT_TYPE
    if kind.startswith("text/") or kind in _CHARSET_TYPES:
        kind += "; charset=utf-8"
    return kind.encode("ascii")


# --- what resolve finds ----------------------------------------------------------------------


@dataclass(slots=True, kw_only=True, eq=False)
class Found:
    """A regular file under root, open for reading: the caller closes it (``close``)."""

    fd: int
    path: str  # its real path (for logs; never sent to the client)
    size: int
    mtime: int  # seconds since the epoch (Last-Modified)
    mtime_ns: int
    content_type: bytes
    etag: bytes  # strong: "<mtime_ns hex>-<size hex>"
    last_modified: bytes  # IMF-fixdate of mtime
    closed: bool = field(default=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> Found:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Missing:
    """404: nothing to serve here (no such file, a dotfile, a directory without index, a link
    out of root, not a regular file)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Forbidden:
    """403: a path that tries to leave its place (dot segments, encoded separators, NUL,
    backslashes), or a file we may not read."""

    reason: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """301 to the request's path with a ``/`` added (a directory asked without it).

    ``location`` is the path ``resolve`` was given (its slashes merged, escapes as they came)
    plus ``/``: the caller puts back the prefix it stripped and the query."""

    location: bytes


Resolved = Found | Missing | Forbidden | Redirect


class StaticSite:
    """The files under ``root`` (a directory; symlinks in its own path are resolved once)."""

    __slots__ = ("_prefix", "index", "real_root", "root")

    def __init__(self, root: Path, index: str | None) -> None:
        if index is not None and (
            not index or "/" in index or "\\" in index or "\x00" in index or index in (".", "..")
        ):
            raise ValueError(f"static index must be a file name, not {index!r}")
        self.root = root
        self.index = index.encode() if index is not None else None
        real = os.path.realpath(root)
        self.real_root = os.fsencode(real)
        # What a path under root begins with ("/" itself as root: every absolute path).
        self._prefix = self.real_root.rstrip(b"/") + b"/"

    # --- the path ----------------------------------------------------------------------------

    def resolve(self, path: bytes) -> Resolved:
        """What the request path ``path`` (origin-form, the route's prefix stripped; a query
        is cut off) names under root. Raises ``LocalResourceError`` when this process is out
        of descriptors (503: the file is there, we could not open it)."""
        cut = path.find(b"?")
        if cut >= 0:
            path = path[:cut]
        if path and path[:1] != b"/":
            return Forbidden("the path does not begin with /")
        if b"\\" in path or b"\x00" in path:
            return Forbidden("backslash or NUL in the path")
        # "" (a prefix stripped from the whole path) is the root asked without its slash.
        wants_dir = path.endswith(b"/")
        names: list[bytes] = []
        raws: list[bytes] = []
        for raw in path.split(b"/"):
            if not raw:
                continue  # "//" merged, as proto/target.py does
            raws.append(raw)
            name = _unescape(raw)
            if name is None:
                return Forbidden("malformed percent-escape in the path")
            if any(sep in name for sep in _SEPARATORS):
                return Forbidden("encoded slash, backslash or NUL in the path")
            if name in (b".", b".."):
                return Forbidden("dot segment in the path")
            if name[:1] == b".":
                return Missing("dotfile")
            names.append(name)
        candidate = self._prefix + b"/".join(names)
        try:
            real, st = self._real(candidate)
        except _Outside:
            return Missing("resolves outside root")
        except OSError as exc:
            return _failed(exc)
        if stat.S_ISDIR(st.st_mode):
            # The redirect's path: never "//host/" (a link to another site), escapes kept.
            return self._directory(real, b"/" + b"/".join(raws), wants_dir)
        if wants_dir:
            return Missing("a file asked for as a directory")
        if not stat.S_ISREG(st.st_mode):
            return Missing("not a regular file")
        return self._open(real, names[-1])

    def _directory(self, real: bytes, path: bytes, wants_dir: bool) -> Resolved:
        if self.index is None:
            return Missing("a directory, and no index")
        index = real.rstrip(b"/") + b"/" + self.index
        try:
            index_real, st = self._real(index)
        except _Outside:
            return Missing("the index resolves outside root")
        except OSError as exc:
            result = _failed(exc)
            return (
                Missing("a directory without its index") if isinstance(result, Missing) else result
            )
        if not stat.S_ISREG(st.st_mode):
            return Missing("the index is not a regular file")
        if not wants_dir:
            return Redirect(path.rstrip(b"/") + b"/")
        return self._open(index_real, self.index)

    def _real(self, candidate: bytes) -> tuple[bytes, os.stat_result]:
        """The real path of ``candidate`` and its stat; ``_Outside`` unless it is under root
        with no dotfile segment below root."""
        real = os.path.realpath(candidate, strict=True)
        self._check_inside(real)
        return real, os.stat(real, follow_symlinks=False)

    def _check_inside(self, real: bytes) -> None:
        if real == self.real_root:
            return
        if not real.startswith(self._prefix):
            raise _Outside()
        below = real[len(self._prefix) :]
        if any(name[:1] == b"." for name in below.split(b"/")):
            raise _Outside()

    def _open(self, real: bytes, name: bytes) -> Resolved:
        """``real`` opened and checked; its content type is that of ``name``, the name the
        client asked for (a link's own name, as nginx does), not its target's."""
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            return _failed(exc)
        try:
            if _CAN_READ_FD_PATHS:
                self._check_inside(os.fsencode(os.readlink(_FD_PATHS + str(fd))))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _NotRegular()
        except _Outside:
            os.close(fd)
            return Missing("resolves outside root")
        except _NotRegular:
            os.close(fd)
            return Missing("not a regular file")
        except OSError as exc:
            os.close(fd)
            return _failed(exc)
        except BaseException:
            os.close(fd)
            raise
        mtime_ns = st.st_mtime_ns
        mtime = mtime_ns // 1_000_000_000
        return Found(
            fd=fd,
            path=os.fsdecode(real),
            size=st.st_size,
            mtime=mtime,
            mtime_ns=mtime_ns,
            content_type=content_type(os.fsdecode(name)),
            etag=b'"%x-%x"' % (mtime_ns, st.st_size),
            last_modified=format_http_date(mtime),
        )


class _Outside(Exception):
    """A real path not under root (or a dotfile under it)."""


class _NotRegular(Exception):
    """What was opened is not a regular file."""


def _failed(exc: OSError) -> Missing | Forbidden:
    """An OSError of a lookup as the answer it implies."""
    if is_local_shortage(exc):
        raise LocalResourceError(f"cannot open a static file: {exc.strerror}") from exc
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Forbidden("permission denied")
    # ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP (a link swapped in, or a loop), ...
    return Missing(exc.strerror or "not found")


def _unescape(segment: bytes) -> bytes | None:
    """``segment`` with its percent-escapes decoded once; None when one is malformed."""
    if b"%" not in segment:
        return segment
    parts = segment.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            return None
        out.append(int(part[:2], 16))
        out += part[2:]
    return bytes(out)


# --- the response ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A response to send for a ``Found``: its status and head, then ``count`` bytes of the
    file from ``offset`` (0: no body — HEAD, 304, 412, 416, 405)."""

    status: int
    headers: Headers
    offset: int = 0
    count: int = 0


_METHODS: Final = (b"GET", b"HEAD")


def plan_response(
    method: bytes, request_headers: Iterable[tuple[bytes, bytes]], found: Found
) -> Plan:
    """The response to ``method`` with ``request_headers`` for ``found`` (see the module)."""
    if method not in _METHODS:
        return Plan(
            status=405,
            headers=[(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
        )
    fields = list(request_headers)
    validators: Headers = [
        (b"etag", found.etag),
        (b"last-modified", found.last_modified),
    ]
    status = evaluate(method, fields, etag=found.etag, last_modified=found.mtime)
    if status == 304:
        # §15.4.5: a 304 carries the fields a 200 would have that guide caches (ETag; the
        # Last-Modified too), no content and no framing of it.
        return Plan(status=304, headers=validators)
    if status == 412:
        return Plan(status=412, headers=[(b"content-length", b"0")])
    size = found.size
    chosen: ByteRange | Unsatisfiable | None = None
    if method == b"GET":  # §14.2: "GET is the only method for which range handling is defined"
        chosen = _range_asked(fields, found)
    if isinstance(chosen, Unsatisfiable):
        return Plan(
            status=416,
            headers=[
                (b"content-range", chosen.content_range),
                (b"accept-ranges", b"bytes"),
                (b"content-length", b"0"),
            ],
        )
    headers: Headers = [(b"content-type", found.content_type)]
    if chosen is None:
        status, offset, count = 200, 0, size
    else:
        status, offset, count = 206, chosen.first, chosen.length
        headers.append((b"content-range", chosen.content_range))
    headers.append((b"content-length", b"%d" % count))
    headers += validators
    headers.append((b"accept-ranges", b"bytes"))
    if method == b"HEAD":
        count = 0
    return Plan(status=status, headers=headers, offset=offset, count=count)


def _range_asked(
    fields: list[tuple[bytes, bytes]], found: Found
) -> ByteRange | Unsatisfiable | None:
    """The Range field's answer, after If-Range (§13.1.5: "A server MUST ignore an If-Range
    header field received in a request that does not contain a Range header field")."""
    ranges = [value for name, value in fields if name.lower() == b"range"]
    if len(ranges) != 1:
        return None  # absent, or sent twice: a singleton field we cannot read
    if_range = [value for name, value in fields if name.lower() == b"if-range"]
    if if_range and (
        len(if_range) != 1 or not if_range_allows(if_range[0], found.etag, found.mtime)
    ):
        return None
    return parse_range(ranges[0], found.size)
