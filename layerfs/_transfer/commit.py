"""``layerfs commit``: a writable mount's upper directory as a new image on top of its image.

:func:`commit` does what ``docker commit`` does (moby ``daemon/commit.go``, ``image.NewChildImage``):

1. the upper becomes one layer blob (:func:`layerfs._layer.generate.generate_layer`: moby's
   overlay conversion, gzip, zstd or plain), written to a leased temporary file of the store while
   the base image's layers are held;
2. the blob is added like any pulled or loaded layer (:func:`.layers.add_layer`): unpacked and
   verified into ``layers/<diff ID>``, so the layer directory is exactly what a pull or a load of
   the committed image would make;
3. a new config: the base image's, with ``created`` now, ``author`` (or none), the container
   config changed by ``--change`` instructions, the new diff ID appended to ``rootfs.diff_ids``,
   and a ``history`` entry (``created``, ``created_by``, ``author``, ``comment``: empty fields
   left out, as moby's ``NewHistory`` does).  ``container``, ``container_config`` and
   ``docker_version`` describe the base image's build, so they go;
4. an OCI manifest: the base manifest's layer descriptors (docker media types mapped to the OCI
   types of the same bytes) plus the new layer's.  The store keeps no layer blobs, so a base
   image without a manifest (``docker-archive`` loads) gives an image without one too;
5. config and manifest are stored as blobs and the image recorded with its tag, as one writer.

The blob itself is not kept (the store keeps layers unpacked); :func:`generate_layer` of the same
upper gives the same bytes again.  ``--change`` takes the Dockerfile instructions docker commit
takes (moby ``validCommitCommands``): CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD,
STOPSIGNAL, USER, VOLUME, WORKDIR; ``$VAR`` references are not expanded.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import posixpath
import re
import shlex
import time
from collections.abc import Mapping, Sequence

from .._errors import InvalidReference, LayerfsError
from .._layer.compress import Compression
from .._layer.generate import generate_layer
from .._oci import digest as _digest
from .._oci import manifest as _manifest
from .._oci.reference import parse as parse_reference
from .._store.store import Image, Store
from .layers import add_layer

_JsonDict = dict[str, object]

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
#: docker layer media types and the OCI types of the same bytes (image-spec media-types.md
#: "Compatibility Matrix").
_OCI_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}
#: Config fields that describe the base image's own build container (moby's V1Image).
_DROPPED_FIELDS = ("container", "container_config", "docker_version")


def _compression(name: str) -> Compression:
    try:
        return Compression(name)
    except ValueError:
        raise LayerfsError(f"--compress {name}: unknown compression (gzip, zstd or plain)") from None


def rfc3339(ns: int) -> str:
    """A time in ns since the epoch as Go marshals a ``time.Time`` in UTC (RFC 3339, nanoseconds
    without trailing zeros): ``2024-05-01T12:00:00.5Z``."""
    secs, frac = divmod(ns, 1_000_000_000)
    text = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def commit(store: Store, upper: str | os.PathLike[str], lower_image: Image | str, ref: str | None = None, *,
           message: str = "", compress: str = "gzip", author: str = "", changes: Sequence[str] = (),
           created_by: str = "", level: int | None = None, now_ns: int | None = None) -> Image:
    """Make the upper directory ``upper`` of a writable mount of ``lower_image`` a new image.

    Args:
        store: the store holding ``lower_image``; the new image goes there.
        upper: the upper directory (kernel overlay format); it must not change meanwhile.
        lower_image: the image the upper sits on (an :class:`Image` or a name, ID or digest).
        ref: the reference to tag the new image with (``repo[:tag]``); None leaves it untagged.
        message: the history entry's ``comment`` (``docker commit -m``).
        compress: ``gzip`` (default), ``zstd`` or ``plain``: the layer blob's compression.
        author: the config's and the history entry's ``author`` (``docker commit -a``).
        changes: Dockerfile instructions applied to the container config (``docker commit -c``).
        created_by: the history entry's ``created_by`` (docker: the container's command).
        level: the compression level (see ``generate.DEFAULT_LEVELS``).
        now_ns: the creation time (default: now).

    Returns:
        The new image.

    Raises:
        ImageNotFound: ``lower_image`` is not in the store.
        InvalidReference: ``ref`` does not parse, or carries a digest.
        LayerfsError: ``commit: <cause>``: an instruction that does not parse, an upper holding
            what a layer cannot store, a system call that failed.  The store is left as it was.
    """
    comp = _compression(compress)
    target = parse_reference(ref) if ref else None
    if target is not None and target.digest:
        raise InvalidReference(f"refusing to create a tag with a digest reference: {ref}")
    base = lower_image if isinstance(lower_image, Image) else store.get(lower_image)
    created = rfc3339(time.time_ns() if now_ns is None else now_ns)
    try:
        config = _manifest.json_object(store.read_blob(base.id), f"config {base.id}")
        base_layers = None
        if base.manifest_digest is not None and store.has_blob(base.manifest_digest):
            base_layers = _manifest.parse_manifest(store.read_blob(base.manifest_digest), base.manifest_digest).layers
        for field in _DROPPED_FIELDS:
            config.pop(field, None)
        container = config.get("config")
        container = copy.deepcopy(container) if isinstance(container, dict) else {}
        apply_changes(container, changes)
        config["config"] = container
        with store.hold(base.diff_ids):
            lease = store.temp_file("commit-layer")
            try:
                with os.fdopen(os.dup(lease.fd), "wb", buffering=1 << 20) as blob:
                    layer = generate_layer(upper, store.layer_dirs(base), blob, compression=comp, level=level)
                with store.hold([layer.diff_id]):
                    add_layer(store, lambda: open(lease.path, "rb"), diff_id=layer.diff_id, digest=layer.digest,
                              size=layer.size, media_type=layer.media_type)
                    _finish_config(config, layer.diff_id, created=created, author=author, comment=message,
                                   created_by=created_by)
                    config_data = _json_bytes(config)
                    config_digest = _digest.of_bytes(config_data)
                    manifest_data = None
                    if base_layers is not None:
                        layers = [{"mediaType": _OCI_LAYER_TYPES.get(d.media_type, d.media_type), "digest": d.digest,
                                   "size": d.size} for d in base_layers]
                        layers.append({"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size})
                        manifest_data = _json_bytes({
                            "schemaVersion": 2, "mediaType": _manifest.OCI_MANIFEST,
                            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_data)},
                            "layers": layers})
                    with store.writer() as w:
                        w.put_blob(config_data, config_digest)
                        manifest_digest = w.put_blob(manifest_data) if manifest_data is not None else None
                        return w.add_image(config_digest, manifest_digest=manifest_digest,
                                           tags=[target] if target else [], record_digests=False)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(lease.path)
                lease.release()
    except LayerfsError as err:
        raise err.with_context("commit") from err
    except OSError as err:
        raise LayerfsError(f"commit: {err.strerror or err}") from err


def _finish_config(config: _JsonDict, diff_id: str, *, created: str, author: str, comment: str,
                   created_by: str) -> None:
    """The config of the child image (moby ``image.NewChildImage``, ``NewHistory``)."""
    config["created"] = created
    if author:
        config["author"] = author
    else:
        config.pop("author", None)
    rootfs = config.get("rootfs")
    diff_ids = list(rootfs.get("diff_ids", [])) if isinstance(rootfs, dict) else []
    config["rootfs"] = {"type": "layers", "diff_ids": [*diff_ids, diff_id]}
    history = config.get("history")
    entry = {k: v for k, v in (("created", created), ("author", author), ("created_by", created_by),
                               ("comment", comment)) if v}
    config["history"] = [*(history if isinstance(history, list) else []), entry]


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- --change: Dockerfile instructions on the container config ------------------------------------

#: What ``docker commit --change`` accepts (moby ``daemon/commit.go`` ``validCommitCommands``).
COMMIT_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "STOPSIGNAL",
                       "USER", "VOLUME", "WORKDIR")

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "h": 3_600_000_000_000}


def apply_changes(container: _JsonDict, changes: Sequence[str]) -> None:
    """Apply Dockerfile instructions to a container config (the ``config`` of an image config),
    as ``docker commit --change`` does (moby ``builder/dockerfile`` dispatchers):

    - ``CMD`` / ``ENTRYPOINT``: a JSON array is the exec form, anything else the shell form
      (``Shell``, default ``["/bin/sh", "-c"]``, then the text); ``ENTRYPOINT`` clears ``Cmd``
      unless a ``CMD`` came before it in the same list;
    - ``ENV k=v ...`` or ``ENV k v`` (one variable, the rest of the line); ``LABEL k=v ...``;
      quotes and backslashes as in a Dockerfile; ``$VAR`` is not expanded;
    - ``EXPOSE 80 53/udp 8000-8002``: ``ExposedPorts`` (tcp unless a protocol is given);
    - ``VOLUME`` a JSON array or words; ``WORKDIR`` relative to the previous one; ``USER``,
      ``STOPSIGNAL``; ``ONBUILD`` appends its instruction;
    - ``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval=D] [--timeout=D] [--start-period=D]
      [--start-interval=D] [--retries=N] CMD ...`` (durations as Go writes them: ``30s``, ``1m30s``).

    Raises:
        LayerfsError: ``--change '<line>': <what is wrong>``.
    """
    cmd_set = False
    for line in changes:
        words = line.strip().split(None, 1)
        if not words:
            continue
        instruction = words[0].upper()
        rest = words[1].strip() if len(words) > 1 else ""
        try:
            if instruction not in COMMIT_INSTRUCTIONS:
                raise ValueError(f"{words[0]} is not an instruction docker commit takes "
                                 f"({', '.join(COMMIT_INSTRUCTIONS)})")
            if not rest:
                raise ValueError(f"{instruction} requires an argument")
            if instruction == "CMD":
                container["Cmd"] = _command(container, rest)
                cmd_set = True
            elif instruction == "ENTRYPOINT":
                container["Entrypoint"] = _command(container, rest)
                if not cmd_set:
                    container["Cmd"] = None
            elif instruction == "ENV":
                env = [str(v) for v in container.get("Env") or []]  # type: ignore[attr-defined]
                for key, value in _pairs(rest):
                    env = [v for v in env if v.partition("=")[0] != key] + [f"{key}={value}"]
                container["Env"] = env
            elif instruction == "LABEL":
                labels = dict(container.get("Labels") or {})  # type: ignore[call-overload]
                labels.update(_pairs(rest))
                container["Labels"] = labels
            elif instruction == "EXPOSE":
                ports = dict(container.get("ExposedPorts") or {})  # type: ignore[call-overload]
                for word in _split(rest):
                    ports.update({p: {} for p in _ports(word)})
                container["ExposedPorts"] = ports
            elif instruction == "VOLUME":
                volumes = dict(container.get("Volumes") or {})  # type: ignore[call-overload]
                paths = _json_list(rest)
                for path in paths if paths is not None else _split(rest):
                    if not path:
                        raise ValueError("VOLUME specified can not be an empty string")
                    volumes[path] = {}
                container["Volumes"] = volumes
            elif instruction == "WORKDIR":
                current = str(container.get("WorkingDir") or "/")
                container["WorkingDir"] = posixpath.normpath(posixpath.join("/", current, rest))
            elif instruction == "USER":
                container["User"] = rest
            elif instruction == "STOPSIGNAL":
                container["StopSignal"] = rest
            elif instruction == "ONBUILD":
                trigger = rest.split(None, 1)
                if trigger[0].upper() in ("ONBUILD", "FROM", "MAINTAINER"):
                    raise ValueError(f"{trigger[0].upper()} isn't allowed as an ONBUILD trigger")
                container["OnBuild"] = [*(container.get("OnBuild") or []),  # type: ignore[misc]
                                        " ".join([trigger[0].upper(), *trigger[1:]])]
            else:
                container["Healthcheck"] = _healthcheck(container, rest)
        except ValueError as err:
            raise LayerfsError(f"--change {line!r}: {err}") from None


def _json_list(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _command(container: Mapping[str, object], text: str) -> list[str]:
    exec_form = _json_list(text)
    if exec_form is not None:
        return exec_form
    shell = container.get("Shell")
    prefix = [str(s) for s in shell] if isinstance(shell, list) and shell else ["/bin/sh", "-c"]
    return [*prefix, text]


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text, posix=True)
    except ValueError as err:
        raise ValueError(f"cannot split {text!r}: {err}") from None


def _pairs(text: str) -> list[tuple[str, str]]:
    """``k=v k2="v 2"`` pairs, or the legacy ``key value with spaces``."""
    first = text.split(None, 1)
    if "=" not in first[0]:
        if len(first) < 2:
            raise ValueError(f"{text!r}: needs a value (key=value, or key value)")
        return [(first[0], first[1].strip())]
    out = []
    for word in _split(text):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"{word!r}: want key=value")
        out.append((key, value))
    return out


def _ports(word: str) -> list[str]:
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto: {proto}")
    start, sep, end = port.partition("-")
    if not start.isdigit() or (sep and not end.isdigit()):
        raise ValueError(f"invalid containerPort: {port}")
    low, high = int(start), int(end) if sep else int(start)
    if not 0 < low <= high <= 65535:
        raise ValueError(f"invalid port range: {port}")
    return [f"{p}/{proto}" for p in range(low, high + 1)]


def _duration(text: str) -> int:
    """A Go duration (``1m30s``, ``500ms``) in ns."""
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}")
    return int(total)


def _healthcheck(container: Mapping[str, object], text: str) -> _JsonDict:
    if text.upper() == "NONE":
        return {"Test": ["NONE"]}
    check: _JsonDict = {}
    flags = {"--interval": "Interval", "--timeout": "Timeout", "--start-period": "StartPeriod",
             "--start-interval": "StartInterval"}
    while text.startswith("--"):
        flag, _, text = text.partition(" ")
        text = text.strip()
        name, sep, value = flag.partition("=")
        if name == "--retries" and sep and value.isdigit():
            check["Retries"] = int(value)
        elif name in flags and sep:
            check[flags[name]] = _duration(value)
        else:
            raise ValueError(f"unknown or malformed HEALTHCHECK flag {flag!r}")
    words = text.split(None, 1)
    if not words or words[0].upper() != "CMD" or len(words) < 2:
        raise ValueError("want HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD command")
    exec_form = _json_list(words[1].strip())
    check["Test"] = ["CMD", *exec_form] if exec_form is not None else ["CMD-SHELL", words[1].strip()]
    return check


__all__ = ["COMMIT_INSTRUCTIONS", "apply_changes", "commit", "rfc3339"]
