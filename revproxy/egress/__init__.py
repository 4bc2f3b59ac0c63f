"""The origin's way out: a static-IP forward proxy (HTTP forward + CONNECT, SOCKS5).

Rule of this part: egress denies by default and adds nothing (DESIGN decision 9). The edge
accepts a ``mode = "forward"`` or ``"socks5"`` connection and applies the listener's edge policy
(PROXY header, allow/deny, limits); the service built here (``service.py``, plugged into the
generation by the runtime) serves it: ``forward.py`` (HTTP forward, CONNECT), ``socks.py``
(SOCKS5), ``dial.py`` (resolve, judge every address, connect from a static source). The
protocol and policy rules are pure, in proto/ (``socks5.py``, ``destinations.py``,
``forward_proxy.py``).
"""
