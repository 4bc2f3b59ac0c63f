"""TOML files -> one frozen ``Config``; one module per section; every validation.

Rule of this part: it imports only ``revproxy.proto``, the error tree and the standard library.
Every problem names the file, the key path and the reason."""
