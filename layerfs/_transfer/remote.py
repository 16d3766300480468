"""Images in a registry, looked at without pulling them: what ``layerfs inspect --remote``
(``skopeo inspect``), ``layerfs manifest`` (``crane manifest``) and ``layerfs tags`` (``skopeo
list-tags``, ``crane ls``) print.

Nothing here touches the store: a remote image is its top manifest (an index or a manifest, the
exact bytes the registry serves), the image manifest chosen from it for a platform (containerd's
rules, as pull chooses), and that manifest's config.  Manifests fetched by digest and the config
are verified against their digests, as a pull verifies them.

skopeo's output is reproduced field by field (skopeo's ``cmd/skopeo/inspect/output.go`` and
containers/image's ``types.ImageInspectInfo``): ``Name`` (the repository), ``Digest`` (of the
top manifest's bytes, an index's when the reference names one), ``RepoTags`` (the repository's
tags), then from the chosen image ``Created``, ``DockerVersion``, ``Labels``, ``Architecture``,
``Os``, ``Layers`` (blob digests), ``LayersData`` and ``Env``; JSON as Go's ``json.MarshalIndent``
writes it (four spaces, ``<``, ``>`` and ``&`` escaped, times in RFC 3339 with the trailing zeros
of the fraction dropped).  ``--config`` prints the config as the OCI image-spec's ``Image`` type
holds it, as skopeo does (fields in that type's order, others dropped).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence

from .._errors import BadImage
from .._oci import manifest as _manifest
from .._oci import platform as _platform
from .._oci.digest import of_bytes
from .._oci.reference import Reference
from .._registry.client import RegistryClient


@dataclasses.dataclass(frozen=True)
class RemoteImage:
    """An image as a registry serves it, for one platform.

    ``top`` is what the reference names (an index or an image manifest), ``manifest`` the image
    manifest chosen from it (``top`` itself for a single-platform image), ``config`` its config.
    """

    ref: Reference
    top: bytes
    top_type: str
    top_digest: str
    manifest: bytes
    manifest_type: str
    manifest_digest: str
    config: bytes
    config_digest: str
    layers: tuple[Mapping[str, object], ...]


def top_manifest(client: RegistryClient, ref: Reference) -> tuple[bytes, str, str]:
    """The manifest or index ``ref`` names, as served: (bytes, media type, digest of the bytes).

    Raises:
        LayerfsError: the registry refused or sent something that is not a manifest.
    """
    data, media_type = client.get_manifest(ref)
    return data, media_type, ref.digest or of_bytes(data)


def for_platform(client: RegistryClient, ref: Reference, data: bytes, media_type: str, digest: str,
                 platform: _platform.Platform | None) -> tuple[bytes, str, str]:
    """The image manifest for ``platform`` (default: this host's) out of ``data``: the entry an
    index gives it, fetched and verified; ``data`` itself when it is an image manifest.

    Returns:
        (bytes, media type, digest).
    Raises:
        LayerfsError: no entry fits (naming the platforms offered), or a nested index.
    """
    if media_type not in _manifest.INDEX_TYPES:
        return data, media_type, digest
    child = _manifest.choose_platform(data, digest, platform)
    body, child_type = client.fetch_manifest(ref, child.digest)
    if child_type in _manifest.INDEX_TYPES:
        raise BadImage(f"manifest {child.digest}: nested indexes are not supported")
    return body, child_type, child.digest


def fetch(client: RegistryClient, ref: Reference, platform: _platform.Platform | None = None) -> RemoteImage:
    """The image ``ref`` names, for ``platform`` (default: this host's), with its config; no layer
    is fetched.

    Raises:
        LayerfsError: the registry refused, a digest does not match, or the manifest is not an
            image's.
    """
    top, top_type, top_digest = top_manifest(client, ref)
    data, media_type, digest = for_platform(client, ref, top, top_type, top_digest, platform)
    doc = _manifest.json_object(data, f"manifest {digest}")
    config = _manifest.descriptor(doc.get("config"), f"manifest {digest} config")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise BadImage(f"manifest {digest}: no layers list")
    layers = []
    for i, raw in enumerate(raw_layers):
        _manifest.descriptor(raw, f"manifest {digest} layer {i}")  # checked
        assert isinstance(raw, Mapping)
        layers.append(raw)
    blob = client.fetch_blob(ref, config.digest, config.size)
    return RemoteImage(ref, top, top_type, top_digest, data, media_type, digest, blob, config.digest,
                       tuple(layers))


# -- skopeo's output ---------------------------------------------------------------------------

_TIME_RE = re.compile(r"\A(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)\Z")


def go_time(text: str) -> str:
    """An RFC 3339 time as Go's ``time.Time`` marshals it (``RFC3339Nano``): at most nine
    fractional digits, without trailing zeros, and ``Z`` for a zero offset.  A text that is not
    such a time is returned as it is."""
    m = _TIME_RE.match(text)
    if not m:
        return text
    date, clock, frac, zone = m.groups()
    frac = (frac or "")[:9].rstrip("0")
    if zone.upper() == "Z" or zone in ("+00:00", "-00:00"):
        zone = "Z"
    return f"{date}T{clock}{'.' + frac if frac else ''}{zone}"


def go_json(value: object) -> str:
    """``value`` as Go's ``json.MarshalIndent(v, "", "    ")`` writes it (HTML characters escaped)."""
    text = json.dumps(value, indent=4, ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _config_section(config: Mapping[str, object]) -> Mapping[str, object]:
    section = config.get("config")
    return section if isinstance(section, Mapping) else {}


def skopeo_inspect(image: RemoteImage, tags: Sequence[str]) -> dict[str, object]:
    """What ``skopeo inspect docker://REF`` prints for ``image``, as a dict in skopeo's field order
    (see the module docstring); ``tags`` are the repository's (``RepoTags``).

    Raises:
        BadImage: the config is not a JSON object.
    """
    config = _manifest.json_object(image.config, f"config {image.config_digest}")
    section = _config_section(config)
    created = config.get("created")
    return {
        "Name": image.ref.repository,
        "Digest": image.top_digest,
        "RepoTags": list(tags),
        "Created": go_time(created) if isinstance(created, str) and created else None,
        "DockerVersion": config.get("docker_version") or "",
        "Labels": section.get("Labels"),  # {} stays {}, as Go decodes and encodes an empty map
        "Architecture": config.get("architecture") or "",
        "Os": config.get("os") or "",
        "Layers": [layer.get("digest") for layer in image.layers],
        "LayersData": [{"MIMEType": layer.get("mediaType") or "", "Digest": layer.get("digest"),
                        "Size": layer.get("size"), "Annotations": layer.get("annotations")}
                       for layer in image.layers],
        "Env": section.get("Env"),
    }


#: The OCI image-spec's ``Image`` type, as skopeo's ``--config`` marshals it: (JSON name, kind,
#: omitted when empty), in the type's order ("Image JSON Description"; ``Platform`` embedded).
_IMAGE_FIELDS = (("created", "time", True), ("author", "", True), ("architecture", "", False),
                 ("os", "", False), ("os.version", "", True), ("os.features", "", True),
                 ("variant", "", True), ("config", "config", False), ("rootfs", "rootfs", False),
                 ("history", "history", True))
_CONFIG_FIELDS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
                  "StopSignal", "ArgsEscaped")
_HISTORY_FIELDS = ("created", "created_by", "author", "comment", "empty_layer")


def _get(obj: Mapping[str, object], name: str) -> object:
    """``obj[name]``, matched as Go's decoder matches a field: exactly, else ignoring case."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if key.lower() == name.lower():
            return value
    return None


def _sorted_maps(value: object) -> object:
    """Maps with their keys sorted, as Go marshals a ``map``."""
    if isinstance(value, Mapping):
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    return value


def oci_config(config: bytes, digest: str) -> dict[str, object]:
    """The config as skopeo's ``inspect --config`` prints it (see the module docstring).

    Raises:
        BadImage: the config is not a JSON object.
    """
    doc = _manifest.json_object(config, f"config {digest}")
    out: dict[str, object] = {}
    for name, kind, omit_empty in _IMAGE_FIELDS:
        value = _get(doc, name)
        if kind == "time":
            value = go_time(value) if isinstance(value, str) else None
        elif kind == "config":
            section = value if isinstance(value, Mapping) else {}
            value = {f: _sorted_maps(v) for f in _CONFIG_FIELDS if (v := _get(section, f)) not in (None, "", [], {},
                                                                                                    False)}
        elif kind == "rootfs":
            section = value if isinstance(value, Mapping) else {}
            value = {"type": _get(section, "type") or "", "diff_ids": _get(section, "diff_ids")}
        elif kind == "history":
            entries = value if isinstance(value, list) else []
            value = [{f: go_time(v) if f == "created" and isinstance(v, str) else v
                      for f in _HISTORY_FIELDS if (v := _get(h, f)) not in (None, "", False)}
                     for h in entries if isinstance(h, Mapping)]
        if omit_empty and value in (None, "", [], {}):
            continue
        out[name] = "" if value is None and kind == "" else value
    return out

