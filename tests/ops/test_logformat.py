"""Access-log lines: every format has the time, templates fill named fields (``-`` when
unknown), JSON has ISO 8601 times, ``combined`` escapes like nginx."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from revproxy.ops.accesslog import AccessLog, AccessRecord
from revproxy.ops.logformat import Clock, formatter, nginx_escape
from revproxy.proto.events import RequestReceived

T = 1714564800.25  # 2024-05-01T12:00:00.250Z


class Conn:
    client = ("192.0.2.7", 51234)
    tls_version = "TLSv1.3"
    client_subject = "CN=alice,O=Example"


def record(**kw: object) -> AccessRecord:
    req = RequestReceived(
        stream_id=1,
        method=b"GET",
        target=b"/p?q=1",
        authority=b"example.com",
        headers=[(b"host", b"example.com"), (b"user-agent", b"ua/1"), (b"referer", b"http://r/")],
    )
    rec = AccessRecord(
        id="abc1", client="192.0.2.7", peer="10.0.0.1", listener="web", sni="example.com",
        host="example.com", method="GET", path="/p?q=1", status=200, bytes_in=80, bytes_out=130,
        route="route[0]", pool="app", backend="app/10.0.0.5:80", duration_ms=1.25,
        upstream_ms=0.5, request=req, conn=Conn(), head_out=100, time=T,
    )  # fmt: skip
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def test_clock_utc_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Clock("utc").iso(T) == "2024-05-01T12:00:00.250Z"
    assert Clock("utc").nginx(T) == "01/May/2024:12:00:00 +0000"
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert Clock("local").iso(T) == "2024-05-01T21:00:00.250+09:00"
        assert Clock("local").nginx(T) == "01/May/2024:21:00:00 +0900"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_text_starts_with_the_time() -> None:
    line = formatter("text", Clock("utc"))(record())
    assert line.startswith("2024-05-01T12:00:00.250Z 192.0.2.7 peer=10.0.0.1 id=abc1 ")
    assert line.endswith(' client_cert="CN=alice,O=Example"') or "client_cert=" in line


def test_json_has_iso_time_and_request_fields() -> None:
    d = json.loads(formatter("json", Clock("utc"))(record()))
    assert d["time"] == "2024-05-01T12:00:00.250Z"
    assert (d["referer"], d["user_agent"], d["protocol"]) == ("http://r/", "ua/1", "HTTP/1.1")
    assert (d["client_port"], d["tls_version"], d["client_cert"]) == (
        51234, "TLSv1.3", "CN=alice,O=Example",
    )  # fmt: skip
    assert d["body_bytes_sent"] == 30 and d["bytes_out"] == 130


def test_combined() -> None:
    line = formatter("combined", Clock("utc"))(record(user="bob"))
    assert line == (
        '192.0.2.7 - bob [01/May/2024:12:00:00 +0000] "GET /p?q=1 HTTP/1.1" 200 30 '
        '"http://r/" "ua/1"'
    )


def test_template_fields_and_dashes() -> None:
    fmt = formatter(
        "{time} {client}:{client_port} {{lit}} {request} {status} {user} {tls_version} "
        "{client_cert} {sni} {duration_ms}ms {user_agent}",
        Clock("utc"),
    )
    assert fmt(record()) == (
        "2024-05-01T12:00:00.250Z 192.0.2.7:51234 {lit} GET /p?q=1 HTTP/1.1 200 - TLSv1.3 "
        "CN=alice,O=Example example.com 1.2ms ua/1"
    )
    bare = record(request=None, conn=None, method="TCP", path="", sni="")
    assert fmt(bare).split()[1:4] == ["192.0.2.7:-", "{lit}", "TCP"]


def test_nginx_escape() -> None:
    assert nginx_escape('a"b\\c\x01é') == "a\\x22b\\x5Cc\\x01\\xC3\\xA9"


def test_file_log_reopens_after_rename(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path), "{status}")
    log.record(record(status=201))
    os.rename(path, tmp_path / "a.log.1")
    log.record(record(status=202))  # still the old file until reopened
    assert log.reopen()
    log.record(record(status=203))
    log.close()
    assert (tmp_path / "a.log.1").read_text() == "201\n202\n"
    assert path.read_text() == "203\n"


def test_unopenable_file_drops_lines_without_raising(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "missing" / "a.log"))
    log.record(record())
    log.close()
