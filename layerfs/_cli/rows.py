"""Values of the rows list commands print, written as docker's formatter contexts write them
(docker/cli ``cli/command/formatter`` and ``cli/command/image/formatter_history.go``), so that a
``--format`` template written for docker prints the same text here.
"""

from __future__ import annotations

import datetime
import unicodedata

from .._units import parse_time


def unix_time(text: str) -> int:
    """The seconds since the epoch of an RFC 3339 time from a config; 0 when there is none (a Go
    program's ``Created`` of a config that has none)."""
    when = parse_time(text)
    return int(when.timestamp()) if when is not None else 0


def go_time_string(seconds: int) -> str:
    """``time.Unix(seconds, 0).String()``, docker's ``CreatedAt`` of images and containers, in
    the local time zone: ``2020-09-13 12:26:40 +0000 UTC``."""
    when = datetime.datetime.fromtimestamp(seconds).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S %z ") + (when.tzname() or when.strftime("%z"))


def rfc3339(seconds: int) -> str:
    """``time.Unix(seconds, 0).Format(time.RFC3339)`` in the local time zone (docker history's
    ``CreatedAt``): ``2020-09-13T12:26:40Z``."""
    text = datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` display columns, ending in ``…`` when cut (docker's
    ``formatter.Ellipsis``: East Asian wide and full-width characters take two columns)."""
    widths = [2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text]
    if sum(widths) <= width:
        return text
    used, cut = 0, 0
    for w in widths:
        if used + w > width - 1:
            break
        used += w
        cut += 1
    return text[:cut] + "…"
