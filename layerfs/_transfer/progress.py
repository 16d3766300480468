"""Pull progress, shown the way ``docker pull`` shows it.

Three displays behind one interface (:class:`Progress`), chosen by :func:`for_stream`:

- :class:`TerminalProgress` (stdout is a terminal): one line per layer, ``<12 hex>: <status>``,
  rewritten in place with ANSI cursor moves like docker's ``jsonmessage``; ``Downloading`` shows a
  bar, the size done / total and the rate.  Redraws are limited to ten a second per layer.
- :class:`PlainProgress` (a pipe or file): one line per status change, never per byte.
- :class:`QuietProgress` (``-q``): nothing; the command prints only the image ID.

Thread-safe: layers report from their download threads.  The statuses, in docker's words:
``Pulling fs layer``, ``Waiting``, ``Downloading``, ``Verifying Checksum``, ``Extracting``,
``Pull complete``, ``Already exists``; then the ``Digest:`` and ``Status:`` lines.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Protocol, TextIO

from .._units import human_size

PULLING = "Pulling fs layer"
WAITING = "Waiting"
DOWNLOADING = "Downloading"
VERIFYING = "Verifying Checksum"
EXTRACTING = "Extracting"
COMPLETE = "Pull complete"
EXISTS = "Already exists"


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
            extra = f" {human_size(total)}" if status == DOWNLOADING and total is not None else ""
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


class TerminalProgress:
    """docker's terminal display: a line per layer, updated in place."""

    BAR_WIDTH = 50

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._rows: dict[str, _Row] = {}

    def header(self, text: str) -> None:
        self.line(text)

    def _render(self, layer_id: str, row: _Row) -> str:
        text = f"{layer_id}: {row.status}"
        if row.status == DOWNLOADING and row.total:
            done = min(row.current or 0, row.total)
            filled = int(self.BAR_WIDTH * done / row.total)
            bar = "=" * filled + (">" if filled < self.BAR_WIDTH else "") + " " * max(self.BAR_WIDTH - filled - 1, 0)
            elapsed = max(time.monotonic() - row.started, 1e-3)
            text += f" [{bar}] {human_size(done)}/{human_size(row.total)} {human_size(done / elapsed)}/s"
        return text

    def layer(self, layer_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            row = self._rows.get(layer_id)
            if row is None:
                row = self._rows[layer_id] = _Row(status, current, total, now)
                self._order.append(layer_id)
                self._out.write(self._render(layer_id, row) + "\n")
                self._out.flush()
                return
            if status == DOWNLOADING and row.status != DOWNLOADING:
                row.started = now
            same = row.status == status
            row.status, row.current, row.total = status, current, total
            if same and now - row.drawn < 0.1:
                return
            row.drawn = now
            up = len(self._order) - self._order.index(layer_id)
            # Up to the layer's line, clear it, write it, and come back down.
            self._out.write(f"\x1b[{up}A\r\x1b[2K{self._render(layer_id, row)}\r\x1b[{up}B")
            self._out.flush()

    def line(self, text: str) -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            self._out.flush()


def for_stream(out: TextIO, *, quiet: bool = False) -> Progress:
    """The display that suits ``out``: quiet, terminal (a tty) or plain."""
    if quiet:
        return QuietProgress()
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalProgress(out) if tty else PlainProgress(out)
