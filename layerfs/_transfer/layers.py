"""Adding a layer blob to the store: stage, unpack and verify, then publish.

The one place where the store's "stage, then publish" meets the unpacker: pull and load (and
later commit) hand a blob stream here; the store never imports the unpacker.
"""

from __future__ import annotations

from .._errors import LayerfsError
from .._layer.unpack import unpack_layer
from .._oci.digest import Readable
from .._store.store import LayerRecord, Writer


def add_layer(writer: Writer, stream: Readable, *, diff_id: str, digest: str | None = None,
              size: int | None = None, media_type: str | None = None) -> LayerRecord:
    """Unpack a layer blob into the store, verified; safe to call from several threads.

    Args:
        writer: the store writer of the command.
        stream: the blob as stored or transferred (gzip, zstd or plain tar), read to EOF.
        diff_id: the expected digest of the uncompressed tar (from the image config).
        digest, size: the expected digest and size of ``stream`` (from the manifest), if known.
        media_type: the descriptor's media type; the compression is sniffed anyway.
    Returns:
        The record; ``existed`` is true if the layer was already there (``stream`` is not read).
    Raises:
        DigestMismatch, BadArchive, OSError: nothing of the layer is left in the store.
    """
    with writer.stage_layer(diff_id) as stage:
        if isinstance(stage, LayerRecord):
            return stage
        try:
            stats = unpack_layer(stream, stage.diff, diff_id=diff_id, digest=digest, size=size,
                                 media_type=media_type)
        except LayerfsError as err:
            raise err.with_context(f"layer {diff_id}") from err
        return writer.publish_layer(stage, size=stats.size, entries=stats.entries,
                                    digests=[d for d in (digest, stats.digest) if d], media_type=media_type)
