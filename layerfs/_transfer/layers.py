"""Adding a layer blob to the store: stage, unpack and verify, then publish.

The one place where the store's "stage, then publish" meets the unpacker: pull and load (and
later commit) hand a blob here; the store never imports the unpacker.  No store lock is held
while the blob is read and unpacked: only the publishing rename takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from .._errors import LayerfsError
from .._layer import tree as _tree
from .._layer.unpack import unpack_layer
from .._oci.digest import Readable
from .._store.store import LayerRecord, Store


def add_layer(store: Store, open_blob: Callable[[], AbstractContextManager[Readable]], *, diff_id: str,
              digest: str | None = None, size: int | None = None, media_type: str | None = None,
              cancelled: Callable[[], bool] | None = None) -> LayerRecord:
    """Unpack a layer blob into the store, verified; safe to call from several threads and processes.

    Call it under a :meth:`Store.hold` of ``diff_id`` (the layer must outlive clean-ups until an
    image lists it).  Two callers adding one layer at once make it once: the second waits for
    the first (see :meth:`Store.stage_layer`) and opens no blob.

    Args:
        store: the store.
        open_blob: opens the blob as stored or transferred (gzip, zstd or plain tar), to be read to
            EOF; called only if the store lacks the layer.
        diff_id: the expected digest of the uncompressed tar (from the image config).
        digest, size: the expected digest and size of the blob (from the manifest), if known.
        media_type: the descriptor's media type; the compression is sniffed anyway.
        cancelled: asked while waiting for another command making the same layer.
    Returns:
        The record; ``existed`` is true if the layer was already there (no blob was opened).
    Raises:
        DigestMismatch, BadArchive, OSError: nothing of the layer is left in the store.
    """
    with store.stage_layer(diff_id, cancelled=cancelled) as stage:
        if isinstance(stage, LayerRecord):
            return stage
        with open_blob() as stream:
            try:
                stats = unpack_layer(stream, stage.diff, diff_id=diff_id, digest=digest, size=size,
                                     media_type=media_type)
            except LayerfsError as err:
                raise err.with_context(f"layer {diff_id}") from err
        return store.publish_layer(stage, size=stats.size, entries=stats.entries,
                                   digests=[d for d in (digest, stats.digest) if d], media_type=media_type,
                                   tree=_tree.digest(stage.diff))
