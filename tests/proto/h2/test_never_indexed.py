"""HPACK's never-indexed fields across the proxy (RFC 7541 §6.2.3).

"Intermediaries MUST use the same representation for encoding this header field": a field a
peer sent as a literal never indexed (a credential it does not want in any compression
context) leaves revproxy never indexed too, toward the origin and toward the client, whatever
the tables hold. The ends here are python-hyper's ``h2`` and ``hpack``, whose decoders tell a
never-indexed field (``NeverIndexedHeaderTuple``) from the others.
"""

from __future__ import annotations

from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.events import Headers, RequestReceived, ResponseReceived
from revproxy.proto.h2 import hpack_codec
from revproxy.proto.h2.client import H2Client
from revproxy.proto.h2.server import H2Server

SECRET = b"k-0123456789abcdef0123456789"  # long enough that no size rule flags it
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"), (b":path", b"/")]


def _indexable(fields: Iterable[object]) -> list[tuple[bytes, bytes, bool]]:
    """(name, value, indexable) of fields decoded by hpack or h2 (which keep the flag)."""
    out = []
    for field in fields:
        assert isinstance(field, HeaderTuple)
        out.append((bytes(field[0]), bytes(field[1]), field.indexable))
    return out


def _browser_and_proxy() -> tuple[h2.connection.H2Connection, H2Server]:
    browser = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    browser.initiate_connection()
    server = H2Server()
    server.receive_data(browser.data_to_send())
    browser.receive_data(server.data_to_send())
    server.receive_data(browser.data_to_send())
    return browser, server


def _proxy_and_origin() -> tuple[H2Client, h2.connection.H2Connection]:
    client = H2Client()
    origin = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    origin.initiate_connection()
    origin.receive_data(client.data_to_send())
    client.receive_data(origin.data_to_send())
    origin.receive_data(client.data_to_send())
    return client, origin


def test_a_request_field_that_arrived_never_indexed_goes_to_the_origin_never_indexed() -> None:
    browser, server = _browser_and_proxy()
    client, origin = _proxy_and_origin()
    for sid in (1, 3):  # the second time, a table holding the field would show
        browser.send_headers(
            sid,
            [
                *GET,
                NeverIndexedHeaderTuple(b"x-api-key", SECRET),
                (b"x-plain", SECRET),
                NeverIndexedHeaderTuple(b"cookie", b"a=" + SECRET),
                (b"cookie", b"b=" + SECRET),
            ],
            end_stream=True,
        )
        (req, *_) = server.receive_data(browser.data_to_send())
        assert isinstance(req, RequestReceived)
        # The decoded fields are equal to plain tuples: nothing else needs to know.
        assert (b"x-api-key", SECRET) in req.headers
        assert (b"cookie", b"a=" + SECRET + b"; b=" + SECRET) in req.headers
        # What the exchange sends on: the same fields but Host (:authority goes separately).
        headers = [h for h in req.headers if h[0] != b"host"]
        out_sid = client.send_request(
            req.method, b"https", req.authority, req.target, headers, end=True
        )
        got = origin.receive_data(client.data_to_send())
        (received,) = [e for e in got if isinstance(e, h2.events.RequestReceived)]
        assert received.stream_id == out_sid
        fields = _indexable(received.headers)
        assert (b"x-api-key", SECRET, False) in fields
        assert (b"x-plain", SECRET, True) in fields
        # One cookie crumb was never indexed: the joined cookie is not indexed either.
        assert (b"cookie", b"a=" + SECRET + b"; b=" + SECRET, False) in fields


def test_a_response_field_that_arrived_never_indexed_goes_to_the_client_never_indexed() -> None:
    browser, server = _browser_and_proxy()
    client, origin = _proxy_and_origin()
    for sid in (1, 3):
        browser.send_headers(sid, GET, end_stream=True)
        server.receive_data(browser.data_to_send())
        out_sid = client.send_request(b"GET", b"https", b"app.test", b"/", [], end=True)
        origin.receive_data(client.data_to_send())
        origin.send_headers(
            out_sid,
            [
                (b":status", b"200"),
                NeverIndexedHeaderTuple(b"x-session", SECRET),
                (b"x-plain", SECRET),
            ],
            end_stream=True,
        )
        (resp, *_) = client.receive_data(origin.data_to_send())
        assert isinstance(resp, ResponseReceived)
        assert resp.headers == [(b"x-session", SECRET), (b"x-plain", SECRET)]
        server.send_response(sid, resp.status, resp.headers, end=True)
        got = browser.receive_data(server.data_to_send())
        (received,) = [e for e in got if isinstance(e, h2.events.ResponseReceived)]
        assert _indexable(received.headers)[1:] == [
            (b"x-session", SECRET, False),
            (b"x-plain", SECRET, True),
        ]


