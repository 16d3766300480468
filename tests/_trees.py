"""Snapshots of directory trees, and an entry-by-entry comparison of two of them.

The project's rule for "the merged view is right": it equals the kernel's overlay mount, ``umoci
unpack`` and fuse-overlayfs **entry by entry** on type, mode, owner, size, content hash, link
target, device numbers, xattrs, mtime and hard-link groups (docs/testing.rst "Comparing trees").
This module is that rule.

API::

    tree = snapshot(root)                   # walk root: no symlink following, no mount crossing
    problems = diff(a, b, names=("ours", "umoci"))   # [] when equal, else one line per difference
    assert_same_tree(a, b, names=(...))     # pytest failure listing the first 30 differences

What is compared, per path (relative to the root, ``"."`` = the root itself; non-UTF-8 names are
``str`` with surrogate escapes, ``os.fsencode(path)`` gives the bytes back):

- ``type`` (``reg dir lnk chr blk fifo sock``), ``mode`` (permission bits with setuid, setgid,
  sticky), ``uid``, ``gid``;
- regular files: ``size`` and the ``sha256`` of the content (``hash_content=False`` skips it);
- symlinks: the ``target`` (bytes); devices: ``rdev`` as ``(major, minor)``;
- ``xattrs``: name -> value.  Overlay-private names (``trusted.overlay.*``, ``user.overlay.*``) are
  left out unless ``overlay_xattrs=True`` (needed to compare *layer dirs*, where
  ``trusted.overlay.opaque=y`` is content); names starting with an entry of ``ignore_xattrs`` are
  left out too;
- ``mtime`` (ns) of non-directories (``mtimes=False`` skips it), and of directories with
  ``dir_mtimes=True`` (off by default: extractors such as GNU tar stamp the directories they make
  with the clock).  Not compared, on purpose: nlink (overlay reports 1 for merged dirs; links
  broken across layers keep the lower's count), atime/ctime, inode numbers, and the mtime of 0/0
  whiteout devices (made by the converter at unpack time, not carried by the image);
- hard links: the partition of non-directories into groups sharing an inode (``(st_dev, st_ino)``),
  compared as sets of paths, never as numbers.  0/0 whiteouts are never grouped (the kernel's own
  whiteouts share one inode, and they are not links in any image).

A name the directory lists but ``lstat`` cannot find is recorded as type ``ghost`` (the kernel
overlay lists a whiteout inside a directory that only one layer has, then fails its lookup).

The walk does not follow symlinks and does not descend into a directory on another device than the
root (a mount point below the root is recorded as an entry, its content is not).  It reads files
whole, so snapshot trees of a few hundred MiB at most.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: xattr prefixes that belong to overlayfs itself (docs/overlay.rst "Private xattrs"), hidden by
#: every overlay.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

_TYPES = {
    stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk", stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock",
}

_FIELDS = ("type", "mode", "uid", "gid", "size", "sha256", "target", "rdev", "xattrs", "mtime")


@dataclass(frozen=True)
class Entry:
    """What a snapshot records about one path.  ``None`` = not applicable or not recorded."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    mtime: int | None = None

    @property
    def is_whiteout(self) -> bool:
        """True for an overlay whiteout: a character device 0/0."""
        return self.type == "chr" and self.rdev == (0, 0)

    def xattr(self, name: str) -> bytes | None:
        """The value of xattr ``name``, or None."""
        return dict(self.xattrs).get(name)


@dataclass(frozen=True)
class Tree:
    """A snapshot: every path under ``root`` (``"."`` included) and the hard-link groups."""

    root: Path
    entries: dict[str, Entry]
    hardlinks: frozenset[frozenset[str]]

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: object) -> bool:
        return path in self.entries

    def __getitem__(self, path: str) -> Entry:
        return self.entries[path]

    def paths(self) -> list[str]:
        """All recorded paths, sorted."""
        return sorted(self.entries)


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _xattrs(path: str, *, overlay_xattrs: bool, ignore: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENOSYS):
            return ()  # a filesystem without xattrs: nothing to compare
        raise
    out: list[tuple[str, bytes]] = []
    for name in names:
        if not overlay_xattrs and name.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        if ignore and name.startswith(ignore):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            # Listed but unreadable: record it, so that a filesystem that lists a name it then
            # refuses differs from one that does neither.
            value = f"<getxattr failed: {errno.errorcode.get(err.errno or 0, err.errno)}>".encode()
        out.append((name, value))
    return tuple(sorted(out))


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result | None]]:
    """Yield (relative path, absolute path, lstat) for root and everything below it; the lstat
    is None for a name listed that cannot be looked up."""
    root_st = os.lstat(root)
    yield ".", root, root_st
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        with os.scandir(abs_dir) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = f"{rel_dir}{child.name}"
            try:
                st = os.lstat(child.path)
            except FileNotFoundError:
                yield rel, child.path, None
                continue
            yield rel, child.path, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == root_st.st_dev:
                stack.append((rel + "/", child.path))


