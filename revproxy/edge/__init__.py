"""The client side: listeners, TLS termination, HTTP/1.1 and HTTP/2 client connections,
the exchange (the one place errors become responses) and TCP mode.

Rule of this part: everything a client sees is decided here, and nothing it sees names an
origin."""
