"""HTTP/1.1, sans-I/O: the reference implementation over h11 (``exact.py``), the
llhttp fast path (``fast.py``) with its connection state (``state.py``) and wire helpers
(``wire.py``)."""
