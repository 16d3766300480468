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

A layer's directories that the tar carries only as parents (and its root, without a ``./``
entry) take their attributes from the layers below
(:func:`layerfs._layer.unpack.inherit_attributes`), so such a layer is published only once the
layers below it are in the store: :class:`Lowers` lets the threads that add one image's layers
in parallel wait for each other.  A layer never waits while it holds its stage, which another
command may be waiting for (that command's image could hold the two layers in the other order):
it parks what it unpacked in a directory of its own, waits, and stages again to publish.
Another command that then stages the same layer waits for the parked one to be published
instead of fetching it again (two pulls sharing a layer fetch it once); for a few seconds only
if it has layers of its own parked, as two such commands could wait for each other, and for a
few minutes at most otherwise, as the other may never go on (:func:`_wait_parked`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from .._errors import LayerfsError
from .._layer import tree as _tree
from .._layer.unpack import LayerStats, inherit_attributes, unpack_layer
from .._oci.digest import Readable, short
from .._store import lease as _lease
from .._store.store import LayerRecord, LayerStage, Store

#: Returns the layer dirs below a layer, base first, once they are all in the store; or None
#: while they are not, when asked not to wait.
LowerDirs = Callable[[bool], Sequence[Path] | None]


def add_layer(store: Store, open_blob: Callable[[], AbstractContextManager[Readable]], *, diff_id: str,
              digest: str | None = None, size: int | None = None, media_type: str | None = None,
              cancelled: Callable[[], bool] | None = None, lowers: LowerDirs | None = None,
              on_wait: Callable[[], None] | None = None) -> LayerRecord:
    """Unpack a layer blob into the store, verified; safe to call from several threads and processes.

    Call it under a :meth:`Store.hold` of ``diff_id`` and of the layers below it (the layers must
    outlive clean-ups until an image lists them).  Two callers adding one layer at once make it
    once: the second waits for the first (see :meth:`Store.stage_layer`) and opens no blob.

    Args:
        store: the store.
        open_blob: opens the blob as stored or transferred (gzip, zstd or plain tar), to be read to
            EOF; called only if the store lacks the layer.
        diff_id: the expected digest of the uncompressed tar (from the image config).
        digest, size: the expected digest and size of the blob (from the manifest), if known.
        media_type: the descriptor's media type; the compression is sniffed anyway.
        cancelled: asked while waiting for another command making the same layer.
        lowers: gives the dirs of the layers below this one in the image (:meth:`Lowers.below`);
            asked only if the layer has directories to inherit.  None: a base layer.
        on_wait: called once if it comes to wait for another command's parked layer (a progress
            line: it does not fetch the layer, and may wait minutes).
    Returns:
        The record; ``existed`` is true if the layer was already there (no blob was opened).
    Raises:
        DigestMismatch, BadArchive: nothing of the layer is left in the store.
        OSError: ``layer <diff ID>: <step>: <cause>`` (no space); nothing of the layer is left.
        LayerfsError: a layer below failed, or ``cancelled`` while waiting.
    """
    try:
        wait = True
        while True:
            try:
                return _add_layer(store, open_blob, diff_id, digest, size, media_type, cancelled, lowers, wait)
            except _ParkedElsewhere:
                wait = _wait_parked(store, diff_id, cancelled, on_wait)
                on_wait = None  # said once
    except OSError as err:  # no space (the stage, the kept blob, layer.json, parked): name the layer
        raise OSError(err.errno, f"layer {diff_id}: {err.strerror or err}") from err


class _ParkedElsewhere(Exception):
    """Another command has this layer unpacked and parked: wait for it rather than fetch it again."""


#: How many layers this process has parked now (see :func:`_wait_parked`), and its guard.
_parked_here = 0
_parked_lock = threading.Lock()


def _parked_by_another(store: Store, diff_id: str) -> bool:
    """Whether a live command (not this one) has ``diff_id`` parked in ``tmp/``."""
    prefix = f"parked-{short(diff_id)}-"
    for name in os.listdir(store.tmp_dir):
        if name.startswith(prefix):
            lease = _lease.take(store.tmp_dir / name)
            if lease is None:
                if (store.tmp_dir / name).exists():
                    return True  # leased: its owner lives
            else:
                lease.release()  # a dead command's leftover: the clean-up removes it
    return False


#: How long a command that has layers of its own parked waits for another's parked layer.
PARKED_WAIT = 5.0
#: How long a command with none parked waits for it (see :func:`_wait_parked`).
PARKED_WAIT_LONGEST = 300.0


def _wait_parked(store: Store, diff_id: str, cancelled: Callable[[], bool] | None,
                 on_wait: Callable[[], None] | None = None) -> bool:
    """Wait while another command has ``diff_id`` parked, until it is published or given up.

    A command that has no layer parked cannot be waited for by the other one, which waits only
    for the layers below its own; but those may come late or never (a registry that stalls, a
    command stopped), so it waits :data:`PARKED_WAIT_LONGEST` at most.  One that has layers parked
    too could be waited for in turn (the two images holding the layers in the other order): it
    waits :data:`PARKED_WAIT` at most.  Given up, it fetches the layer itself.

    Returns:
        False when it gave up waiting (the layer is to be fetched without waiting again).
    """
    started = time.monotonic()
    while not store.has_layer(diff_id) and _parked_by_another(store, diff_id):
        waited = time.monotonic() - started
        with _parked_lock:
            if waited > (PARKED_WAIT if _parked_here else PARKED_WAIT_LONGEST):
                return False
        if on_wait is not None:
            on_wait()
            on_wait = None
        if cancelled is not None and cancelled():
            raise LayerfsError(f"layer {diff_id}: cancelled")
        time.sleep(_lease.POLL_SECONDS)
    return True


def _add_layer(store: Store, open_blob: Callable[[], AbstractContextManager[Readable]], diff_id: str,
               digest: str | None, size: int | None, media_type: str | None, cancelled: Callable[[], bool] | None,
               lowers: LowerDirs | None, wait_for_parked: bool) -> LayerRecord:
    global _parked_here
    with store.stage_layer(diff_id, cancelled=cancelled) as stage:
        if isinstance(stage, LayerRecord):
            return stage
        if wait_for_parked and _parked_by_another(store, diff_id):
            raise _ParkedElsewhere  # (the stage goes with the block)
        keep = keep_blobs()
        with open_blob() as stream, _Tee(stream, stage.path / "blob" if keep else None) as tee:
            try:
                stats = unpack_layer(tee, stage.diff, diff_id=diff_id, digest=digest, size=size,
                                     media_type=media_type)
            except LayerfsError as err:
                raise err.with_context(f"layer {diff_id}") from err
        below = lowers(False) if lowers is not None and stats.implicit_dirs else []
        if below is not None:
            inherit_attributes(stage.diff, stats.implicit_dirs, below)
            return _publish(store, stage, stats, digest, media_type, keep)
        # the layers below are not all in: park what was unpacked, leave the stage to others, wait
        with _parked_lock:
            _parked_here += 1
        try:
            parked = _lease.new_dir(store.tmp_dir, f"parked-{short(diff_id)}")
            for name in os.listdir(stage.path):
                os.rename(stage.path / name, parked.path / name)
        except BaseException:
            with _parked_lock:
                _parked_here -= 1
            raise
    try:
        assert lowers is not None
        below = lowers(True)
        assert below is not None
        inherit_attributes(parked.path / "diff", stats.implicit_dirs, below)
        with store.stage_layer(diff_id, cancelled=cancelled) as stage:
            if isinstance(stage, LayerRecord):
                return stage   # another command published it meanwhile
            for name in os.listdir(stage.path):   # the empty diff/ of a new stage
                shutil.rmtree(stage.path / name)
            for name in os.listdir(parked.path):
                os.rename(parked.path / name, stage.path / name)
            return _publish(store, stage, stats, digest, media_type, keep)
    finally:
        shutil.rmtree(parked.path, ignore_errors=True)
        parked.release()
        with _parked_lock:
            _parked_here -= 1


def _publish(store: Store, stage: LayerStage, stats: LayerStats, digest: str | None, media_type: str | None,
             keep: bool) -> LayerRecord:
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
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as err:
                raise OSError(err.errno, f"keep its blob: {err.strerror or err}") from err
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Lowers:
    """The layers of one image being added in parallel: each waits for those below it.

    ``Lowers(store, diff_ids)`` with the image's diff IDs, base first, each once (a diff ID that
    comes again is added at its first place); then for each layer ``i`` either ``add_layer(...,
    lowers=lowers.below(i))`` followed by ``lowers.done(diff_id, ok)`` (in a ``finally``), or
    just ``lowers.done(diff_id)`` for a layer the store already has.  Every diff ID must be marked
    done, or a layer above it waits until ``cancelled``; a layer that failed makes those above it
    fail.
    """

    def __init__(self, store: Store, diff_ids: Sequence[str], *,
                 cancelled: Callable[[], bool] | None = None) -> None:
        self._store = store
        self._diff_ids = list(dict.fromkeys(diff_ids))
        self._done = {d: threading.Event() for d in self._diff_ids}
        self._failed: set[str] = set()
        self._cancelled = cancelled

    def done(self, diff_id: str, ok: bool = True) -> None:
        """Say that layer ``diff_id`` is in the store (``ok``) or will not be."""
        if not ok:
            self._failed.add(diff_id)
        self._done[diff_id].set()

    def below(self, index: int) -> LowerDirs:
        """The ``lowers`` argument of :func:`add_layer` for layer ``index`` (0 = the base)."""
        def dirs(wait: bool) -> list[Path] | None:
            below = self._diff_ids[:index]
            for diff_id in below:
                done = self._done[diff_id]
                while not done.wait(0.1 if wait else 0):
                    if not wait:
                        return None
                    if self._cancelled is not None and self._cancelled():
                        raise LayerfsError("cancelled")
                if diff_id in self._failed:
                    raise LayerfsError(f"cancelled: layer {diff_id} below failed")
            return [self._store.layer_dir(d) for d in below]
        return dirs
