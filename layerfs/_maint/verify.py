"""``layerfs verify [--repair]``: is every part of the store what its records say?

What is checked, and against what:

- blobs (manifests, indexes, configs): the sha256 of the bytes against the file's name;
- layers: ``layer.json`` readable and naming its own diff ID; the kept blob (if any) against its
  digest; the directory against the *tree
  digest* recorded when the layer was published (``_layer.tree``).  Not against the diff ID: that
  is the digest of the tar stream, which the unpacked directory cannot give back byte for byte
  (entry order and header fields are the builder's); the tree digest covers every name, content
  byte, mode, owner, time, link target and xattr, and rechecking it costs one read of the layer.
  A layer published before tree digests were recorded is reported "not checked";
- images: the record readable, its config blob and every layer of its config present, its
  ChainID records present and right (diff ID and parent);
- references (repositories.json): readable, each naming an image the store has;
- containers: the record readable, its image present, its upper and work directories present;
- mount records: their process alive; a record whose process is gone is stale, unless its mount
  point is still mounted: a dead mount (its daemon killed), which ``layerfs umount`` removes;
- merged indexes (``state/merged/*.idx``): each loads as the C engine loads it (every offset,
  name and parent link checked) and names an existing chain.

``repair`` removes what is broken so that the next pull or mount makes it again: a bad blob, a
bad layer (and the images that use it, so a pull fetches them again), an image missing parts,
dangling references, stale mount records, bad indexes.  It never removes a layer or image a live
mount uses (those are reported "in use: not repaired"), and never a container: its upper holds
someone's changes, so it is reported only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from .._errors import LayerfsError
from .._layer import tree as _tree
from .._mount.index import Index
from .._oci import digest as _digest
from .._oci import manifest as _manifest
from .._store import containers as _containers
from .._store.store import Store


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing found wrong: what, why, and (with repair) what was done."""

    what: str
    why: str
    repaired: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.why}" + (f" ({self.repaired})" if self.repaired else "")


