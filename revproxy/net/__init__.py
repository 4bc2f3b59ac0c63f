"""Connection I/O shared by the client side and the backend side: buffered protocol
connections, the HTTP/2 channel under both roles, and the two-way byte relay (splice).

Rule of this part: it moves bytes and knows nothing of routes, pools or listeners."""
