"""ID mappings: fuse-overlayfs's ``-o uidmapping=`` / ``gidmapping=`` (docs/overlay.rst "ID mappings").

A mapping is a list of ranges ``CONTAINER:HOST:SIZE`` joined by ``:`` (``0:1000:1:1:100000:65536``),
as containers-storage passes it and as fuse-overlayfs(1) reads it:

- CONTAINER IDs are the IDs on disk: in the layers, the upper and its overrides (the image's);
- HOST IDs are the IDs the mount shows, and the IDs its callers have.

The mount shows a file whose owner on disk is ``CONTAINER + k`` as owned by ``HOST + k``
(``0 <= k < SIZE``); what it is given (``chown``, the caller creating a file) goes the other
way.  An ID no range holds becomes the overflow ID (``/proc/sys/kernel/overflowuid``, 65534),
both ways, as in fuse-overlayfs.  So a mount a user namespace will use shows the image's owners
as the namespace's host IDs, and the namespace maps them back: ``uidmapping=0:1000:1`` for a
namespace whose ``uid_map`` is ``0 1000 1`` lets its root own what the image's root owns.

The C engine translates (``csrc/idmap.c``); this module reads the option and makes the mapping
a rootless runtime's user namespace needs (:func:`for_user_namespace`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .._errors import MountError

#: The most ranges a mapping may have (``csrc/idmap.h`` LFS_IDMAP_MAX).
MAX_RANGES = 64
_ID_LIMIT = 1 << 32


class IdRange(NamedTuple):
    """``size`` IDs from ``container`` on disk, shown as as many from ``host``."""

    container: int
    host: int
    size: int


class IdMapping(NamedTuple):
    """The uid and gid mappings of a mount; an empty tuple leaves those IDs as they are."""

    uids: tuple[IdRange, ...] = ()
    gids: tuple[IdRange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.uids or self.gids)

    def options(self) -> list[str]:
        """The ``-o`` options that give this mapping, as fuse-overlayfs takes them."""
        return [f"{key}={format_ranges(ranges)}" for key, ranges in (("uidmapping", self.uids),
                                                                       ("gidmapping", self.gids)) if ranges]


def format_ranges(ranges: tuple[IdRange, ...]) -> str:
    """``CONTAINER:HOST:SIZE`` of each range, joined by ``:``."""
    return ":".join(f"{r.container}:{r.host}:{r.size}" for r in ranges)


def parse(key: str, value: str) -> tuple[IdRange, ...]:
    """Read the value of ``-o uidmapping=`` or ``gidmapping=`` (``key``).

    Stricter than fuse-overlayfs, which takes what ``strtol`` takes and lets a later range win
    over an earlier one it overlaps: here every field is decimal digits, a range is not empty
    and ends within 32 bits, and no two ranges overlap on either side (each ID has one
    translation, as the kernel requires of a ``uid_map``).

    Raises:
        MountError: the value is not such a list, in one line naming the option.
    """
    fields = value.split(":")
    if not value or len(fields) % 3 or not all(re.fullmatch(r"[0-9]{1,10}", f) for f in fields):
        raise MountError(f"-o {key}={value}: not a list of CONTAINER:HOST:SIZE ranges")
    nums = [int(f) for f in fields]
    ranges = tuple(IdRange(*nums[i:i + 3]) for i in range(0, len(nums), 3))
    if len(ranges) > MAX_RANGES:
        raise MountError(f"-o {key}=: {len(ranges)} ranges, at most {MAX_RANGES} are taken")
    for i, r in enumerate(ranges):
        if r.size == 0 or r.container + r.size > _ID_LIMIT or r.host + r.size > _ID_LIMIT:
            raise MountError(f"-o {key}=: range {format_ranges((r,))} is empty or goes past ID 4294967295")
        for other in ranges[:i]:
            for side in ("container", "host"):
                a, b = getattr(r, side), getattr(other, side)
                if a < b + other.size and b < a + r.size:
                    raise MountError(f"-o {key}=: ranges {format_ranges((other,))} and {format_ranges((r,))} "
                                     f"overlap on the {side} side")
    return ranges


def overflow_ids() -> tuple[int, int]:
    """The kernel's overflow uid and gid (``/proc/sys/kernel/overflowuid``, ``overflowgid``):
    what an ID no range holds becomes; 65534 where they cannot be read."""
    out = []
    for name in ("overflowuid", "overflowgid"):
        try:
            with open(f"/proc/sys/kernel/{name}") as f:
                out.append(int(f.read().strip()))
        except (OSError, ValueError):
            out.append(65534)
    return out[0], out[1]


def for_user_namespace(uid: int, gid: int) -> IdMapping:
    """The mapping of a mount used by a user namespace whose root is ``uid``:``gid`` outside and
    which maps nothing else (``runc spec --rootless``, and layerfs run's ``config.json``): the
    image's root shows as the caller, so the namespace's root owns what the image's root owns;
    every other owner shows as the overflow ID."""
    return IdMapping((IdRange(0, uid, 1),), (IdRange(0, gid, 1),))