def snapshot(root: Path | str, *, hash_content: bool = True, mtimes: bool = True, dir_mtimes: bool = False,
             overlay_xattrs: bool = False, ignore_xattrs: Iterable[str] = ()) -> Tree:
    """Record every entry under ``root`` (see the module docstring for what and why).

    Args:
        root: the directory to walk; it is not followed if it is a symlink.
        hash_content: hash regular files' content (sha256).  Off = compare sizes only.
        mtimes: record the mtime of non-directories.
        dir_mtimes: record the mtime of directories too (the root included).
        overlay_xattrs: also record ``trusted.overlay.*`` / ``user.overlay.*`` (for layer dirs).
        ignore_xattrs: xattr name prefixes to leave out (e.g. ``("security.selinux",)``).

    Returns:
        The :class:`Tree`.

    Raises:
        OSError: ``root`` cannot be read (a permission problem, or it vanished mid-walk).
    """
    ignore = tuple(ignore_xattrs)
    entries: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel, path, st in _walk(os.fspath(root)):
        if st is None:
            entries[rel] = Entry(type="ghost", mode=0, uid=0, gid=0)
            continue
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), f"unknown:{stat.S_IFMT(st.st_mode):o}")
        entry = Entry(type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                      xattrs=_xattrs(path, overlay_xattrs=overlay_xattrs, ignore=ignore))
        if kind == "reg":
            entry = dataclasses.replace(entry, size=st.st_size,
                                        sha256=_hash_file(path) if hash_content else None)
        elif kind == "lnk":
            entry = dataclasses.replace(entry, target=os.readlink(os.fsencode(path)))
        elif kind in ("chr", "blk"):
            entry = dataclasses.replace(entry, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
        if (dir_mtimes if kind == "dir" else mtimes) and not entry.is_whiteout:
            entry = dataclasses.replace(entry, mtime=st.st_mtime_ns)
        entries[rel] = entry
        if kind != "dir" and not entry.is_whiteout:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    groups = frozenset(frozenset(names) for names in inodes.values() if len(names) > 1)
    return Tree(root=Path(root), entries=entries, hardlinks=groups)


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return "{" + ", ".join(f"{k}={v!r}" for k, v in value) + "}"
    return repr(value)


def _describe(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return f"{value:04o}"
    return _show(value)


def diff(a: Tree, b: Tree, *, names: tuple[str, str] = ("a", "b")) -> list[str]:
    """Every difference between two snapshots, one human-readable line each.

    Args:
        a, b: the snapshots.
        names: what to call ``a`` and ``b`` in the messages.

    Returns:
        ``[]`` when the trees are equal; else lines such as
        ``'etc/x': only in a (reg)``, ``'bin/su': mode: a 4755, b 0755``,
        ``hard links: a groups {'x', 'y'}, b does not``, sorted by path.
    """
    na, nb = names
    out: list[str] = []
    for path in sorted(a.entries.keys() | b.entries.keys()):
        ea, eb = a.entries.get(path), b.entries.get(path)
        if eb is None:
            assert ea is not None
            out.append(f"{path!r}: only in {na} ({ea.type})")
            continue
        if ea is None:
            out.append(f"{path!r}: only in {nb} ({eb.type})")
            continue
        for field in _FIELDS:
            va, vb = getattr(ea, field), getattr(eb, field)
            if va is None or vb is None:
                # Not recorded on one side (mtimes=False, hash_content=False): not a difference,
                # unless the types differ, which the "type" field already reports.
                if field in ("sha256", "mtime"):
                    continue
            if field == "xattrs" and va != vb:
                da, db = dict(va), dict(vb)
                for key in sorted(da.keys() | db.keys()):
                    if da.get(key) != db.get(key):
                        out.append(f"{path!r}: xattr {key}: {na} {_show(da.get(key))}, "
                                   f"{nb} {_show(db.get(key))}")
            elif va != vb:
                out.append(f"{path!r}: {field}: {na} {_describe(field, va)}, {nb} {_describe(field, vb)}")
    for group in sorted(a.hardlinks - b.hardlinks, key=sorted):
        out.append(f"hard links: {na} groups {sorted(group)}, {nb} does not")
    for group in sorted(b.hardlinks - a.hardlinks, key=sorted):
        out.append(f"hard links: {nb} groups {sorted(group)}, {na} does not")
    return out


def assert_same_tree(a: Tree, b: Tree, *, names: tuple[str, str] = ("a", "b"), limit: int = 30) -> None:
    """Fail (AssertionError) with the first ``limit`` differences unless ``diff(a, b)`` is empty.

    Args:
        a, b: the snapshots.
        names: what to call them in the message.
        limit: how many differences to show.

    Raises:
        AssertionError: the trees differ.
    """
    problems = diff(a, b, names=names)
    if problems:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise AssertionError(f"{names[0]} ({a.root}, {len(a)} entries) and {names[1]} ({b.root}, "
                             f"{len(b)} entries) differ in {len(problems)} ways:\n  {shown}{more}")
