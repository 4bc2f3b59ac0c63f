"""HTTP dates (RFC 9110 §5.6.7): parsed to and formatted from seconds since the epoch.

Rule of this room: pure arithmetic. "A recipient that parses a timestamp value in an HTTP
field MUST accept all three HTTP-date formats" — IMF-fixdate (``Sun, 06 Nov 1994 08:49:37
GMT``), the obsolete RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``) and asctime's
(``Sun Nov  6 08:49:37 1994``) — and a sender "MUST generate" IMF-fixdate only. A value that
is none of them is ``None`` (the caller treats the field as absent), never an exception. The
weekday is not checked against the date (it is redundant, and senders get it wrong). Two-digit
RFC 850 years more than 50 years ahead are taken as the past century (§5.6.7), which needs a
"now": the caller may pass one, else 2000 is the pivot's base.
"""

from __future__ import annotations

from typing import Final

__all__ = ["format_http_date", "parse_http_date"]

_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
                  b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")  # fmt: skip
_MONTH_INDEX: Final = {m.lower(): i + 1 for i, m in enumerate(_MONTHS)}
_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_LONG_DAYS: Final = frozenset(
    {b"monday", b"tuesday", b"wednesday", b"thursday", b"friday", b"saturday", b"sunday"}
)
_SHORT_DAYS: Final = frozenset(d.lower() for d in _DAYS)
_SECONDS_PER_DAY: Final = 86400


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _digits(value: bytes, n: int) -> int | None:
    if len(value) != n or not value.isdigit():
        return None
    return int(value)


def _clock(value: bytes) -> tuple[int, int, int] | None:
    parts = value.split(b":")
    if len(parts) != 3:
        return None
    h, mi, s = (_digits(p, 2) for p in parts)
    if h is None or mi is None or s is None or h > 23 or mi > 59 or s > 60:
        return None
    return h, mi, min(s, 59)  # a leap second is read as the second before it


def _seconds(y: int, m: int, d: int, clock: tuple[int, int, int]) -> int | None:
    if not 1 <= m <= 12 or not 1 <= d <= _days_in_month(y, m):
        return None
    h, mi, s = clock
    return _days_from_civil(y, m, d) * _SECONDS_PER_DAY + h * 3600 + mi * 60 + s


def parse_http_date(value: bytes, *, now: int | None = None) -> int | None:
    """Seconds since the epoch of an HTTP-date in any of the three formats, else None."""
    words = value.strip().split()
    n = len(words)
    if n == 6 and words[5] == b"GMT" and words[0].endswith(b","):
        # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        if words[0][:-1].lower() not in _SHORT_DAYS:
            return None
        d, y = _digits(words[1], 2), _digits(words[3], 4)
        m = _MONTH_INDEX.get(words[2].lower())
        clock = _clock(words[4])
        if d is None or y is None or m is None or clock is None:
            return None
        return _seconds(y, m, d, clock)
    if n == 4 and words[3] == b"GMT" and words[0].endswith(b","):
        # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        if words[0][:-1].lower() not in _LONG_DAYS:
            return None
        parts = words[1].split(b"-")
        if len(parts) != 3:
            return None
        d, yy = _digits(parts[0], 2), _digits(parts[2], 2)
        m = _MONTH_INDEX.get(parts[1].lower())
        clock = _clock(words[2])
        if d is None or yy is None or m is None or clock is None:
            return None
        # "MUST interpret a timestamp ... that appears to be more than 50 years in the future
        # as representing the most recent year in the past that had the same last two digits."
        this_year = _civil_from_days(now // _SECONDS_PER_DAY)[0] if now is not None else 2000
        y = this_year - this_year % 100 + yy
        if y > this_year + 50:
            y -= 100
        return _seconds(y, m, d, clock)
    if n == 5:
        # asctime: Sun Nov  6 08:49:37 1994
        if words[0].lower() not in _SHORT_DAYS:
            return None
        m = _MONTH_INDEX.get(words[1].lower())
        d = int(words[2]) if 1 <= len(words[2]) <= 2 and words[2].isdigit() else None
        clock = _clock(words[3])
        y = _digits(words[4], 4)
        if d is None or y is None or m is None or clock is None:
            return None
        return _seconds(y, m, d, clock)
    return None


def format_http_date(seconds: int) -> bytes:
    """IMF-fixdate of ``seconds`` since the epoch: ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    days, rest = divmod(int(seconds), _SECONDS_PER_DAY)
    y, m, d = _civil_from_days(days)
    weekday = _DAYS[(days + 3) % 7]  # 1970-01-01 was a Thursday
    h, rest = divmod(rest, 3600)
    mi, s = divmod(rest, 60)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (weekday, d, _MONTHS[m - 1], y, h, mi, s)
