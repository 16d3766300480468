"""Adding a layer blob to the store: stage, unpack and verify, then publish.

The one place where the store's "stage, then publish" meets the unpacker: pull and load (and
commit) hand a blob here; the store never imports the unpacker.  No store lock is held while the
blob is read and unpacked: only the publishing rename takes it.

The blob itself is kept too, as it came (compressed), in ``layers/<diff ID>/blob``: written while
it streams into the unpacker, verified by the same digest, published with the layer.  ``save`` and
``push`` then give back the exact bytes, so a pulled image pushed or saved keeps its layer and
manifest digests (a layer directory cannot be turned back into the same tar: entry order and
headers are the builder's).  The cost on disk is the image's compressed size; set
``LAYERFS_KEEP_BLOBS=0`` to keep none (``save`` and ``push`` then need the registry to have them).
"""

from __future__ import annotations

import os
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
        keep = keep_blobs()
        with open_blob() as stream, _Tee(stream, stage.path / "blob" if keep else None) as tee:
            try:
                stats = unpack_layer(tee, stage.diff, diff_id=diff_id, digest=digest, size=size,
                                     media_type=media_type)
            except LayerfsError as err:
                raise err.with_context(f"layer {diff_id}") from err
        blob = {"digest": stats.digest, "size": stats.compressed_size, "media_type": media_type} if keep else None
        return store.publish_layer(stage, size=stats.size, entries=stats.entries,
                                   digests=[d for d in (digest, stats.digest) if d], media_type=media_type,
                                   tree=_tree.digest(stage.diff), blob=blob)


def keep_blobs() -> bool:
    """Whether layer blobs are kept (see the module docstring): unless ``LAYERFS_KEEP_BLOBS=0``."""
    return os.environ.get("LAYERFS_KEEP_BLOBS", "1") != "0"


class _Tee:
    """A blob stream that also writes what is read of it to a file (the kept blob)."""

    def __init__(self, stream: Readable, path: os.PathLike[str] | None) -> None:
        self._stream = stream
        self._fd = -1 if path is None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> _Tee:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        data = self._stream.read(n)
        if data and self._fd >= 0:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
