"""HTTP/2, sans-I/O: our own engine (framing, streams, flow control) over hpack, the
header-block checks and the client role."""
