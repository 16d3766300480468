"""Pull and load progress, shown the way ``docker pull`` and ``docker load`` show it.

Three displays behind one interface (:class:`Progress`), chosen by :func:`for_stream`:

- :class:`TerminalProgress` (a terminal): one line per layer, ``<12 hex>: <status>``, rewritten
  in place with ANSI cursor moves like docker's ``jsonmessage``; a transfer shows the size done /
  total, the time left when the terminal is wider than 50 columns and a 50-column bar when it is
  wider than 110 (docker's ``JSONProgress`` rules), and no line is longer than the terminal is
  wide (a wrapped line would break the cursor moves).  Redraws are limited to ten a second per
  layer.
- :class:`PlainProgress` (a pipe or file): one line per status change, never per byte, each
  written whole under a lock (layers report from several threads).
- :class:`QuietProgress` (``-q``): nothing.

Where it goes is docker's choice: ``pull`` and ``load`` write their progress to stdout (and
``load`` none at all when stdout is not a terminal, as ``docker load`` then asks for none); the
pull that ``mount`` makes for an image the store lacks writes to stderr, as ``docker run`` does.

Thread-safe: layers report from their download threads.  The statuses, in docker's words:
``Pulling fs layer``, ``Waiting``, ``Downloading``, ``Verifying Checksum``, ``Extracting``,
``Pull complete``, ``Already exists``, ``Loading layer``; then the ``Digest:`` and ``Status:``
lines.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Protocol, TextIO

from .._units import human_size

PULLING = "Pulling fs layer"
WAITING = "Waiting"
#: a layer another command is unpacking: this one waits for it rather than fetch it too
WAITING_OTHER = "Waiting for another command"
DOWNLOADING = "Downloading"
VERIFYING = "Verifying Checksum"
EXTRACTING = "Extracting"
COMPLETE = "Pull complete"
EXISTS = "Already exists"
LOADING = "Loading layer"
LOADED = "Loaded"

#: The statuses whose line shows how far a transfer is (bytes done / total).
_TRANSFERS = (DOWNLOADING, LOADING)


class Progress(Protocol):
    """What a pull reports."""

    def header(self, text: str) -> None:
        """``latest: Pulling from library/alpine``."""

    def layer(self, layer_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        """A layer's status changed (``current``/``total`` bytes while downloading)."""

    def line(self, text: str) -> None:
        """A free line after the layers: ``Digest: …``, ``Status: …``."""

    def close(self) -> None:
        """The pull ended (well or not): finish the display."""


class QuietProgress:
    """Shows nothing."""

    def header(self, text: str) -> None:
        pass

    def layer(self, layer_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        pass

    def line(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """One line per status change (for logs and pipes)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}

    def header(self, text: str) -> None:
        self.line(text)

    def layer(self, layer_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        with self._lock:
            if self._last.get(layer_id) == status:
                return
            self._last[layer_id] = status
            extra = f" {human_size(total)}" if status in _TRANSFERS and total is not None else ""
            self._out.write(f"{layer_id}: {status}{extra}\n")
            self._out.flush()

    def line(self, text: str) -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def close(self) -> None:
        pass


@dataclasses.dataclass
class _Row:
    status: str
    current: int | None = None
    total: int | None = None
    started: float = 0.0
    drawn: float = 0.0


def _duration(seconds: float) -> str:
    """Go's ``time.Duration.String`` of whole seconds, as docker prints the time left: ``1m5s``."""
    secs = int(seconds)
    hours, rest = divmod(secs, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def transfer_text(current: int, total: int, elapsed: float, width: int) -> str:
    """What follows the status of a transfer, by docker's ``JSONProgress.String`` rules: a
    50-column bar only on a terminal wider than 110 columns, ``done/total``, and the time left
    on one wider than 50."""
    done = min(current, total)
    half = min(int(done / total * 100) // 2, 50) if total else 0
    bar = f"[{'=' * half}>{' ' * (50 - half)}] " if width > 110 else ""
    numbers = f"{human_size(current):>8}/{human_size(total)}"
    left = ""
    if current > 0 and half < 50 and width > 50:
        left = " " + _duration(elapsed / current * (total - current))
    return bar + numbers + left


class TerminalProgress:
    """docker's terminal display: a line per layer, updated in place, never wider than the terminal.

    Args:
        out: the terminal.
        width: its width in columns; default: asked of ``out`` at every redraw (80 if it cannot
            tell), so a resized terminal is followed.
    """

    def __init__(self, out: TextIO, width: int | None = None) -> None:
        self._out = out
        self._width = width
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._rows: dict[str, _Row] = {}

    def width(self) -> int:
        """The terminal's width in columns."""
        if self._width is not None:
            return self._width
        try:
            return os.get_terminal_size(self._out.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            return 80

    def header(self, text: str) -> None:
        self.line(text)

    def _render(self, layer_id: str, row: _Row, width: int) -> str:
        text = f"{layer_id}: {row.status}"
        if row.status in _TRANSFERS and row.total:
            elapsed = max(time.monotonic() - row.started, 1e-3)
            text += " " + transfer_text(row.current or 0, row.total, elapsed, width)
        return text[:max(width - 1, 1)]

    def layer(self, layer_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            width = self.width()
            row = self._rows.get(layer_id)
            if row is None:
                row = self._rows[layer_id] = _Row(status, current, total, now)
                self._order.append(layer_id)
                self._out.write(self._render(layer_id, row, width) + "\n")
                self._out.flush()
                return
            if status in _TRANSFERS and row.status not in _TRANSFERS:
                row.started = now
            same = row.status == status
            row.status, row.current, row.total = status, current, total
            if same and now - row.drawn < 0.1:
                return
            row.drawn = now
            up = len(self._order) - self._order.index(layer_id)
            # Up to the layer's line, clear it, write it, and come back down.
            self._out.write(f"\x1b[{up}A\r\x1b[2K{self._render(layer_id, row, width)}\r\x1b[{up}B")
            self._out.flush()

    def line(self, text: str) -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            self._out.flush()


def is_terminal(out: TextIO | None) -> bool:
    """Whether ``out`` is a terminal (False for None: a closed standard stream)."""
    try:
        return out is not None and out.isatty()
    except (AttributeError, ValueError):
        return False


def for_stream(out: TextIO, *, quiet: bool = False, plain: bool = True) -> Progress:
    """The display that suits ``out``: quiet, terminal (a tty) or plain (``plain`` false: none
    on a pipe, as ``docker load`` shows none)."""
    if quiet:
        return QuietProgress()
    if is_terminal(out):
        return TerminalProgress(out)
    return PlainProgress(out) if plain else QuietProgress()
