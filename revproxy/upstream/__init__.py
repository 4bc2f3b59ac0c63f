"""The backend side: routing, pools, balancing, health, and the dialers that open
HTTP/1.1, HTTP/2 and TLS connections to origins.

Rule of this part: it never imports the client side (``revproxy.edge``); health writes server
state and balancing only reads it."""
