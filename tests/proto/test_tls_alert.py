"""proto/tls_alert.py: the alert records, read back by OpenSSL as a client would read them."""

from __future__ import annotations

import ssl

import pytest

from revproxy.proto.tls_alert import (
    HANDSHAKE_FAILURE,
    PROTOCOL_VERSION,
    UNRECOGNIZED_NAME,
    alert_record,
    refusal_alert,
)


def test_records() -> None:
    assert alert_record(UNRECOGNIZED_NAME) == b"\x15\x03\x03\x00\x02\x02\x70"
    assert alert_record(HANDSHAKE_FAILURE) == b"\x15\x03\x03\x00\x02\x02\x28"
    # A refused version goes in a TLS 1.0 record: readable by any client that got that far.
    assert alert_record(PROTOCOL_VERSION) == b"\x15\x03\x01\x00\x02\x02\x46"


@pytest.mark.parametrize(
    ("reason", "rejects", "expected"),
    [
        ("UNSUPPORTED_PROTOCOL", False, PROTOCOL_VERSION),
        ("VERSION_TOO_LOW", False, PROTOCOL_VERSION),
        ("NO_SHARED_CIPHER", False, HANDSHAKE_FAILURE),
        ("CALLBACK_FAILED", True, UNRECOGNIZED_NAME),
        ("CALLBACK_FAILED", False, HANDSHAKE_FAILURE),
    ],
)
def test_refusals(reason: str, rejects: bool, expected: int) -> None:
    assert refusal_alert(reason, sni_callback_refuses=rejects) == alert_record(expected)


@pytest.mark.parametrize(
    "reason",
    # After the server's first flight (alerts there are encrypted), or no handshake at all.
    [None, "CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "HTTP_REQUEST",
     "WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING"],
)  # fmt: skip
def test_no_alert_for_other_failures(reason: str | None) -> None:
    assert refusal_alert(reason, sni_callback_refuses=True) is None


@pytest.mark.parametrize(
    ("description", "openssl_reason"),
    [
        (UNRECOGNIZED_NAME, "TLSV1_UNRECOGNIZED_NAME"),
        (PROTOCOL_VERSION, "TLSV1_ALERT_PROTOCOL_VERSION"),
        (HANDSHAKE_FAILURE, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    ],
)
def test_openssl_client_reads_the_alert(description: int, openssl_reason: str) -> None:
    """A real OpenSSL client, its ClientHello sent, given our record: it fails the handshake
    with the alert's own reason (not an "unexpected eof")."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    assert outgoing.read()  # the ClientHello went
    incoming.write(alert_record(description))
    with pytest.raises(ssl.SSLError) as failed:
        client.do_handshake()
    assert failed.value.reason == openssl_reason
