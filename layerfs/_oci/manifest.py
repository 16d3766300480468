"""The image formats that pull and load both read: media types, descriptors, manifests, indexes.

One place for the rules of image-spec and docker schema 2 (docs/oci.rst "Content negotiation",
"Digests and identifiers", "Platforms", "Media types and compression"), so that an image from a
registry and the same image from a layout on disk are checked alike:

- a descriptor has a media type, a well-formed digest and a size;
- a manifest's ``mediaType``, when present, must equal what pointed at it (CVE-2021-41190);
  umoci omits the field, so the pointer's type is used then;
- a manifest whose config is not an image config is an artifact: refused, never unpacked;
- a layer must be of a tar media type (its compression is sniffed anyway); foreign layers
  (``urls``) are refused, never fetched with registry credentials (CVE-2020-15157);
- an index entry is chosen for a platform with containerd's rules (:mod:`layerfs._oci.platform`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from .._errors import BadImage
from . import platform as _platform
from .digest import is_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
#: Every manifest type we read (sent in ``Accept`` on every manifest request, HEAD and GET alike).
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
#: Config media types of container images (anything else is an artifact: refused, never unpacked).
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
#: Layer media types that can be unpacked (compression is sniffed anyway).
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A checked content descriptor (``mediaType`` may be empty where the format allows it)."""

    media_type: str
    digest: str
    size: int
    platform: _platform.Platform | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A checked image manifest: its config and its layers, base first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


def json_object(data: bytes, what: str) -> dict[str, object]:
    """Parse ``data`` as a JSON object, or raise :class:`BadImage` naming ``what``."""
    try:
        obj = json.loads(data)
    except ValueError as err:
        raise BadImage(f"{what}: not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadImage(f"{what}: not a JSON object")
    return obj


def descriptor(obj: object, what: str) -> Descriptor:
    """Check a descriptor: a media type (string, may be empty), a valid digest, a size >= 0."""
    if not isinstance(obj, Mapping):
        raise BadImage(f"{what}: malformed descriptor")
    media_type, digest, size = obj.get("mediaType", ""), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise BadImage(f"{what}: malformed descriptor {dict(obj)!r}")
    if not is_digest(digest):
        raise BadImage(f"{what}: bad digest {digest!r} (want sha256:<64 hex>)")
    return Descriptor(media_type, digest, size, _platform.from_json(obj.get("platform")))


def media_type(doc: Mapping[str, object], declared: str, what: str) -> str:
    """The media type of a manifest or index: its ``mediaType`` field must agree with what
    pointed at it (a descriptor, or a ``Content-Type``); schema 1 is refused."""
    if doc.get("schemaVersion") == 1 or declared in SCHEMA1_TYPES:
        raise BadImage(f"{what}: Docker Image manifest schema 1 is not supported; push it again with a "
                       f"current tool")
    field = doc.get("mediaType")
    if field is not None and not isinstance(field, str):
        raise BadImage(f"{what}: mediaType is not a string")
    if field and declared and field != declared:
        raise BadImage(f"{what}: media type {field!r} in the manifest does not match {declared!r}")
    found = field or declared or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if found not in MANIFEST_TYPES:
        raise BadImage(f"{what}: unsupported media type {found!r}")
    return found


def parse_manifest(data: bytes, digest: str) -> Manifest:
    """Check an image manifest: an image config, and layers of tar media types.

    Raises:
        BadImage: not JSON, an artifact, a foreign or unknown layer type, a malformed descriptor.
    """
    doc = json_object(data, f"manifest {digest}")
    config = descriptor(doc.get("config"), f"manifest {digest} config")
    if config.media_type not in CONFIG_TYPES:
        raise BadImage(f"manifest {digest}: not a container image (config type {config.media_type!r}); "
                       f"artifacts cannot be unpacked")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise BadImage(f"manifest {digest}: no layers list")
    layers = []
    for i, raw in enumerate(raw_layers):
        layer = descriptor(raw, f"manifest {digest} layer {i}")
        if layer.media_type not in LAYER_TYPES:
            raise BadImage(f"manifest {digest}: layer {layer.digest}: unsupported media type {layer.media_type!r}")
        if isinstance(raw, Mapping) and raw.get("urls"):
            raise BadImage(f"manifest {digest}: layer {layer.digest}: foreign layers (urls) are not supported")
        layers.append(layer)
    return Manifest(config, tuple(layers))


def diff_ids(config: bytes, digest: str, layers: int | None = None) -> list[str]:
    """The ``rootfs.diff_ids`` of an image config, checked (and against the manifest's layer
    count, when given)."""
    doc = json_object(config, f"config {digest}")
    rootfs = doc.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if not isinstance(rootfs, Mapping) or rootfs.get("type") != "layers" or not isinstance(ids, list):
        raise BadImage(f"config {digest}: rootfs must be {{\"type\": \"layers\", \"diff_ids\": [...]}}")
    for d in ids:
        if not isinstance(d, str) or not is_digest(d):
            raise BadImage(f"config {digest}: bad diff_id {d!r}")
    if layers is not None and len(ids) != layers:
        raise BadImage(f"config {digest}: {len(ids)} diff IDs for {layers} layers")
    return list(ids)


def choose_platform(index: bytes, digest: str, wanted: _platform.Platform | None) -> Descriptor:
    """The entry of an image index for ``wanted`` (default: the host), by containerd's rules.

    Raises:
        BadImage: no manifests list; LayerfsError listing the platforms offered when none match.
    """
    doc = json_object(index, f"index {digest}")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise BadImage(f"index {digest}: no manifests list")
    entries: list[tuple[_platform.Platform | None, Descriptor]] = []
    for i, raw in enumerate(manifests):
        entry = descriptor(raw, f"index {digest} entry {i}")
        if entry.media_type in IMAGE_MANIFEST_TYPES or not entry.media_type:
            entries.append((entry.platform, entry))  # nested indexes, artifacts: not for a platform
    return _platform.choose(entries, wanted or _platform.host(), where=f"manifest {digest}")[0]
