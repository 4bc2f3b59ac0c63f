"""revproxy: a TLS-terminating L4/L7 reverse proxy that keeps origins hidden."""

__version__ = "0.1.0"
