"""Response services: what the proxy answers or transforms itself on a route's say-so —
compression, the cache, static files (docs/http-rules.md)."""
