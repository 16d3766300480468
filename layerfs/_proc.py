"""Facts the kernel publishes in /proc: the mount table, whether a process lives and since when.

One reader each, shared by the store (is an image's mount still alive?), the mount (is the
mount point taken?) and the cache policy (which bdi holds the mount's read-ahead).
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple


class MountEntry(NamedTuple):
    """One line of ``/proc/self/mountinfo`` (proc(5)): the fields layerfs uses."""

    mountpoint: str
    device: str  # "major:minor"
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[MountEntry]:
    """The mounts of this mount namespace, in mount order (later entries are on top)."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append(MountEntry(_unescape(fields[4]), fields[2], fields[sep + 1], _unescape(fields[sep + 2])))
    return out


def mountpoints() -> dict[str, MountEntry]:
    """Mount point -> its topmost mount."""
    return {m.mountpoint: m for m in mounts()}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs.  A zombie counts as gone (and is reaped if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (proc(5) ``stat`` field 22); None if it is gone.

    A pid and its start time name one process: a pid reused by a later process has another one.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None
