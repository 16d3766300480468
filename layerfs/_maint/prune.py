"""``image prune``, ``container prune``, ``system prune``: removing what nothing needs, as docker does.

- image prune: dangling images (no tag; docker's ``dangling=true``) that no container was made from
  and no mount uses; with ``all_images``, every image no container or mount uses.  Each goes the
  way ``layerfs rm ID`` removes it (references, record, then the layers, chains, blobs and merged
  indexes no other image needs).
- container prune: every container no live mount serves, with its upper and work directories
  (if they are the store's).

Each first runs the store's clean-up (what killed commands left: ``tmp/`` leftovers, references to
an image whose removal was cut short, stale mount records), as every writer does on entry: a prune
with nothing to remove still leaves a clean store.  Each returns what it removed and the bytes
freed, measured on disk (``du``) before removal.
Removal writes nothing before it deletes (see ``Writer.remove``), so it works on a full disk.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from .._errors import LayerfsError
from .._store import containers as _containers
from .._store.store import Store


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What a prune removed: docker's lines (``untagged: ...``, ``deleted: ...`` or container IDs)
    and the bytes it freed."""

    lines: tuple[str, ...]
    freed: int


def _du(paths: list[Path]) -> int:
    """Bytes on disk under ``paths`` (hard links counted once), as ``du -sb -c`` says."""
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if not existing:
        return 0
    out = subprocess.run(["du", "-sbc", "--", *existing], capture_output=True, text=True, check=False).stdout
    try:
        return int(out.strip().splitlines()[-1].split()[0])
    except (ValueError, IndexError):
        return 0


def _store_usage(store: Store) -> int:
    return _du([store.root / "layers", store.root / "blobs", store.root / "state", store.root / "chains",
                store.root / "images"])


def prune_images(store: Store, *, all_images: bool = False) -> Pruned:
    """Remove dangling images (every unused image with ``all_images``); see the module docstring."""
    store.collect_garbage()  # first what killed commands left: with nothing to prune, no rm would
    used = {c.image_id for c in _containers.containers(store)} | {m.image_id for m in store.mounts()}
    before = _store_usage(store)
    lines: list[str] = []
    for image in store.images():
        if image.id in used:
            continue
        if not all_images and image.repo_tags:
            continue
        try:
            removed = store.remove(image.id, force=True)
        except LayerfsError:
            continue  # it came into use meanwhile: keep it
        lines += [line[0].lower() + line[1:] for line in removed]
    return Pruned(tuple(lines), max(0, before - _store_usage(store)))


def prune_containers(store: Store) -> Pruned:
    """Remove every container no live mount serves (see the module docstring)."""
    store.collect_garbage()  # what killed commands left (a container half removed, in ``tmp/``)
    mounted = {m.container for m in store.mounts() if m.container}
    lines: list[str] = []
    freed = 0
    for c in _containers.containers(store):
        if c.id in mounted:
            continue
        size = _du([c.upper, c.work])
        try:
            _containers.remove(store, c.id)
        except LayerfsError:
            continue  # mounted meanwhile
        lines.append(c.id)
        freed += size
    return Pruned(tuple(lines), freed)
