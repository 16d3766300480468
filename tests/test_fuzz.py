"""Differential tests of the unpacker and the mount: umoci, the layerfs mount and the kernel overlay
of layerfs's layer dirs see every image the same (``_fuzz`` says how, and where an oracle is wrong).

- FOUND: the images that showed a defect, each shrunk to its smallest form (from the issues, and
  from ``scripts/fuzz``), with what the merged tree must hold; each failed before its fix.
- SEEDS: a fixed set of random images (``scripts/fuzz`` runs as many as asked); a failure prints
  the shrunk image.
- The harness itself: the generator makes every kind of entry it promises, the comparison sees a
  changed tree, and each rule that excuses an oracle is needed by some image (none is vacuous).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _fuzz import (
    CAPABILITY,
    LONG_NAME,
    NON_UTF8_NAME,
    Layers,
    Views,
    _without_ghosts,
    _without_umoci_clock,
    describe,
    differences,
    generate,
    image_views,
    shrink,
)
from _images import TarEntry
from _trees import Tree
from conftest import require_fuse, require_root, require_tool

#: Random images CI runs (about 40 s on 2 cores, one core busy); ``scripts/fuzz --seeds N`` runs more.
SEEDS = 400


@pytest.fixture
def fuzz_env(tmp_path: Path) -> Iterator[Path]:
    require_root()
    require_fuse()
    require_tool("umoci", "mount", "umount")
    old = os.umask(0o022)
    try:
        yield tmp_path
    finally:
        os.umask(old)


def D(name: str, mode: int = 0o755, **kw: object) -> TarEntry:   # noqa: N802 - reads as a table
    return TarEntry(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def F(name: str, data: bytes = b"x", **kw: object) -> TarEntry:   # noqa: N802
    return TarEntry(name, data=data, **kw)  # type: ignore[arg-type]


def L(name: str, target: str, **kw: object) -> TarEntry:   # noqa: N802
    return TarEntry(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]


def FIFO(name: str, **kw: object) -> TarEntry:   # noqa: N802
    return TarEntry(name, tarfile.FIFOTYPE, **kw)  # type: ignore[arg-type]


def _children(tree: Tree, parent: str) -> set[str]:
    prefix = "" if parent == "." else parent + "/"
    return {p[len(prefix):] for p in tree.paths() if p != "." and p.startswith(prefix) and "/" not in p[len(prefix):]}


def _attrs(tree: Tree, path: str) -> tuple[int, int, int | None]:
    e = tree[path]
    return e.mode, e.uid, e.mtime


@dataclass(frozen=True)
class Found:
    name: str
    layers: Layers
    #: what layerfs's merged tree must show (so that the case cannot pass with every view wrong)
    holds: Callable[[Tree], bool]


S = 10**9
FOUND = [
    # issue 8, defect 1
    Found("a symlink below the root replaced by a file, in one layer",
          [[D("x/"), L("x/l", "t"), F("x/l", b"file")]], lambda t: t["x/l"].type == "reg"),
    Found("a dir below the root replaced by a file, in one layer",
          [[D("x/"), D("x/s/"), F("x/s/c"), F("x/s", b"file")]], lambda t: t["x/s"].type == "reg"),
    # issue 8, defect 9
    Found("the merged root has the time of the top layer's ./",
          [[D("./", mtime=1_000_000_000), F("a")], [D("./", mtime=1_100_000_000), F("b")]],
          lambda t: t["."].mtime == 1_100_000_000 * S),
    Found("the merged root keeps the time of the ./ below when the top layer has none",
          [[D("./", 0o750, uid=3, mtime=1_000_000_000), F("a")], [F("b")]],
          lambda t: _attrs(t, ".") == (0o750, 3, 1_000_000_000 * S)),
    # issue 13, findings 1-4
    Found("a whiteout of a 255-byte name", [[F(LONG_NAME)], [F(".wh." + LONG_NAME)]],
          lambda t: _children(t, ".") == set()),
    Found("a dir replaced within one layer does not bring the lower dir back",
          [[D("a/"), F("a/f")], [FIFO("a"), D("a/")]], lambda t: _children(t, "a") == set()),
    Found("... nor loses the layer's own whiteouts",
          [[D("a/"), F("a/f"), F("a/g")], [D("a/"), F("a/.wh.f"), FIFO("a"), D("a/")]],
          lambda t: _children(t, "a") == set()),
    Found("an implicit dir keeps the lower dir's attributes",
          [[D("a/", 0o700, uid=5, mtime=1234), F("a/f"), F("a/g")], [F("a/.wh.f")]],
          lambda t: _attrs(t, "a") == (0o700, 5, 1234 * S) and _children(t, "a") == {"g"}),
    Found("a whiteout in a dir made opaque in the same layer", [[D("a/"), F("a/f")],
                                                                [D("a/"), F("a/.wh..wh..opq"), F("a/.wh.f")]],
          lambda t: _children(t, "a") == set()),
    # found by scripts/fuzz
    Found("an empty pax xattr value deletes the xattr",
          [[F("f", xattrs=(("user.a", b""), ("user.b", b"1")))]], lambda t: t["f"].xattrs == (("user.b", b"1"),)),
    Found("an implicit dir of a 255-byte name absent from a layer between",
          [[D(LONG_NAME + "/", 0o700, mtime=3)], [F("other")], [F(LONG_NAME + "/x")]],
          lambda t: _attrs(t, LONG_NAME) == (0o700, 0, 3 * S)),
    Found("a dir made only for a marker goes when the layer whites it out",
          [[D("m/"), F("m/x"), F("m/y")], [F("m/.wh.x"), F(".wh.m")]], lambda t: "m" not in t),
    Found("a dir made only for a marker goes when its parent is made opaque",
          [[D("c/"), D("c/a/"), F("c/a/x")], [F("c/a/.wh.x"), F("c/.wh..wh..opq")]],
          lambda t: _children(t, "c") == set()),
    Found("an implicit dir in a setgid dir is setgid, with the dir's group",
          [[D("b/", 0o2755, uid=1000, gid=1000)], [F("b/d/c/d")]],
          lambda t: (t["b/d"].mode, t["b/d"].gid, t["b/d/c"].mode) == (0o2755, 1000, 0o2755)),
    Found("an implicit dir made before a setgid root entry is not setgid",
          [[F("x")], [D("b/c"), D("./", 0o2755)]], lambda t: t["b"].mode == 0o755 and t["."].mode == 0o2755),
    Found("a second root entry replaces the first's xattrs",
          [[D(".", xattrs=(("user.b", b"v"),)), D(".", 0o711)]], lambda t: t["."].xattrs == ()),
    Found("a hard link keeps its target's capability",
          [[F("a", xattrs=(("security.capability", CAPABILITY),)), TarEntry("b", tarfile.LNKTYPE, linkname="a")]],
          lambda t: t["b"].xattr("security.capability") == CAPABILITY),
    Found("a non-UTF-8 name", [[F(NON_UTF8_NAME)], [F(".wh." + NON_UTF8_NAME), D(NON_UTF8_NAME + "/")]],
          lambda t: t[NON_UTF8_NAME].type == "dir"),
]


def _trees(views: Views) -> tuple[Tree, Tree, Tree]:
    assert not isinstance(views.layerfs, str), views.layerfs
    assert not isinstance(views.umoci, str), views.umoci
    assert not isinstance(views.kernel, str), views.kernel
    return views.layerfs, views.umoci, views.kernel


@pytest.mark.parametrize("case", FOUND, ids=[c.name for c in FOUND])
def test_found(fuzz_env: Path, case: Found) -> None:
    views = image_views(case.layers, fuzz_env / "image")
    ours, _, _ = _trees(views)
    problems = differences(views)
    assert not problems, "\n".join(d.line for d in problems)
    assert case.holds(ours), "layerfs shows:\n" + "\n".join(f"{p}: {e}" for p, e in ours.entries.items())


@pytest.mark.parametrize("seed", range(SEEDS))
def test_seed(fuzz_env: Path, seed: int) -> None:
    layers = generate(seed)
    problems = differences(image_views(layers, fuzz_env / "image"))
    if problems:
        small, found = shrink(layers, fuzz_env / "shrink", budget=60)
        pytest.fail(f"seed {seed} differs; shrunk:\n{describe(small)}\n" + "\n".join(d.line for d in found[:20]),
                    pytrace=False)


# -- the harness ------------------------------------------------------------------------------

def _features(layers: Layers) -> set[str]:
    """What an image holds, in the words of the ``_fuzz`` docstring."""
    out = set()
    kinds = {tarfile.DIRTYPE: "dir", tarfile.REGTYPE: "file", tarfile.SYMTYPE: "symlink",
             tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "char device",
             tarfile.BLKTYPE: "block device"}
    for layer in layers:
        if not layer:
            out.add("empty layer")
        seen: dict[str, bytes] = {}
        for e in layer:
            base = e.name.rstrip("/").rpartition("/")[2]
            clean = "/".join(p for p in e.name.split("/") if p not in ("", "."))
            if base == ".wh..wh..opq":
                out.add("opaque marker")
            elif base.startswith(".wh."):
                out.add("whiteout")
            else:
                out.add(kinds[e.type])
                if not clean:
                    out.add("root entry")
                if clean in seen:
                    out.add("duplicate" if seen[clean] == e.type else "type change within a layer")
                seen[clean] = e.type
            if clean.count("/") >= 2:
                out.add("depth 3")
            out.update(name for name, flag in (("setuid", stat.S_ISUID), ("setgid", stat.S_ISGID),
                                               ("sticky", stat.S_ISVTX)) if e.mode & flag)
            if e.uid or e.gid:
                out.add("owner")
            if isinstance(e.mtime, str):
                out.add("mtime in ns")
            if e.xattrs:
                out.add("xattrs")
            if any(k == "security.capability" for k, _ in e.xattrs):
                out.add("capability")
            if ".." in e.name.split("/"):
                out.add("dotdot name")
            if LONG_NAME in e.name:
                out.add("255-byte name")
            if NON_UTF8_NAME in e.name:
                out.add("non-UTF-8 name")
    return out


def test_generator_makes_every_kind_of_entry() -> None:
    wanted = {"dir", "file", "symlink", "hardlink", "fifo", "char device", "block device", "whiteout",
              "opaque marker", "root entry", "duplicate", "type change within a layer", "depth 3", "setuid",
              "setgid", "sticky", "owner", "mtime in ns", "xattrs", "capability", "255-byte name", "non-UTF-8 name",
              "dotdot name", "empty layer"}
    made: set[str] = set()
    for seed in range(SEEDS):
        made |= _features(generate(seed))
    assert wanted <= made, f"never made by the CI seeds: {sorted(wanted - made)}"
    assert generate(7) == generate(7), "a seed gives the same image"


def test_comparison_sees_a_changed_tree(fuzz_env: Path) -> None:
    views = image_views([[D("a/", 0o750), F("a/f", b"data", mtime=5), L("a/l", "f")]], fuzz_env / "image")
    ours, umoci, kernel = _trees(views)
    assert not differences(views)
    for path, change in (("a/f", {"sha256": "0" * 64}), ("a", {"mode": 0o755}), ("a/l", {"target": b"g"}),
                         ("a/f", {"mtime": 6 * S}), (".", {"uid": 1})):
        changed = dataclasses.replace(ours, entries={**ours.entries, path: dataclasses.replace(
            ours.entries[path], **change)})  # type: ignore[arg-type]
        seen = differences(dataclasses.replace(views, layerfs=changed))
        assert {d.between for d in seen} == {"layerfs/kernel", "layerfs/umoci"}, (path, change)
    assert len(kernel) == len(umoci) == len(ours) == 4


def test_each_rule_is_needed(fuzz_env: Path) -> None:
    """The rules that excuse an oracle each change the comparison for a real image."""
    # umoci's clock: it stamps the dirs it makes as parents and the dir it makes them in
    views = image_views([[D("a/", mtime=1000), F("a/f")], [F("a/n/x")]], fuzz_env / "one")
    ours, umoci, _ = _trees(views)
    assert (ours["a"].mtime, ours["a/n"].mtime, ours["."].mtime) == (1000 * S, 0, 0)
    stamped = {p for p, e in umoci.entries.items() if e.type == "dir" and e.mtime != ours[p].mtime}
    assert stamped == {"a", "a/n"}, stamped
    assert not {p for p, e in _without_umoci_clock(umoci, views.umoci_run).entries.items()
                if e.type == "dir" and e.mtime is not None and e.mtime != ours[p].mtime}
    # the kernel's ghosts: a whiteout in a dir only the top layer has
    views = image_views([[F("x")], [D("d/"), F("d/.wh.nothing")]], fuzz_env / "two")
    ours, _, kernel = _trees(views)
    assert kernel["d/nothing"].type == "ghost" and "d/nothing" not in ours
    assert "d/nothing" not in _without_ghosts(kernel)
    assert not differences(views)