def test_the_decoder_tells_never_indexed_literals_from_the_others() -> None:
    block = (
        b"\x10\x01a\x01b"  # never indexed, literal name
        + b"\x1f\x28\x01c"  # never indexed, name of static entry 55 (set-cookie)
        + b"\x00\x01d\x01e"  # without indexing, literal name
        + b"\x40\x01f\x01g"  # incremental indexing
        + b"\xbe"  # the entry just added
    )
    fields = hpack_codec.Decoder().decode(block)
    assert fields == [(b"a", b"b"), (b"set-cookie", b"c"), (b"d", b"e"), (b"f", b"g"), (b"f", b"g")]
    kinds: list[type] = [type(f) for f in fields]
    assert kinds == [NeverIndexedHeaderTuple, NeverIndexedHeaderTuple, tuple, tuple, tuple]


def test_a_field_marked_never_indexed_is_never_sent_indexed_even_when_a_table_has_it() -> None:
    encoder = hpack_codec.Encoder()
    decoder = Decoder()
    first = encoder.encode([(b"x-token", SECRET), (b":method", b"GET")])
    assert _indexable(decoder.decode(first, raw=True)) == [
        (b"x-token", SECRET, True),
        (b":method", b"GET", True),
    ]
    # Both fields are in a table now (the first in the dynamic one, the second static).
    second = encoder.encode(
        [NeverIndexedHeaderTuple(b"x-token", SECRET), NeverIndexedHeaderTuple(b":method", b"GET")]
    )
    assert second[0] & 0xF0 == 0x10  # a literal never indexed, its name indexed
    assert _indexable(decoder.decode(second, raw=True)) == [
        (b"x-token", SECRET, False),
        (b":method", b"GET", False),
    ]
    # It did not enter the table: the plain field is indexed, from the first block's entry.
    third = encoder.encode([(b"x-token", SECRET)])
    assert len(third) == 1 and third[0] & 0x80
    # A marked field is normalised as any other.
    fourth = encoder.encode([NeverIndexedHeaderTuple(b" X-Other ", b" v ")])
    assert _indexable(decoder.decode(fourth, raw=True)) == [(b"x-other", b"v", False)]


NAMES = [b"x-a", b"x-b", b"content-type", b"user-agent", b"cookie", b"authorization", b"etag"]
VALUES = [b"v", b"text/html", b"w/1", SECRET, b"a-long-cookie-value=0123456789abcdef"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES), st.booleans()),
            max_size=8,
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([4096, 256, 64]),
)
def test_relayed_blocks_keep_every_never_indexed_field(
    blocks: list[list[tuple[bytes, bytes, bool]]], table_size: int
) -> None:
    """Blocks from a peer's hpack encoder (any field marked never indexed or not), decoded by
    revproxy, encoded again toward the next peer: a field leaves never indexed exactly when it
    arrived so, or when revproxy's own rule (credentials, short cookies) says so."""
    theirs, seen = Encoder(), Decoder()  # the sending peer, and what it sent as it arrived
    ours_in, ours_out = hpack_codec.Decoder(), hpack_codec.Encoder()
    next_peer = Decoder()
    ours_out.header_table_size = table_size
    next_peer.header_table_size = table_size
    for block in blocks:
        sent = [
            NeverIndexedHeaderTuple(n, v) if never else HeaderTuple(n, v) for n, v, never in block
        ]
        wire = theirs.encode(sent)
        arrived = _indexable(seen.decode(wire, raw=True))  # as it arrived (hpack may index)
        decoded: Headers = ours_in.decode(wire)
        assert decoded == [(n, v) for n, v, _ in block]
        relayed = _indexable(next_peer.decode(ours_out.encode(decoded), raw=True))
        ours_rule = [
            n in (b"authorization", b"proxy-authorization") or (n == b"cookie" and len(v) < 20)
            for n, v, _ in arrived
        ]
        assert relayed == [
            (n, v, indexable and not rule)
            for (n, v, indexable), rule in zip(arrived, ours_rule, strict=True)
        ]
