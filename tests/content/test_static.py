"""Static files (content/static.py): what a path names under root, the attacks on it, content
types, and the response planned for a request — on real files in a temporary folder (never
the machine's own files)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revproxy.content import static
from revproxy.content.static import (
    Forbidden,
    Found,
    Missing,
    Redirect,
    StaticSite,
    content_type,
    plan_response,
)
from revproxy.errors import LocalResourceError
from revproxy.proto.httpdate import format_http_date

INDEX = b"<!doctype html><title>home</title>\n"
A_TXT = b"0123456789" * 100
SECRET = b"root:x:0:0:secret outside root\n"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[StaticSite, Path]]:
    """root ``www`` beside a folder ``outside`` that must never be served."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    (outside / "dir").mkdir()
    (outside / "dir" / "index.html").write_bytes(SECRET)
    (outside / "dir" / "x.txt").write_bytes(SECRET)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_bytes(INDEX)
    (www / "a.txt").write_bytes(A_TXT)
    (www / "empty.bin").write_bytes(b"")
    (www / "css").mkdir()
    (www / "css" / "site.css").write_bytes(b"body{}")
    (www / "css" / "index.html").write_bytes(b"css home")
    (www / "noindex").mkdir()
    (www / "noindex" / "x.js").write_bytes(b"let x")
    (www / ".htpasswd").write_bytes(SECRET)
    (www / ".git").mkdir()
    (www / ".git" / "config").write_bytes(SECRET)
    (www / "%2e").write_bytes(b"a file named %2e")
    (www / "caf\u00e9.txt").write_bytes(b"accent")
    (www / "a b.txt").write_bytes(b"space")
    os.mkfifo(www / "fifo")
    os.symlink(outside / "passwd", www / "passwd_link")  # a link out of root
    os.symlink("../outside/dir", www / "dir_link")  # a directory link out of root
    os.symlink("a.txt", www / "inside_link.html")  # a link inside root: followed
    os.symlink("css", www / "css_link")
    os.symlink(".htpasswd", www / "dot_link")  # a link to a dotfile: refused too
    os.symlink("/dev/null", www / "device_link")
    os.symlink("loop2", www / "loop1")
    os.symlink("loop1", www / "loop2")
    os.symlink("nowhere", www / "dangling")
    yield StaticSite(www, "index.html"), tmp_path


def found(result: object) -> Found:
    assert isinstance(result, Found), result
    return result


def read_all(f: Found) -> bytes:
    try:
        return os.pread(f.fd, f.size + 1, 0)
    finally:
        f.close()


# --- what a path names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        (b"/a.txt", A_TXT, b"text/plain; charset=utf-8"),
        (b"/", INDEX, b"text/html; charset=utf-8"),
        (b"/index.html", INDEX, b"text/html; charset=utf-8"),
        (b"/css/site.css", b"body{}", b"text/css; charset=utf-8"),
        (b"/css/", b"css home", b"text/html; charset=utf-8"),
        (b"/noindex/x.js", b"let x", b"text/javascript; charset=utf-8"),
        (b"//css//site.css", b"body{}", b"text/css; charset=utf-8"),
        (b"/%61.txt", A_TXT, b"text/plain; charset=utf-8"),  # an unreserved escape
        (b"/caf%C3%A9.txt", b"accent", b"text/plain; charset=utf-8"),
        (b"/a%20b.txt", b"space", b"text/plain; charset=utf-8"),
        (b"/%252e", b"a file named %2e", b"application/octet-stream"),  # decoded once only
        (b"/inside_link.html", A_TXT, b"text/html; charset=utf-8"),  # the asked name's type
        (b"/css_link/site.css", b"body{}", b"text/css; charset=utf-8"),
        (b"/a.txt?x=1", A_TXT, b"text/plain; charset=utf-8"),
        (b"/empty.bin", b"", b"application/octet-stream"),
    ],
)
def test_found(site: tuple[StaticSite, Path], path: bytes, body: bytes, kind: bytes) -> None:
    s, _ = site
    f = found(s.resolve(path))
    assert f.content_type == kind
    assert f.size == len(body)
    assert read_all(f) == body
    assert f.closed


def test_found_carries_its_validators(site: tuple[StaticSite, Path]) -> None:
    s, tmp = site
    os.utime(tmp / "www" / "a.txt", ns=(1_000_000_000, 784111777_123456789))
    with found(s.resolve(b"/a.txt")) as f:
        assert f.mtime == 784111777
        assert f.mtime_ns == 784111777_123456789
        assert f.etag == b'"%x-%x"' % (784111777_123456789, len(A_TXT))
        assert f.last_modified == b"Sun, 06 Nov 1994 08:49:37 GMT"
        assert f.path == str(tmp / "www" / "a.txt")
    assert f.closed
    f.close()  # twice is harmless


