"""What ``docker diff`` prints for two trees: moby's ``pkg/archive`` ``ChangesDirs`` on snapshots.

docker's overlay2 driver mounts the container's tree and its image's tree and compares them whole
(``daemon/graphdriver/overlay2`` ``Changes`` -> the naive diff driver -> ``ChangesDirs``).  This
module does that comparison on two :class:`_trees.Tree` snapshots, the merged views, so it knows
nothing of uppers, whiteouts or markers: it is the oracle ``layerfs._layer.changes`` (which reads
only the upper) is tested against.

The port (moby ``changes.go`` ``addChanges``, ``changes_unix.go`` ``statDifferent``,
``sameFsTime``): walk the new tree from the root; a child missing in the old tree is ``A`` (and
its whole subtree, since its old side is nil); a child in both is ``C`` when type, permission
bits, owner, group or device differ, or, for a non-directory, the size (a symlink's size is its
target's length) or the mtime (``sameFsTime``), or the ``security.capability`` xattr; old children
the new directory lacks are ``D`` (only when the new side is a directory, and without recursion);
a directory with changes below it that is not itself listed gets a ``C`` (never the root).
docker prints them in Go's map order; sorted here by path bytes, as moby's ``ExportChanges`` sorts.
"""

from __future__ import annotations

import os

from _trees import Entry, Tree

_NS = 1_000_000_000


def _children(tree: Tree) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in tree.entries:
        if path == ".":
            continue
        parent = path.rpartition("/")[0] or "."
        out.setdefault(parent, []).append(path)
    return out


def _size(e: Entry) -> int:
    if e.type == "reg":
        return e.size or 0
    if e.type == "lnk":
        return len(e.target or b"")
    return 0


def _same_fs_time(a: int, b: int) -> bool:
    return a == b or (a // _NS == b // _NS and (a % _NS == 0 or b % _NS == 0))


def stat_different(old: Entry, new: Entry) -> bool:
    """moby's ``statDifferent``, plus the capability comparison ``addChanges`` adds."""
    if (old.type, old.mode, old.uid, old.gid, old.rdev or (0, 0)) != (new.type, new.mode, new.uid, new.gid,
                                                                       new.rdev or (0, 0)):
        return True
    if old.type != "dir":
        if not _same_fs_time(old.mtime or 0, new.mtime or 0) or _size(old) != _size(new):
            return True
    return old.xattr("security.capability") != new.xattr("security.capability")


def docker_changes(new: Tree, old: Tree) -> list[str]:
    """``docker diff`` of the container tree ``new`` against the image tree ``old`` (snapshots
    taken with mtimes), as ``A /path`` lines sorted by path."""
    new_children, old_children = _children(new), _children(old)
    out: list[str] = []

    def add(path: str, old_exists: bool, listed: bool) -> None:
        start = len(out)
        is_dir = path == "." or new[path].type == "dir"
        olds = set(old_children.get(path, [])) if old_exists and is_dir and old[path].type == "dir" else set()
        if not old_exists:
            listed = True
        for child in new_children.get(path, []) if is_dir else []:
            child_listed = False
            if child in olds:
                if stat_different(old[child], new[child]):
                    out.append(f"C /{child}")
                    child_listed = True
                olds.discard(child)
                add(child, True, child_listed)
            else:
                out.append(f"A /{child}")
                add(child, False, True)
        out.extend(f"D /{child}" for child in olds)
        if len(out) > start and is_dir and not listed and path != ".":
            out.append(f"C /{path}")

    add(".", True, True)
    return sorted(out, key=lambda line: os.fsencode(line[2:]))
