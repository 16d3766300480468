"""Small file rules the store's modules share: times, JSON records, removing trees.

Kept apart so that ``store`` and ``containers`` both use them without importing each other.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from pathlib import Path


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def json_bytes(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


def remove_now(path: Path) -> None:
    """Remove a file or a whole tree in place (layers keep 0555 directories: made writable first)."""
    if os.path.isdir(path) and not os.path.islink(path):
        make_removable(path)
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def make_removable(path: Path) -> None:
    """Give every directory under ``path`` u+rwx so rmtree can empty it (layers keep 0555 dirs)."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            with contextlib.suppress(OSError):
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