def test_the_etag_changes_with_the_file(site: tuple[StaticSite, Path]) -> None:
    s, tmp = site
    with found(s.resolve(b"/a.txt")) as before:
        pass
    (tmp / "www" / "a.txt").write_bytes(A_TXT + b"!")
    with found(s.resolve(b"/a.txt")) as after:
        assert after.etag != before.etag


@pytest.mark.parametrize(
    ("path", "location"),
    [
        (b"/css", b"/css/"),
        (b"/css_link", b"/css_link/"),
        (b"", b"/"),  # the root, its prefix stripped (``/static`` → ``/static/``)
        (b"/c%73s", b"/c%73s/"),  # the path as it came
        (b"//css", b"/css/"),  # never "//css/": a link to the host "css"
        (b"///css_link", b"/css_link/"),
    ],
)
def test_a_directory_without_its_slash_is_redirected(
    site: tuple[StaticSite, Path], path: bytes, location: bytes
) -> None:
    s, _ = site
    assert s.resolve(path) == Redirect(location)


@pytest.mark.parametrize(
    "path",
    [
        b"/nope",
        b"/nope/",
        b"/css/nope.css",
        b"/a.txt/",  # a file asked for as a directory
        b"/a.txt/x",
        b"/noindex/",  # a directory without its index: no listing
        b"/noindex",
        b"/fifo",  # not a regular file
        b"/device_link",
        b"/loop1",
        b"/dangling",
    ],
)
def test_missing(site: tuple[StaticSite, Path], path: bytes) -> None:
    s, _ = site
    assert isinstance(s.resolve(path), Missing)


def test_without_index_a_directory_is_missing(site: tuple[StaticSite, Path]) -> None:
    _, tmp = site
    s = StaticSite(tmp / "www", None)
    for path in (b"/", b"/css/", b"/css", b""):
        assert isinstance(s.resolve(path), Missing)
    found(s.resolve(b"/a.txt")).close()


def test_an_index_that_is_no_file_is_missing(site: tuple[StaticSite, Path]) -> None:
    _, tmp = site
    (tmp / "www" / "css" / "dir.html").mkdir()
    s = StaticSite(tmp / "www", "dir.html")
    assert isinstance(s.resolve(b"/css/"), Missing)
    assert isinstance(s.resolve(b"/css"), Missing)


