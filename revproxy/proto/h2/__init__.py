"""HTTP/2, sans-I/O: our own engine — framing (``frames``), the connection's state and what
we send (``connection``), what we receive (``engine``) — over HPACK (``hpack_codec``), the
header-field checks (``check``), and the server and client roles (``server``, ``client``)."""
