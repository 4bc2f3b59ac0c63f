"""A response with both Content-Length and Transfer-Encoding is the origin's error (B1), for
both implementations, whole and byte by byte."""

from __future__ import annotations

import pytest

from revproxy.errors import BackendProtocolError
from revproxy.proto.events import Event
from revproxy.proto.http1.api import H1ClientAPI, client_class

BOTH = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
)
BOTH_REORDERED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: x\r\ncontent-length: 999\r\n\r\n"
    b"0\r\n\r\n"
)


def _client(kind: str) -> H1ClientAPI:
    client = client_class(kind)()
    client.send_request(b"GET", b"/", [(b"host", b"a")])
    client.send_end()
    return client


@pytest.mark.parametrize("kind", ["h11", "httptools"])
@pytest.mark.parametrize("response", [BOTH, BOTH_REORDERED])
def test_both_framings_are_refused_whole(kind: str, response: bytes) -> None:
    with pytest.raises(BackendProtocolError, match="both Content-Length and Transfer-Encoding"):
        _client(kind).receive_data(response)


@pytest.mark.parametrize("kind", ["h11", "httptools"])
def test_both_framings_are_refused_byte_by_byte(kind: str) -> None:
    client = _client(kind)
    events: list[Event] = []
    with pytest.raises(BackendProtocolError):
        for i in range(len(BOTH)):
            events += client.receive_data(BOTH[i : i + 1])
    assert events == []  # nothing of the head was handed on


@pytest.mark.parametrize("kind", ["h11", "httptools"])
def test_one_framing_still_passes(kind: str) -> None:
    events = _client(kind).receive_data(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert [type(e).__name__ for e in events] == [
        "ResponseReceived", "DataReceived", "MessageEnded",
    ]  # fmt: skip
