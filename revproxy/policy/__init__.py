"""Who may come in and how often: allow/deny lists, users and authentication, limits.

Rule of this part: every decision reads the one client identity (the socket's address, the
PROXY header's, or the trusted X-Forwarded-For hop) and says why it refused (``deny``,
``auth``, ``limit:NAME``); a refusal is a local answer that names nothing of the origin. The
arithmetic is pure and lives in ``revproxy.proto`` (netset, ratelimit, httpauth); this part
holds what is compiled per generation and the stores."""
