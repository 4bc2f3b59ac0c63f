"""Sans-I/O protocol cores.

Rule of this room: nothing here performs I/O, reads a clock or touches global state. Every
parser takes bytes (or plain values) and returns a result, "need more", or raises; every
builder returns bytes. ``tests/test_sans_io.py`` forbids asyncio, socket and ssl imports here.
"""
