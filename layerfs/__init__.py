"""layerfs: pull, unpack and mount OCI / Docker images without a daemon.

The package is a set of private subpackages named for the concepts, in the direction data flows
(registry -> store -> layers -> mount); each imports only from the ones listed before it
(``tests/test_architecture.py`` enforces it):

- leaves: ``_errors`` (the errors), ``_units`` (sizes and times as docker prints them), ``_proc``
  (what /proc says), ``_sys`` (the C extension's system calls: openat2 and the like); the C
  extension ``_native`` itself is imported by ``_sys`` and, for the merged index and the FUSE
  session, by ``_mount.index``;
- ``_oci``: the formats: digests, references, platforms, manifests and configs;
- ``_registry``: the distribution API over HTTP: the client and its auth;
- ``_layer``: a layer tar in overlay form: whiteouts, overrides, compression, the safe unpacker,
  and the other way: a layer generated from a tree or an upper (diff, commit);
- ``_store``: the content-addressed store and its container records; it offers "stage, then
  publish" and imports none of the rooms that fill it;
- ``_transfer``: moving images between the store and the world (pull, load, save, push, commit);
- ``_mount``: the merged FUSE view of a stack: merge, index, cache policy, the writable upper's
  set-up, ID mappings, the daemon;
- ``_run``: using a mounted container: OCI runtime bundles and their config, running them;
- ``_maint``: keeping the store whole: verify and repair, prune;
- ``_cli``: the command line, a thin layer over all of the above.

The public API is what this module re-exports.
"""
from __future__ import annotations

from ._errors import BadArchive as BadArchive
from ._errors import BadImage as BadImage
from ._errors import Conflict as Conflict
from ._errors import DigestMismatch as DigestMismatch
from ._errors import ImageNotFound as ImageNotFound
from ._errors import InvalidReference as InvalidReference
from ._errors import LayerfsError as LayerfsError
from ._errors import MountError as MountError
from ._errors import RegistryError as RegistryError

#: typing.TYPE_CHECKING without importing typing (~2 ms of every command's start, a mount
#: program's included): mypy and ruff read any name TYPE_CHECKING as true.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from ._oci.reference import Reference as Reference
    from ._oci.reference import parse as parse_reference
    from ._store import Image as Image
    from ._store import LayerRecord as LayerRecord
    from ._store import MountRecord as MountRecord
    from ._store import Store as Store

#: The re-exports imported when first used: every ``layerfs`` command imports this package, and
#: the store's modules are not what ``layerfs -o ... TARGET`` (a mount program) needs.
_LAZY = {
    "Reference": ("._oci.reference", "Reference"), "parse_reference": ("._oci.reference", "parse"),
    "Image": ("._store", "Image"), "LayerRecord": ("._store", "LayerRecord"),
    "MountRecord": ("._store", "MountRecord"), "Store": ("._store", "Store"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'layerfs' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


__all__ = [
    "BadArchive", "BadImage", "Conflict", "DigestMismatch", "Image", "ImageNotFound", "InvalidReference",
    "LayerRecord", "LayerfsError", "MountError", "MountRecord", "Reference", "RegistryError", "Store",
    "parse_reference",
]