@pytest.mark.parametrize("index", ["", "a/b", "..", ".", "a\x00", "a\\b"])
def test_the_index_is_a_file_name(tmp_path: Path, index: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        StaticSite(tmp_path, index)


def test_a_root_that_is_a_link(site: tuple[StaticSite, Path]) -> None:
    _, tmp = site
    os.symlink("www", tmp / "www_link")
    s = StaticSite(tmp / "www_link", "index.html")
    assert read_all(found(s.resolve(b"/a.txt"))) == A_TXT
    assert isinstance(s.resolve(b"/passwd_link"), Missing)


# --- attacks ---------------------------------------------------------------------------------

ESCAPES = [
    # Dot segments, plain and encoded.
    b"/../outside/passwd",
    b"/css/../../outside/passwd",
    b"/..",
    b"/.",
    b"/./a.txt",
    b"/css/./site.css",
    b"/%2e%2e/outside/passwd",
    b"/%2E%2E/outside/passwd",
    b"/%2e./outside/passwd",
    b"/.%2e/outside/passwd",
    b"/%2e/a.txt",
    b"/css/%2e%2e/%2e%2e/outside/passwd",
    # Encoded separators: a slash, a backslash, NUL.
    b"/..%2foutside%2fpasswd",
    b"/..%2Foutside/passwd",
    b"/css%2f..%2f..%2foutside%2fpasswd",
    b"/%2fetc%2fpasswd",
    b"/..%5coutside%5cpasswd",
    b"/a.txt%00.html",
    # Literal backslashes and NUL.
    b"/..\\outside\\passwd",
    b"/css\\site.css",
    b"/a.txt\x00.html",
    # Not a path of ours at all.
    b"../outside/passwd",
    b"outside/passwd",
    b"C:/windows",
    # Malformed escapes.
    b"/a%2",
    b"/a%zz.txt",
    b"/%",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_are_forbidden(site: tuple[StaticSite, Path], path: bytes) -> None:
    s, _ = site
    assert isinstance(s.resolve(path), Forbidden)


def test_double_encoding_stays_literal(site: tuple[StaticSite, Path]) -> None:
    s, _ = site
    # %252e%252e is the name "%2e%2e", not "..": there is no such file.
    assert isinstance(s.resolve(b"/%252e%252e/outside/passwd"), Missing)
    assert isinstance(s.resolve(b"/%252e%252e%252foutside%252fpasswd"), Missing)
    found(s.resolve(b"/%252e")).close()  # the file named "%2e" is served


@pytest.mark.parametrize(
    "path",
    [
        b"/.htpasswd",
        b"/.git/config",
        b"/.git/",
        b"/css/.htpasswd",
        b"/%2ehtpasswd",  # an encoded dot is a dot
        b"/dot_link",  # a link to a dotfile
    ],
)
def test_dotfiles_are_missing(site: tuple[StaticSite, Path], path: bytes) -> None:
    s, _ = site
    assert isinstance(s.resolve(path), Missing)


@pytest.mark.parametrize(
    "path",
    [
        b"/passwd_link",  # a file link out of root
        b"/dir_link/",  # a directory link out of root, its index
        b"/dir_link",
        b"/dir_link/x.txt",
        b"/dir_link/index.html",
    ],
)
def test_links_out_of_root_are_missing(site: tuple[StaticSite, Path], path: bytes) -> None:
    s, _ = site
    assert isinstance(s.resolve(path), Missing)


def test_absolute_paths_stay_under_root(site: tuple[StaticSite, Path]) -> None:
    s, tmp = site
    secret = str(tmp / "outside" / "passwd").encode()
    assert isinstance(s.resolve(secret), Missing)  # looked up as root/<that path>
    assert isinstance(s.resolve(b"/" + secret), Missing)


def test_a_file_replaced_by_a_link(site: tuple[StaticSite, Path]) -> None:
    s, tmp = site
    victim = tmp / "www" / "a.txt"
    found(s.resolve(b"/a.txt")).close()
    victim.unlink()
    os.symlink(tmp / "outside" / "passwd", victim)
    assert isinstance(s.resolve(b"/a.txt"), Missing)


def test_a_directory_swapped_for_a_link_while_opening(
    site: tuple[StaticSite, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between the check and the open: the opened file's own path is checked."""
    s, tmp = site
    www = tmp / "www"
    real_open = os.open

    def swapping_open(path: bytes, flags: int, *args: int) -> int:
        if path.endswith(b"/x.txt"):
            (www / "victim").rename(www / "victim_old")
            os.symlink(tmp / "outside" / "dir", www / "victim")
        return real_open(path, flags, *args)

    (www / "victim").mkdir()
    (www / "victim" / "x.txt").write_bytes(b"fine")
    monkeypatch.setattr(os, "open", swapping_open)
    if not static._CAN_READ_FD_PATHS:
        pytest.skip("the opened file's path can be read on Linux only")
    assert isinstance(s.resolve(b"/victim/x.txt"), Missing)


def test_a_last_component_swapped_for_a_link_is_not_followed(
    site: tuple[StaticSite, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, tmp = site
    www = tmp / "www"
    real_open = os.open

    def swapping_open(path: bytes, flags: int, *args: int) -> int:
        (www / "a.txt").unlink()
        os.symlink(tmp / "outside" / "passwd", www / "a.txt")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swapping_open)
    assert isinstance(s.resolve(b"/a.txt"), Missing)  # O_NOFOLLOW: ELOOP


def test_very_long_names(site: tuple[StaticSite, Path]) -> None:
    s, _ = site
    assert isinstance(s.resolve(b"/" + b"a" * 300), Missing)  # NAME_MAX
    assert isinstance(s.resolve(b"/" + b"a" * 255), Missing)
    assert isinstance(s.resolve(b"/a" * 5000), Missing)  # PATH_MAX
    assert isinstance(s.resolve(b"/" + b"%41" * 4000), Missing)
    assert isinstance(s.resolve(b"/..%2f" * 2000), Forbidden)


def test_out_of_descriptors_is_ours(
    site: tuple[StaticSite, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = site

    def no_fds(*_: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "open", no_fds)
    with pytest.raises(LocalResourceError) as caught:
        s.resolve(b"/a.txt")
    assert caught.value.status == 503


def test_permission_denied_is_forbidden(
    site: tuple[StaticSite, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = site

    def denied(*_: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    assert s.resolve(b"/a.txt") == Forbidden("permission denied")


# Segments an attacker would try, and ones that exist.
_SEGMENTS = [
    b"..", b".", b"%2e", b"%2e%2e", b"%2E.", b"%252e%252e", b"..%2f", b"%2f", b"%5c", b"%00",
    b"\\", b"", b"outside", b"passwd", b"passwd_link", b"dir_link", b"css", b"css_link",
    b"a.txt", b"index.html", b".htpasswd", b"dot_link", b"x.txt", b"loop1", b"fifo", b"%",
    b"inside_link.html", b"%2e%2e%2f%2e%2e", b"tmp", b"etc",
]  # fmt: skip


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segments=st.lists(
        st.one_of(st.sampled_from(_SEGMENTS), st.binary(min_size=1, max_size=8)), max_size=8
    ),
    slash=st.booleans(),
    lead=st.sampled_from([b"/", b"//", b""]),
)
def test_nothing_found_is_outside_root(
    site: tuple[StaticSite, Path], segments: list[bytes], slash: bool, lead: bytes
) -> None:
    s, tmp = site
    real_root = os.path.realpath(tmp / "www")
    path = lead + b"/".join(segments) + (b"/" if slash else b"")
    result = s.resolve(path)
    if isinstance(result, Found):
        try:
            real = os.path.realpath(f"/proc/self/fd/{result.fd}")
            assert real.startswith(real_root + os.sep)
            assert os.pread(result.fd, len(SECRET), 0) != SECRET
            below = real[len(real_root) + 1 :]
            assert not any(part.startswith(".") for part in below.split(os.sep))
        finally:
            result.close()
    else:
        assert isinstance(result, Missing | Forbidden | Redirect)


# --- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("index.html", b"text/html; charset=utf-8"),
        ("INDEX.HTM", b"text/html; charset=utf-8"),
        ("a.css", b"text/css; charset=utf-8"),
        ("a.js", b"text/javascript; charset=utf-8"),
        ("a.mjs", b"text/javascript; charset=utf-8"),
        ("a.json", b"application/json; charset=utf-8"),
        ("a.svg", b"image/svg+xml"),
        ("a.png", b"image/png"),
        ("a.webp", b"image/webp"),
        ("a.woff2", b"font/woff2"),
        ("a.wasm", b"application/wasm"),
        ("a.pdf", b"application/pdf"),
        ("a.tar.gz", b"application/gzip"),  # what it is, not what it holds
        ("a.gz", b"application/gzip"),
        ("a.svgz", b"application/gzip"),
        ("a.txt.bz2", b"application/x-bzip2"),
        ("README", b"application/octet-stream"),
        ("a.unknownext", b"application/octet-stream"),
    ],
)
def test_content_types(name: str, kind: bytes) -> None:
    assert content_type(name) == kind


def test_content_types_ignore_the_machines_table(tmp_path: Path) -> None:
    """A machine's mime.types that says otherwise changes nothing."""
    import mimetypes

    table = tmp_path / "mime.types"
    table.write_text("application/x-weird txt css\n")
    mimetypes.init([str(table)])
    try:
        assert content_type("a.txt") == b"text/plain; charset=utf-8"
        assert content_type("a.css") == b"text/css; charset=utf-8"
    finally:
        mimetypes.init()


# --- the response ----------------------------------------------------------------------------


def head(plan: static.Plan) -> dict[bytes, bytes]:
    names = [n for n, _ in plan.headers]
    assert len(names) == len(set(names))
    return dict(plan.headers)


@pytest.fixture
def a_txt(site: tuple[StaticSite, Path]) -> Iterator[Found]:
    s, _ = site
    with found(s.resolve(b"/a.txt")) as f:
        yield f


def test_plain_get(a_txt: Found) -> None:
    plan = plan_response(b"GET", [], a_txt)
    assert (plan.status, plan.offset, plan.count) == (200, 0, len(A_TXT))
    assert head(plan) == {
        b"content-type": b"text/plain; charset=utf-8",
        b"content-length": b"1000",
        b"etag": a_txt.etag,
        b"last-modified": a_txt.last_modified,
        b"accept-ranges": b"bytes",
    }


def test_head_sends_the_same_head_and_no_body(a_txt: Found) -> None:
    get = plan_response(b"GET", [], a_txt)
    plan = plan_response(b"HEAD", [(b"range", b"bytes=0-1")], a_txt)  # no ranges for HEAD
    assert (plan.status, plan.count) == (200, 0)
    assert plan.headers == get.headers


def test_other_methods(a_txt: Found) -> None:
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get"):
        plan = plan_response(method, [(b"if-none-match", a_txt.etag)], a_txt)
        assert plan.status == 405
        assert head(plan) == {b"allow": b"GET, HEAD", b"content-length": b"0"}
        assert plan.count == 0


def test_not_modified(a_txt: Found) -> None:
    for fields in (
        [(b"if-none-match", a_txt.etag)],
        [(b"if-none-match", b'"x", W/' + a_txt.etag)],
        [(b"if-modified-since", a_txt.last_modified)],
        [(b"if-modified-since", format_http_date(a_txt.mtime + 60))],
    ):
        for method in (b"GET", b"HEAD"):
            plan = plan_response(method, fields, a_txt)
            assert plan.status == 304
            assert head(plan) == {b"etag": a_txt.etag, b"last-modified": a_txt.last_modified}
            assert plan.count == 0


def test_modified(a_txt: Found) -> None:
    for fields in (
        [(b"if-none-match", b'"other"')],
        [(b"if-modified-since", format_http_date(a_txt.mtime - 1))],
        [(b"if-none-match", b'"other"'), (b"if-modified-since", a_txt.last_modified)],
    ):
        plan = plan_response(b"GET", fields, a_txt)
        assert (plan.status, plan.count) == (200, len(A_TXT))


def test_precondition_failed(a_txt: Found) -> None:
    for fields in (
        [(b"if-match", b'"other"')],
        [(b"if-match", b"W/" + a_txt.etag)],
        [(b"if-unmodified-since", format_http_date(a_txt.mtime - 1))],
        [(b"if-match", b'"other"'), (b"range", b"bytes=0-1")],
    ):
        plan = plan_response(b"GET", fields, a_txt)
        assert plan.status == 412
        assert head(plan) == {b"content-length": b"0"}
        assert plan.count == 0
    assert plan_response(b"GET", [(b"if-match", a_txt.etag)], a_txt).status == 200


def test_a_range(a_txt: Found) -> None:
    plan = plan_response(b"GET", [(b"range", b"bytes=10-19")], a_txt)
    assert (plan.status, plan.offset, plan.count) == (206, 10, 10)
    fields = head(plan)
    assert fields[b"content-range"] == b"bytes 10-19/1000"
    assert fields[b"content-length"] == b"10"
    assert fields[b"etag"] == a_txt.etag
    assert fields[b"content-type"] == b"text/plain; charset=utf-8"
    plan = plan_response(b"GET", [(b"Range", b"bytes=-100")], a_txt)
    assert (plan.status, plan.offset, plan.count) == (206, 900, 100)


def test_ranges_that_are_ignored(a_txt: Found) -> None:
    for fields in (
        [(b"range", b"bytes=0-1,5-6")],  # several: no multipart, the whole file
        [(b"range", b"lines=0-1")],
        [(b"range", b"bytes=5-1")],
        [(b"range", b"bytes=0-1"), (b"range", b"bytes=0-1")],
    ):
        plan = plan_response(b"GET", fields, a_txt)
        assert (plan.status, plan.offset, plan.count) == (200, 0, len(A_TXT))
        assert b"content-range" not in head(plan)


def test_range_not_satisfiable(a_txt: Found) -> None:
    plan = plan_response(b"GET", [(b"range", b"bytes=1000-")], a_txt)
    assert plan.status == 416
    assert head(plan) == {
        b"content-range": b"bytes */1000",
        b"accept-ranges": b"bytes",
        b"content-length": b"0",
    }
    assert plan.count == 0


def test_if_range(a_txt: Found) -> None:
    ranged = [(b"range", b"bytes=0-9")]
    for validator in (a_txt.etag, a_txt.last_modified):
        plan = plan_response(b"GET", [*ranged, (b"if-range", validator)], a_txt)
        assert (plan.status, plan.count) == (206, 10)
    for validator in (
        b'"old"',
        b"W/" + a_txt.etag,
        format_http_date(a_txt.mtime - 1),
        b"garbage",
    ):
        plan = plan_response(b"GET", [*ranged, (b"if-range", validator)], a_txt)
        assert (plan.status, plan.count) == (200, len(A_TXT))
    # Two If-Range fields: the range is not sent.
    twice = [*ranged, (b"if-range", a_txt.etag), (b"if-range", a_txt.etag)]
    assert plan_response(b"GET", twice, a_txt).status == 200
    # If-Range without Range is ignored.
    assert plan_response(b"GET", [(b"if-range", b'"old"')], a_txt).status == 200


def test_an_empty_file(site: tuple[StaticSite, Path]) -> None:
    s, _ = site
    with found(s.resolve(b"/empty.bin")) as f:
        plan = plan_response(b"GET", [(b"range", b"bytes=0-")], f)
        assert (plan.status, plan.count) == (200, 0)
        assert head(plan)[b"content-length"] == b"0"
