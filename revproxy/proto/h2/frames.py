"""HTTP/2 framing (RFC 9113 §3.4, §4, §6, §7): the numbers and layouts of the wire, no state.

Rule of this room: constants and ``struct`` layouts only — frame types, flags, SETTINGS
identifiers, error codes, the protocol's defaults and limits, and the fixed layouts frames are
packed and unpacked with. Nothing here holds a connection's state or decides what a frame
means: ``connection.py`` and ``engine.py`` do, and read these as module globals of their own
(the layouts bound by assignment there, not by import: see the note in either), so that the
hot path costs what it did when they lived beside it. The limits are the RFC's:

- §3.4: every connection starts with the client preface (``PREFACE``), then SETTINGS.
- §4.1: a frame header is 9 octets — length (24 bits), type, flags, a reserved bit and the
  31-bit stream id (``FRAME_HEADER``, the length packed as 8 + 16 bits).
- §6.5.1: a SETTINGS payload is a run of 6-octet parameters (``SETTING``).
- §6.5.2, §6.9.1, §6.9.2: the initial window (65,535), the initial maximum frame size
  (16,384), the largest window (2^31-1); MAX_CONCURRENT_STREAMS is unlimited until said.
- CONTINUATION flood: how many frames and how many bytes past ``max_header_list_size`` one
  header block may take before we refuse to buffer it (``engine.py`` enforces it).
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 §7) not in revproxy.errors: only the engine raises them.
H2_FLOW_CONTROL_ERROR = 0x3
H2_STREAM_CLOSED = 0x5
H2_FRAME_SIZE_ERROR = 0x6
H2_COMPRESSION_ERROR = 0x9

# Frame types (RFC 9113 §6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# SETTINGS parameters (RFC 9113 §6.5.2, RFC 8441 §3).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8

# Most frames one header block may span. A block within max_header_list_size needs one or
# two frames of the minimum frame size; only a flood needs more.
MAX_HEADER_FRAMES = 16
# Header block bytes allowed beyond max_header_list_size: padding (256) and priority (5).
HEADER_BLOCK_SLACK = 512
# Largest flow-control window (RFC 9113 §6.9.1) and the initial one (§6.9.2).
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
# A peer's SETTINGS_MAX_CONCURRENT_STREAMS until it says one (RFC 9113 §6.5.2: unlimited).
UNLIMITED_STREAMS = 2**32 + 1

FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
SETTING = struct.Struct(">HL")
U32 = struct.Struct(">L")
RST_FRAME = struct.Struct(">BHBBLL")  # a whole RST_STREAM or WINDOW_UPDATE frame
