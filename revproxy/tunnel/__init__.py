"""The reverse tunnel: the proxy's hub of agent connections and the agent on the origin host
(docs/tunnel.md)."""