@dataclasses.dataclass(frozen=True)
class Report:
    problems: tuple[Problem, ...]
    checked: dict[str, int]

    @property
    def ok(self) -> bool:
        """No problem left (none found, or every one repaired)."""
        return all(p.repaired and not p.repaired.startswith("not ") for p in self.problems)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def verify(store: Store, *, repair: bool = False, progress: Callable[[str], None] | None = None) -> Report:
    """Check the store (see the module docstring); with ``repair``, remove what is broken."""
    say = progress or (lambda _line: None)
    problems: list[Problem] = []
    checked = {"blobs": 0, "layers": 0, "images": 0, "references": 0, "containers": 0, "mounts": 0, "indexes": 0}
    root = store.root
    live = store.mounts()
    in_use_images = {m.image_id for m in live}
    in_use_layers: set[str] = set()
    for image_id in in_use_images:
        try:
            in_use_layers.update(store.get(image_id).diff_ids)
        except LayerfsError:
            pass

    # blobs
    bad_blobs: set[str] = set()
    blob_dir = root / "blobs" / "sha256"
    for name in sorted(os.listdir(blob_dir)) if blob_dir.is_dir() else []:
        digest = f"sha256:{name}"
        checked["blobs"] += 1
        try:
            actual = _sha256_file(blob_dir / name)
        except OSError as err:
            actual = f"unreadable ({err.strerror})"
        if actual != digest:
            bad_blobs.add(digest)
            problems.append(Problem(f"blob {digest}", f"content does not match its digest ({actual})"))
    say(f"blobs: {checked['blobs']} checked")

    # layers
    bad_layers: set[str] = set()
    layer_dir = root / "layers"
    for name in sorted(os.listdir(layer_dir)) if layer_dir.is_dir() else []:
        diff_id = f"sha256:{name}"
        checked["layers"] += 1
        try:
            info = json.loads((layer_dir / name / "layer.json").read_text())
            if info.get("diff_id") != diff_id:
                raise ValueError(f"layer.json names {info.get('diff_id')}")
        except (OSError, ValueError) as err:
            bad_layers.add(diff_id)
            problems.append(Problem(f"layer {diff_id}", f"layer.json is broken: {err}"))
            continue
        kept = info.get("blob")
        if isinstance(kept, dict) and isinstance(kept.get("digest"), str):
            try:
                actual_blob = _sha256_file(layer_dir / name / "blob")
            except OSError as err:
                actual_blob = f"unreadable ({err.strerror})"
            if actual_blob != kept["digest"]:
                bad_layers.add(diff_id)
                problems.append(Problem(f"layer {diff_id}", f"its kept blob does not match {kept['digest']} "
                                                            f"({actual_blob})"))
                continue
        recorded = info.get("tree")
        if not isinstance(recorded, str):
            problems.append(Problem(f"layer {diff_id}", "not checked: no tree digest was recorded when it was "
                                                        "published", "nothing to repair"))
            continue
        try:
            actual = _tree.digest(layer_dir / name / "diff")
        except OSError as err:
            actual = f"unreadable ({err.strerror})"
        if actual != recorded:
            bad_layers.add(diff_id)
            problems.append(Problem(f"layer {diff_id}", f"the directory changed since it was unpacked (tree "
                                                        f"digest {actual}, recorded {recorded})"))
    say(f"layers: {checked['layers']} checked")

    # images and their chains
    bad_images: set[str] = set()
    for image_id in store._image_ids():
        checked["images"] += 1
        why = None
        try:
            record = json.loads((root / "images" / f"{image_id[7:]}.json").read_text())
            if image_id in bad_blobs or not store.has_blob(image_id):
                why = "its config blob is missing or bad"
            else:
                diff_ids = _manifest.diff_ids(store.read_blob(image_id), image_id)
                for key in ("manifest", "index"):
                    value = record.get(key)
                    if isinstance(value, str) and (value in bad_blobs or not store.has_blob(value)):
                        why = f"its {key} blob {value} is missing or bad"
                for diff_id in diff_ids:
                    if diff_id in bad_layers or not store.has_layer(diff_id):
                        why = f"layer {diff_id} is missing or bad"
                        break
                chains = _digest.chain_ids(diff_ids)
                for chain, parent, diff_id in zip(chains, [None, *chains], diff_ids):
                    try:
                        rec = json.loads((root / "chains" / f"{chain[7:]}.json").read_text())
                        if rec.get("diff_id") != diff_id or rec.get("parent") != parent:
                            why = f"chain {chain} record is wrong"
                    except (OSError, ValueError):
                        why = f"chain {chain} record is missing"
        except (OSError, ValueError, LayerfsError) as err:
            why = f"its record is broken: {err}"
        if why is not None:
            bad_images.add(image_id)
            problems.append(Problem(f"image {image_id}", why))
    say(f"images: {checked['images']} checked")

    # references
    images = set(store._image_ids())
    try:
        repos = store._repositories()
        for refs in repos.values():
            for ref, image_id in refs.items():
                checked["references"] += 1
                if image_id not in images:
                    problems.append(Problem(f"reference {ref}", f"names image {image_id}, which the store lacks"))
    except (OSError, ValueError, LayerfsError) as err:
        problems.append(Problem("repositories.json", f"unreadable: {err}"))

    # containers (reported, never repaired: their uppers hold someone's changes)
    for c in _containers.containers(store):
        checked["containers"] += 1
        if c.image_id not in images:
            problems.append(Problem(f"container {c.name}", f"its image {c.image_id} is gone",
                                    "not repaired: a container is never removed by verify"))
        for what, path in (("upper", c.upper), ("work", c.work)):
            if not path.is_dir():
                problems.append(Problem(f"container {c.name}", f"its {what} directory {path} is missing",
                                        "not repaired: a container is never removed by verify"))

    # mount records
    live_keys = {store._mount_record_path(m.mountpoint).name for m in live}
    dead = {store._mount_record_path(m.mountpoint).name: m for m in store.dead_mounts()}
    for name in sorted(os.listdir(root / "mounts")) if (root / "mounts").is_dir() else []:
        checked["mounts"] += 1
        if name in dead:
            m = dead[name]
            problems.append(Problem(f"mount at {m.mountpoint}", f"dead: its daemon (pid {m.pid}) is gone, every "
                                    f"access fails", f"not repaired: `layerfs umount {m.mountpoint}` removes it"))
        elif name not in live_keys:
            problems.append(Problem(f"mount record {name}", "its process is gone (stale)"))

    # merged indexes
    merged = root / "state" / "merged"
    chains_now = {p.name.removesuffix(".json") for p in (root / "chains").glob("*.json")}
    for path in sorted(merged.glob("*.idx")) if merged.is_dir() else []:
        checked["indexes"] += 1
        try:
            Index(path)
        except (OSError, ValueError) as err:
            problems.append(Problem(f"merged index {path.name}", f"does not load: {err}"))
            continue
        if path.name.removesuffix(".idx") not in chains_now:
            problems.append(Problem(f"merged index {path.name}", "names no chain of the store"))
    say(f"records: {checked['references']} references, {checked['containers']} containers, "
        f"{checked['mounts']} mount records, {checked['indexes']} merged indexes checked")

    if repair:
        problems = _repair(store, problems, bad_blobs, bad_layers, bad_images, in_use_images, in_use_layers)
    return Report(tuple(problems), checked)


