"""PROXY protocol v1 (text) and v2 (binary): read the header a trusted sender puts in front of a
connection, and write the one we put in front of a connection to a backend.

Rule of this room: bytes in, a header out; values in, bytes out. No sockets, no clocks, no
globals. The spec is HAProxy's proxy-protocol.txt (2020/03/05); each module says which of its
sentences it enforces:

- ``header.py``: the values — ``ProxyHeader``, ``SSLInfo``, ``Command``, ``Family``, the
  signatures, size limits and TLV type numbers of sections 2.1 and 2.2;
- ``parser.py``: reading — ``detect`` and ``parse``, the v1 line (section 2.1) and the v2
  header up to its TLVs (section 2.2);
- ``tlv.py``: the v2 TLVs read — each type at most once, the SSL sub-TLVs (section 2.2.6),
  the unique ID (section 2.2.5) and the CRC32C check (section 2.2.3, ``castagnoli_crc32``);
- ``build.py``: writing — ``build_v1``, ``build_v2``, ``build_local_v2``.

Callers import from the package, never from its modules: the names below are those the single
module ``proto/proxy_protocol/`` offered, so ``from revproxy.proto import proxy_protocol as pp``
and ``from revproxy.proto.proxy_protocol import parse`` read as before.
"""

from __future__ import annotations

from revproxy.proto.proxy_protocol.build import build_local_v2, build_v1, build_v2
from revproxy.proto.proxy_protocol.header import (
    DEFAULT_MAX_SIZE,
    MAX_V1,
    MAX_V2,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_AWS_VPCE_ID,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_AWS,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    TLV,
    V1_PREFIX,
    V2_SIGNATURE,
    Address,
    Command,
    Family,
    ProxyHeader,
    SSLInfo,
)
from revproxy.proto.proxy_protocol.parser import detect, parse
from revproxy.proto.proxy_protocol.tlv import castagnoli_crc32

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_V1",
    "MAX_V2",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_AWS_VPCE_ID",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_AWS",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "TLV",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "Address",
    "Command",
    "Family",
    "ProxyHeader",
    "SSLInfo",
    "build_local_v2",
    "build_v1",
    "build_v2",
    "castagnoli_crc32",
    "detect",
    "parse",
]
