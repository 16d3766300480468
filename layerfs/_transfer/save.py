"""``layerfs save``: images of the store into one archive that ``layerfs load``, ``skopeo`` and
``docker load`` accept.

Two formats, as skopeo names them:

- ``oci-archive``: a tar of an OCI image layout (image-spec image-layout.md): ``oci-layout``,
  ``index.json`` listing each image's manifest with its name in
  ``org.opencontainers.image.ref.name`` (and ``io.containerd.image.name``, what docker and
  containerd read), and ``blobs/sha256/<hex>``: manifests, configs and layer blobs;
- ``docker-archive``: what ``docker save`` writes (docker 25 and later): the same blobs, plus
  ``manifest.json`` (``Config``, ``RepoTags``, ``Layers`` as paths in the archive).  Layers are
  the blobs as kept, compressed: ``docker load`` and skopeo decompress what they read.

The blobs are the exact bytes the store kept (``outgoing.plan``): a saved image loads back with
the same image ID, and a pulled one keeps its manifest digest.  The archive is written to a
temporary name beside FILE and renamed into place, or streamed to a pipe.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from .._errors import LayerfsError
from .._oci import manifest as _manifest
from .._oci.digest import of_bytes
from .._oci.reference import parse as parse_reference
from .._store.store import Image, Store
from .outgoing import plan

FORMATS = ("oci-archive", "docker-archive")
_MTIME = 0  # reproducible archives: every member dated the epoch


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = _MTIME
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, path: Path, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.mode = 0o644
    with open(path, "rb") as f:
        tar.addfile(info, f)


def save(store: Store, names: Sequence[str], out: BinaryIO, *, fmt: str = "oci-archive") -> list[Image]:
    """Write the images ``names`` to ``out`` as one archive of format ``fmt`` (see the module docstring).

    Raises:
        ImageNotFound: a name the store does not have.
        LayerfsError: a layer whose blob the store did not keep (``save <name>: ...``).
    """
    if fmt not in FORMATS:
        raise LayerfsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    images = []
    for name in names:
        image = store.get(name)
        if image not in images:
            images.append(image)
    written: set[str] = set()
    index: list[dict[str, object]] = []
    docker: list[dict[str, object]] = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if fmt == "oci-archive":
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add_dir(tar, "blobs/")
        _add_dir(tar, "blobs/sha256/")

        def blob(digest: str, data: bytes | None = None, path: Path | None = None, size: int = 0) -> str:
            name = f"blobs/sha256/{digest.partition(':')[2]}"
            if digest not in written:
                if data is not None:
                    _add_bytes(tar, name, data)
                elif path is not None:
                    _add_file(tar, name, path, size)
                written.add(digest)
            return name

        for image, name in zip(images, names):
            try:
                manifest, media_type, layers = plan(store, image)
            except LayerfsError as err:
                raise err.with_context(f"save {name}") from err
            missing = [b.digest for b in layers if b.path is None]
            if missing:
                raise LayerfsError(f"save {name}: the store did not keep layer blob {missing[0]} (pull the image "
                                   f"again to save it)")
            config = store.read_blob(image.id)
            blob(image.id, config)
            layer_names = [blob(b.digest, path=b.path, size=b.size) for b in layers]
            manifest_digest = of_bytes(manifest)
            blob(manifest_digest, manifest)
            tags = list(image.repo_tags)
            entry: dict[str, object] = {"mediaType": media_type, "digest": manifest_digest, "size": len(manifest)}
            if tags:
                entry["annotations"] = {"io.containerd.image.name": _full(tags[0]),
                                        "org.opencontainers.image.ref.name": tags[0].rpartition(":")[2]}
            index.append(entry)
            docker.append({"Config": f"blobs/sha256/{image.id.partition(':')[2]}", "RepoTags": tags,
                           "Layers": layer_names})
        if fmt == "oci-archive":
            _add_bytes(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": _manifest.OCI_INDEX,
                                                      "manifests": index}, indent=2).encode())
        else:
            _add_bytes(tar, "manifest.json", json.dumps(docker, indent=2).encode())
    return images


def _full(tag: str) -> str:
    return str(parse_reference(tag))


def save_to(store: Store, names: Sequence[str], path: str | None, *, fmt: str) -> list[Image]:
    """:func:`save` to the file ``path`` (written whole, then renamed into place) or, with None,
    to standard output.

    Raises:
        LayerfsError: as :func:`save`; ``save NAMES: write PATH: <cause>`` when the archive cannot
            be written (no space): the partial file is removed.
    """
    if path is None:
        with os.fdopen(os.dup(1), "wb", buffering=1 << 20) as out:
            return save(store, names, out, fmt=fmt)
    target = Path(path)
    part = target.with_name(f".{target.name}.part")
    try:
        with open(part, "wb") as out:
            images = save(store, names, out, fmt=fmt)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, target)
    except BaseException as err:
        try:
            os.unlink(part)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):  # a full disk: one line naming the archive, nothing of it left
            raise LayerfsError(f"save {' '.join(names)}: write {path}: {err.strerror or err}") from err
        raise
    return images
