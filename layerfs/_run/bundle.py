"""Runtime bundles: a directory with ``config.json`` and ``rootfs/``, the rootfs a writable layerfs
mount of a container (what ``umoci unpack`` makes, but mounted, not copied).

``make(store, image, container, bundle_dir, opts)`` mounts the container at ``BUNDLE/rootfs``
(unless it is mounted already: the config then names that mount point), resolves the user inside
it and writes ``config.json`` atomically.  ``run`` and ``bundle`` are built on it.

Rootless, the runtime runs the container in a user namespace whose root is the caller, while the
mount's daemon stays outside it: the mount shows the image's owners through the namespace's own
mapping (``config.user_namespace``, ``-o uidmapping=0:UID:1,gidmapping=0:GID:1``), so that the
container's root owns what the image's root owns (without it, the image's root files are host
root's, and the runtime's ``mkdir rootfs/proc`` is refused), as fuse-overlayfs's mapping does for
rootless podman.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .._errors import LayerfsError
from .._mount import daemon as _mount
from .._store import containers as _containers
from .._store.containers import Container
from .._store.store import Image, Store
from . import config as _config
from . import users as _users


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A bundle made by :func:`make`."""

    path: Path
    rootfs: Path
    #: the mount was made for this bundle (and goes with it); False: the container was mounted already
    mounted_here: bool


def make(store: Store, image: Image, container: Container, path: Path, opts: _config.RunOptions, *,
         rootless: bool, engine: str = "c") -> Bundle:
    """Mount the container (if it is not) and write the bundle's ``config.json``.

    Raises:
        MountError, LayerfsError: the mount or the config could not be made (nothing is left
            mounted by this call then), or the container is mounted already with another ID
            mapping than the runtime's user namespace needs (none, as root), or where this mount
            namespace has no record of the mount.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    idmap = _config.user_namespace() if rootless else None
    where = _containers.mounted_at(store, container)
    mounted_here = not where
    if where:
        rootfs = Path(where[0])
        wanted = tuple(idmap.options()) if idmap else ()
        mapped = next((m.idmap for m in _mount.mounts() if m.mountpoint == where[0]), None)
        if mapped is None:
            raise LayerfsError(f"container {container.name} is mounted at {where[0]}, but not by this "
                               f"namespace's layerfs (no record of it here): run `layerfs umount {where[0]}` "
                               f"where it was mounted first")
        if mapped != wanted:
            raise LayerfsError(f"container {container.name} is mounted at {where[0]} "
                               f"{'with -o ' + ','.join(mapped) if mapped else 'without an ID mapping'}; its user "
                               f"namespace needs -o {','.join(wanted)}: run `layerfs umount {where[0]}` first")
    else:
        rootfs = path / "rootfs"
        rootfs.mkdir(exist_ok=True)
        _mount.mount(store, image.id, rootfs, engine=engine, container=container, idmap=idmap)
    try:
        default_user = str(_config.image_process(image.config).get("User") or "")
        user = _users.resolve(str(rootfs), opts.user if opts.user is not None else default_user)
        has = {p: os.path.lexists(rootfs / p.lstrip("/")) for p in ("/etc/resolv.conf", "/etc/hosts")}
        conf = _config.runtime_config(image.config, str(rootfs), user, opts, container_id=container.id,
                                      rootless=rootless, image_has=has)
        tmp = path / ".config.json.tmp"
        tmp.write_text(json.dumps(conf, indent=2) + "\n")
        os.replace(tmp, path / "config.json")
    except BaseException:
        if mounted_here:
            _mount.umount(rootfs, store=store)
        raise
    return Bundle(path, rootfs, mounted_here)
