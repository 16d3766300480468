"""layerfs: pull, unpack and mount OCI / Docker images without a daemon.

The layers of the package, in the direction data flows (registry -> store -> layers -> mount);
a module imports only from its left:

- ``_reference``, ``_digest``, ``_errors``: names, digests and errors shared by everything;
- ``_registry``, ``_auth``, ``_platform``, ``_pull``: talking to registries (issue: pull);
- ``_load``: reading image layouts and archives from disk;
- ``_store``: the content-addressed store (blobs, layers, images, references, mounts);
- ``_unpack``, ``_compress``, ``_whiteout``, ``_sys``: applying a layer tar safely, in overlay form;
- ``_merge``, ``_index``, ``_handlers``, ``_mount``: the merged FUSE view of a layer stack;
- ``_cli`` and ``_cmd_*``: the command line, a thin layer over all of the above.

The public API is what this module re-exports.
"""

from ._errors import BadArchive as BadArchive
from ._errors import BadImage as BadImage
from ._errors import Conflict as Conflict
from ._errors import DigestMismatch as DigestMismatch
from ._errors import ImageNotFound as ImageNotFound
from ._errors import InvalidReference as InvalidReference
from ._errors import LayerfsError as LayerfsError
from ._errors import MountError as MountError
from ._errors import RegistryError as RegistryError
from ._reference import Reference as Reference
from ._reference import parse as parse_reference
from ._store import Image as Image
from ._store import LayerRecord as LayerRecord
from ._store import MountRecord as MountRecord
from ._store import Store as Store

__all__ = [
    "BadArchive", "BadImage", "Conflict", "DigestMismatch", "Image", "ImageNotFound", "InvalidReference",
    "LayerRecord", "LayerfsError", "MountError", "MountRecord", "Reference", "RegistryError", "Store",
    "parse_reference",
]
