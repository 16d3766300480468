"""Sizes and durations as docker prints them (docker/go-units ``HumanSize``, ``HumanDuration``)."""

from __future__ import annotations

import datetime


def human_size(size: float, digits: int = 3) -> str:
    """Decimal units, ``digits`` significant digits: ``4.26MB``, ``817kB``, ``0B`` (go-units
    ``HumanSizeWithPrecision``: docker prints 3 in most tables, 4 in ``system df``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if value < 1000 or unit == "EB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.{digits}g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``About a minute``, ``3 hours``, ``2 weeks``, like go-units HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def parse_time(text: str) -> datetime.datetime | None:
    """An RFC 3339 time from an image config (nanoseconds and ``Z`` allowed), or None."""
    if not text:
        return None
    t = text.strip().replace("Z", "+00:00")
    if "." in t:  # Python takes at most 6 fractional digits
        head, _, rest = t.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        t = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        value = datetime.datetime.fromisoformat(t)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def since(text: str, now: datetime.datetime | None = None) -> str:
    """``2 weeks ago`` for a config ``created`` time; ``N/A`` when there is none."""
    when = parse_time(text)
    if when is None:
        return "N/A"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{human_duration((now - when).total_seconds())} ago"
