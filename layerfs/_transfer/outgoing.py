"""What an image is made of when it leaves the store (push, save): its manifest and blobs.

:func:`plan` picks the manifest: the exact bytes the image came with when every layer it lists
is at hand (the store kept the blob, or a registry has it), so a pulled image keeps its digests;
else a new OCI manifest of the blobs the store kept.  Layer blobs are those kept beside each
layer (``layers/<diff ID>/blob``, see ``layers``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .._errors import InvalidReference, LayerfsError
from .._oci import manifest as _manifest
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .._store.store import Image, Store

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    path: Path | None  # the kept file, or None (only pushable if the registry has it)
    data: bytes | None = None  # small blobs (the config) in memory
    what: str = "layer"


def sources(image: Image, target: Reference) -> list[str]:
    """Repositories of the target's registry the image is known in: where a mount may come from."""
    out = []
    for name in (*image.repo_tags, *image.repo_digests):
        try:
            ref = parse_reference(name, default_tag=False)
        except InvalidReference:
            continue
        if ref.domain == target.domain and ref.path != target.path and ref.path not in out:
            out.append(ref.path)
    return out


def plan(store: Store, image: Image) -> tuple[bytes, str, list[Blob]]:
    """The manifest to send (bytes, media type) and the layer blobs it lists (a blob whose
    ``path`` is None was not kept: only a registry that has it can do without it)."""
    kept: dict[str, tuple[Path, int, str | None]] = {}
    for diff_id in image.diff_ids:
        blob = store.layer_blob(diff_id)
        if blob is not None:
            kept[blob[1]] = (blob[0], blob[2], blob[3])
    if image.manifest_digest is not None and store.has_blob(image.manifest_digest):
        data = store.read_blob(image.manifest_digest)
        manifest = _manifest.parse_manifest(data, image.manifest_digest)
        body = _manifest.json_object(data, f"manifest {image.manifest_digest}")
        media_type = str(body.get("mediaType") or _manifest.OCI_MANIFEST)
        del body
        if manifest.config.digest == image.id:
            layers = [Blob(d.digest, d.size, d.media_type, kept[d.digest][0] if d.digest in kept else None)
                      for d in manifest.layers]
            return data, media_type, layers
    # a new OCI manifest of the kept blobs
    layers = []
    for diff_id in image.diff_ids:
        blob = store.layer_blob(diff_id)
        if blob is None:
            raise LayerfsError(f"layer {diff_id}: the store did not keep its blob (an image made before blobs "
                               f"were kept, or LAYERFS_KEEP_BLOBS=0), and the image has no manifest naming "
                               f"it: pull the image again to push it")
        path, digest, size, layer_type = blob
        layers.append(Blob(digest, size, layer_type or "application/vnd.oci.image.layer.v1.tar+gzip", path))
    config = store.read_blob(image.id)
    data = json.dumps({
        "schemaVersion": 2, "mediaType": _manifest.OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": image.id, "size": len(config)},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in layers],
    }, indent=3).encode()
    return data, _manifest.OCI_MANIFEST, layers


