"""Every kind of entry replacing every other, at depth 1, 2 and 3, across layers and within one.

The kinds: file, dir, symlink, hardlink, fifo, device, whiteout (``_images.replacement_layers``:
one image per depth, each case at its own path, over a lower dir with a child and over nothing).
Each image is compared three ways (``_fuzz``: ``umoci unpack``, the layerfs mount and the kernel
overlay of layerfs's layer dirs, entry by entry), each layer dir layerfs wrote with GNU tar's
extraction of the same layer, and each case with what the image spec says it leaves.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from _fuzz import differences, image_views
from _images import Replacement, replacement_layers
from _oracles import read_image, tar_layer_dirs
from _trees import Tree, diff, snapshot
from conftest import require_fuse, require_root, require_tool

from layerfs import Store

_TYPES = {"file": "reg", "dir": "dir", "symlink": "lnk", "hardlink": "reg", "fifo": "fifo", "device": "chr"}


def expected_kind(case: Replacement) -> str | None:
    """What the merged tree holds at the case's path (None: nothing), by the spec's rules: the later
    entry wins, and a whiteout hides only what lies below its own layer."""
    if case.how == "within" and case.new == "whiteout":
        return _TYPES.get(case.old)   # the layer's own entry stays (or nothing, after two whiteouts)
    return _TYPES.get(case.new)


def expected_children(case: Replacement) -> set[str]:
    """The children a dir left at the case's path holds."""
    kept = set()
    if case.new == "dir":
        kept.add("new-child")
    if case.old == "dir" and (case.new == "dir" or (case.how == "within" and case.new == "whiteout")):
        kept.add("old-child")
        if case.below == "dir" and case.new == "dir":
            kept.add("base")
    return kept


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_replacements(depth: int, tmp_path: Path) -> None:
    require_root()
    require_fuse()
    require_tool("umoci", "tar")
    old_umask = os.umask(0o022)
    try:
        layers, cases = replacement_layers(depth)
        views = image_views(layers, tmp_path / "image")
        problems = differences(views)
        assert not problems, "\n".join(d.line for d in problems[:40])
        ours = views.layerfs
        assert isinstance(ours, Tree)
        wrong = []
        for case in cases:
            want = expected_kind(case)
            got = ours.entries.get(case.path)
            if (got.type if got else None) != want:
                wrong.append(f"{case.path}: {got.type if got else None}, expected {want}")
            elif want == "dir":
                prefix = case.path + "/"
                children = {p[len(prefix):] for p in ours.paths() if p.startswith(prefix)}
                want_children = expected_children(case)
                if children != want_children:
                    wrong.append(f"{case.path}: children {sorted(children)}, expected {sorted(want_children)}")
        assert not wrong, "\n".join(wrong)
        _compare_with_gnu_tar(tmp_path, cases)
    finally:
        os.umask(old_umask)


def _compare_with_gnu_tar(tmp_path: Path, cases: list[Replacement]) -> None:
    """Each layer dir as layerfs wrote it equals GNU tar's extraction of the layer, markers
    converted (``_oracles.extract_layer``), but for two things GNU tar cannot do: replace a
    directory that has children by a non-directory in one pass (without ``--recursive-unlink``
    it refuses, with it a dir over a dir loses its children), and see that a layer replaced an
    entry of its own (opacity is not compared)."""
    cannot = {c.path for c in cases if c.how == "within" and c.old == "dir" and c.new not in ("dir", "whiteout")}

    def refused(line: str) -> bool:
        return any(line.startswith(f"tar: {path}: Cannot ") and line.endswith(": File exists") for path in cannot)

    def out(path: str) -> bool:
        return any(path == c or path.startswith(c + "/") or path.startswith(c + ".") for c in cannot)

    def keep(tree: Tree) -> Tree:
        return dataclasses.replace(tree, entries={p: e for p, e in tree.entries.items() if not out(p)},
                                   hardlinks=frozenset(g for g in tree.hardlinks if not any(out(p) for p in g)))

    layout = tmp_path / "image" / "layout"
    store = Store(tmp_path / "image" / "store")   # the store image_views loaded the image into
    (image,) = store.images()
    theirs = tar_layer_dirs(layout, "fuzz", tmp_path / "gnu", allowed=refused)
    assert len(theirs) == len(read_image(layout, "fuzz")[0]["layers"]) == 3
    for i, (mine, gnu) in enumerate(zip(store.layer_dirs(image), theirs)):
        problems = diff(keep(snapshot(mine)), keep(snapshot(gnu)), names=("layerfs", "GNU tar"))
        assert not problems, f"layer {i + 1}:\n" + "\n".join(problems[:40])