def _repair(store: Store, problems: list[Problem], bad_blobs: set[str], bad_layers: set[str], bad_images: set[str],
            in_use_images: set[str], in_use_layers: set[str]) -> list[Problem]:
    """Remove what is broken (see the module docstring); returns the problems with what was done."""
    root = store.root
    done: list[Problem] = []
    # images that use a bad layer go too (so that the next pull fetches the layer again)
    for image in store.images():
        if any(d in bad_layers for d in image.diff_ids):
            bad_images.add(image.id)
    with store.writer() as w:
        removed_images: set[str] = set()
        for image_id in sorted(bad_images):
            if image_id in in_use_images:
                continue
            path = root / "images" / f"{image_id[7:]}.json"
            try:
                os.unlink(path)
                removed_images.add(image_id)
            except FileNotFoundError:
                removed_images.add(image_id)
        for diff_id in sorted(bad_layers):
            if diff_id in in_use_layers:
                continue
            store._remove_tree(root / "layers" / diff_id[7:])
        for digest in sorted(bad_blobs):
            if digest in in_use_images:
                continue
            try:
                os.unlink(store.blob_path(digest))
            except FileNotFoundError:
                pass
        for p in problems:
            if p.what.startswith("merged index ") and not p.repaired:
                try:
                    os.unlink(root / "state" / "merged" / p.what.removeprefix("merged index "))
                except FileNotFoundError:
                    pass
            if p.what.startswith("mount record ") and not p.repaired:
                try:
                    os.unlink(root / "mounts" / p.what.removeprefix("mount record "))
                except FileNotFoundError:
                    pass
        # references to removed images, and what no image needs any more, go with the clean-up
        w.collect_garbage()
    for p in problems:
        if p.repaired:
            done.append(p)
            continue
        thing = p.what.split(" ", 1)[-1]
        if p.what.startswith("layer ") and thing in in_use_layers:
            done.append(dataclasses.replace(p, repaired="not repaired: in use by a live mount"))
        elif p.what.startswith("image ") and thing in in_use_images:
            done.append(dataclasses.replace(p, repaired="not repaired: in use by a live mount"))
        elif p.what.startswith(("blob ", "layer ", "image ")):
            done.append(dataclasses.replace(p, repaired="removed: the next pull fetches it again"))
        elif p.what.startswith("reference "):
            done.append(dataclasses.replace(p, repaired="removed"))
        elif p.what.startswith(("merged index ", "mount record ")):
            done.append(dataclasses.replace(p, repaired="removed"))
        else:
            done.append(dataclasses.replace(p, repaired="not repaired"))
    return done
