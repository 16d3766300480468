"""``layerfs diff``: what a writable upper changed, as ``docker diff`` prints it.

docker computes a container's changes on overlay2 by mounting the container's tree and its image's
tree and comparing the two (moby ``daemon/graphdriver/overlay2`` ``Changes`` -> the naive diff
driver -> ``pkg/archive`` ``ChangesDirs``).  :func:`changes` gives the same list from the upper
alone, since every difference between the two trees lies in the upper (docs/overlay.rst "The
writable upper").  The rules of ``ChangesDirs`` (moby ``changes.go`` ``addChanges``,
``changes_unix.go`` ``statDifferent``), with N the container's tree and O the image's:

- a path of N that O lacks is ``A``, and so is everything below an added directory;
- a path of O that N lacks is ``D``; below a deleted directory nothing more is listed, nor below a
  directory that became a non-directory;
- a path in both is ``C`` when its mode (type and permission bits with setuid/setgid/sticky),
  owner, group or device number differ, or, for a non-directory, its size or mtime (equal when the
  same to the nanosecond, or within the same second with one side at 0 ns, ``sameFsTime``), or its
  ``security.capability`` xattr.  Other xattrs, content of the same size and mtime, ctime, atime,
  link counts and inode numbers are not compared, nor a directory's size or mtime;
- a directory with any change below it is ``C`` too, unless it is itself listed (``A`` or ``C``);
  the root is never listed.

Read from the upper: a name of the upper over nothing in the lowers is ``A``; a whiteout of a name
the lowers show is ``D``; an opaque directory (or a directory over a lower non-directory) shows
none of the lower children, so each lower child it does not hold itself is ``D``; an upper object
over a lower one is compared as above (a metacopy file has the upper's metadata, hence the view's).
An upper directory that was only copied up (to create or delete inside it) and whose changes were
undone lists nothing, as in docker.

The list is sorted by path (byte order), the order moby's ``ExportChanges`` sorts changes in:
a directory comes before what is below it.  (``docker diff`` itself prints them in the order Go's
map iteration gives within each directory.)
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator, Sequence

from .generate import (
    LowerEntry,
    UpperDir,
    UpperEntry,
    UpperView,
    capability,
    lower_capability,
    show,
)

_NS = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Change:
    """One line of ``docker diff``: ``kind`` is ``A``, ``C`` or ``D``; ``path`` starts with ``/``
    (a str; non-UTF-8 bytes as surrogate escapes, ``os.fsencode`` gives them back)."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def same_fs_time(a_ns: int, b_ns: int) -> bool:
    """moby's ``sameFsTime``: equal, or the same second with one side having no nanoseconds
    (a time that went through a tar without sub-second precision)."""
    return a_ns == b_ns or (a_ns // _NS == b_ns // _NS and (a_ns % _NS == 0 or b_ns % _NS == 0))


def stat_different(old: os.stat_result, new: os.stat_result) -> bool:
    """moby's ``statDifferent`` (unix): mode, uid, gid, rdev; and size and mtime of non-dirs."""
    if (old.st_mode, old.st_uid, old.st_gid, old.st_rdev) != (new.st_mode, new.st_uid, new.st_gid, new.st_rdev):
        return True
    if stat.S_ISDIR(old.st_mode):
        return False
    return not same_fs_time(old.st_mtime_ns, new.st_mtime_ns) or old.st_size != new.st_size


@dataclasses.dataclass
class _Frame:
    d: UpperDir
    entries: Iterator[UpperEntry]
    #: how many changes were listed when the directory was entered
    start: int
    #: the directory itself is listed (A or C), or it is the root
    listed: bool


def changes(upper: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]]) -> list[Change]:
    """The changes of ``upper`` over ``lowers``, as ``docker diff`` lists them (module docstring).

    Args:
        upper: the upper directory (kernel overlay format).
        lowers: the layer directories below it, base first.

    Returns:
        The changes, sorted by path.

    Raises:
        LayerfsError: the upper holds a directory renamed with redirect_dir.
        OSError: the upper or a lower cannot be read (naming the path).
    """
    out: list[Change] = []
    with UpperView(upper, lowers) as view:
        root, _ = view.root()
        stack = [_Frame(root, iter(view.entries(root)), 0, True)]
        while stack:
            frame = stack[-1]
            e = next(frame.entries, None)
            if e is None:
                stack.pop()
                if len(out) > frame.start and not frame.listed:
                    out.append(Change("C", show(frame.d.path)))
                continue
            try:
                sub = _entry(view, frame.d, e, out)
            except OSError as err:
                raise OSError(err.errno, f"upper {show(e.path)}: {err.strerror or err}") from None
            if sub is not None:
                stack.append(sub)
    out.sort(key=lambda c: os.fsencode(c.path))
    return out


def _entry(view: UpperView, d: UpperDir, e: UpperEntry, out: list[Change]) -> _Frame | None:
    """List the changes of entry ``e`` of ``d``; returns the frame of a directory to walk."""
    old = view.lower_child(d, e.name)
    if view.is_whiteout(d, e):
        if d.merged and old is not None:
            out.append(Change("D", show(e.path)))
        return None  # in a directory that does not merge, the listing below finds it
    if old is None:
        out.append(Change("A", show(e.path)))
        listed = True
    else:
        listed = stat_different(old.st, e.st) or capability(view, d, e) != lower_capability(view, d, e.name, old)
        if listed:
            out.append(Change("C", show(e.path)))
    if not e.is_dir:
        return None
    sub = view.subdir(d, e)
    entries = view.entries(sub)
    start = len(out)
    if old is not None and old.is_dir and not sub.merged:
        _deleted_below(view, sub, old, entries, out)
    return _Frame(sub, iter(entries), start, listed)


def _deleted_below(view: UpperView, d: UpperDir, old: LowerEntry, entries: Sequence[UpperEntry],
                   out: list[Change]) -> None:
    """``D`` for each child of the lower directory ``old`` that ``d`` (opaque, or pure upper over
    a lower directory) does not show."""
    shown = {e.name for e in entries if not view.is_whiteout(d, e)}
    for name in view.lowers.names(old, d.path) - shown:
        out.append(Change("D", show(f"{d.path}/{name}")))


__all__ = ["Change", "changes", "same_fs_time", "stat_different"]
