"""Certificates: reading and checking files, the store chosen by SNI, the ACME HTTP-01
route and the certbot glue.

Rule of this part: certificates are values loaded whole or refused whole; the live swap is the
runtime's (``runtime/certwatch.py``)."""
