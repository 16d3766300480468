"""``layerfs pull``: from a registry into the store, as ``docker pull`` does.

The steps, in order (docs/oci.rst has the rules each one follows):

1. Parse the reference (a bad one fails before any network use) and the platform.
2. Resolve the tag or digest with a manifest HEAD (:meth:`RegistryClient.resolve`).
3. Fetch the manifest or index by digest (from the store when it is already there); for an index
   choose the entry for the platform with containerd's rules (:mod:`layerfs._oci.platform`) and fetch
   that manifest.  Every manifest's digest and media type are checked.
4. Fetch the config (verified), check it lists one diff ID per layer, and that an explicitly asked-for
   platform matches it.
5. Hold every layer of the image (:meth:`Store.hold`), so that no other command's clean-up takes
   one it finds in the store or publishes before the image record exists.  Then, without the store
   lock, download the missing layers in parallel (``max_concurrent_downloads`` threads, 3 like
   docker), each thread feeding the streaming, resumable blob body straight into
   ``layers.add_layer``, which decompresses, unpacks under ``tmp/``, and verifies the blob digest
   and the diff ID while the bytes arrive, and renames the layer into place (taking the lock for
   the rename only) once verified (and, when it has directories whose attributes come from the
   layers below, once those are in: ``layers.Lowers``).  A layer already in the store is not
   fetched ("Already exists"); one that another pull is fetching is waited for, not fetched twice.
6. Take the store lock to store the manifest(s) and config and record the image with its tag and
   repo digest.  Other commands (tag, rm, mount, another pull) run meanwhile: only steps 5's
   renames and 6 wait for the lock, and they are short.
7. On any failure the other downloads are cancelled, and what this pull added is removed: no
   image record, reference, manifest or config is left.  Errors are one line,
   ``pull <ref>: <cause>``.

What a failed pull keeps, so that it costs only what is left next time (as docker keeps the
layers it completed): each layer it completed (marked with :meth:`Store.keep_layer` as soon as
it is published, so a killed pull keeps them too), and the bytes of each blob it was
downloading, appended to ``tmp/resume-blob-<hex>`` as they arrive (:meth:`Store.partial_blob`).
The next pull of that blob replays the kept bytes into the unpacker (which verifies the whole
blob's digest, as for a fresh download: Python's hashlib cannot save a SHA-256 state, so the
kept bytes are hashed again, locally) and asks the registry for the rest only (``Range:
bytes=N-``).  If the blob then turns out wrong, the kept bytes are dropped and the blob fetched
once more from the start.  Kept bytes are dropped when the blob is wrong, and expire a day
after they were last written (:data:`layerfs._store.store.RESUME_SECONDS`).  A pull that fails
on a full disk keeps nothing (no layer, no bytes): it gives back all the room it took.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .._errors import BadArchive, BadImage, DigestMismatch, ImageNotFound, LayerfsError
from .._oci import manifest as _manifest
from .._oci import platform as _platform
from .._oci.digest import short
from .._oci.manifest import INDEX_TYPES
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .._registry.client import BlobReader, RegistryClient
from .layers import LowerDirs, Lowers, add_layer
from .progress import (
    COMPLETE,
    DOWNLOADING,
    EXISTS,
    EXTRACTING,
    PULLING,
    VERIFYING,
    WAITING,
    WAITING_OTHER,
    Progress,
    QuietProgress,
)

if TYPE_CHECKING:
    from .._store.store import Image, LayerRecord, PartialBlob, Store

log = logging.getLogger(__name__)

#: docker's ``max-concurrent-downloads`` default.
MAX_CONCURRENT_DOWNLOADS = 3


@dataclasses.dataclass(frozen=True)
class LayerDescriptor:
    """A ``manifest.layers`` entry with its diff ID from the config."""

    digest: str
    size: int
    media_type: str
    diff_id: str


class _Pull:
    """One pull's state; see the module docstring for the steps."""

    def __init__(self, store: Store, ref: Reference, client: RegistryClient, progress: Progress,
                 wanted: _platform.Platform | None, max_concurrent_downloads: int) -> None:
        self.store = store
        self.ref = ref
        self.client = client
        self.progress = progress
        self.wanted = wanted
        self.workers = max(1, max_concurrent_downloads)
        self.cancelled = threading.Event()
        self.downloaded = 0
        #: bytes fetched from the registry for layers, and bytes replayed from kept partial blobs
        self.fetched = 0
        self.resumed = 0
        self._count_lock = threading.Lock()
        #: the layers this pull marked with Store.keep_layer (from the layer threads: set.add is atomic)
        self.kept: set[str] = set()

    def count(self, fetched: int = 0, resumed: int = 0) -> None:
        """Add to :attr:`fetched` and :attr:`resumed` (from the layer threads)."""
        with self._count_lock:
            self.fetched += fetched
            self.resumed += resumed

    def _manifest(self, digest: str, media_type: str | None) -> tuple[bytes, str]:
        """A manifest by digest, from the store if it has it, else from the registry."""
        if self.store.has_blob(digest):
            data = self.store.read_blob(digest)
            body_type = _manifest.json_object(data, f"manifest {digest}").get("mediaType")
            found = body_type if isinstance(body_type, str) and body_type else media_type
            if found:
                return data, found
        return self.client.fetch_manifest(self.ref, digest)

    def run(self) -> Image:
        ref = self.ref
        self.progress.header(f"{ref.digest or ref.tag}: Pulling from {ref.path}")  # docker: library/alpine
        top = self.client.resolve(ref)
        if ref.digest and top.digest != ref.digest:
            raise BadImage(f"the registry resolved {ref.digest} to {top.digest}")
        data, media_type = self._manifest(top.digest, top.media_type)
        blobs: list[tuple[bytes, str]] = [(data, top.digest)]
        index_digest: str | None = None
        manifest_digest = top.digest
        if media_type in INDEX_TYPES:
            index_digest = top.digest
            child = _manifest.choose_platform(data, top.digest, self.wanted)
            manifest_digest, child_type = child.digest, child.media_type
            data, media_type = self._manifest(manifest_digest, child_type)
            if media_type in INDEX_TYPES:
                raise BadImage(f"manifest {manifest_digest}: nested indexes are not supported")
            if child_type and media_type != child_type:
                raise BadImage(f"manifest {manifest_digest}: media type {media_type!r} differs from the "
                               f"index's {child_type!r}")
            blobs.append((data, manifest_digest))
        config_digest, config, layers = self._read_manifest(data, manifest_digest)
        blobs.append((config, config_digest))
        try:
            self.store.get(config_digest)
            existed = True
        except ImageNotFound:
            existed = False

        tags = [ref.with_digest(top.digest)]
        if ref.tag and not ref.digest:
            tags.insert(0, ref.with_tag(ref.tag))
        try:
            with self.store.hold(layer.diff_id for layer in layers):
                self._layers(layers)
                with self.store.writer() as writer:
                    for blob, digest in blobs:
                        writer.put_blob(blob, digest)
                    image = writer.add_image(config_digest, manifest_digest=manifest_digest,
                                             index_digest=index_digest, tags=tags, record_digests=False)
                self.store.forget_kept_layers(layer.diff_id for layer in layers)  # the image lists them now
        except BaseException as err:
            if _no_space(err):  # keeping what this pull fetched would keep the disk full: give it back
                # only what it marked itself: another pull's marks (an earlier failed one, or one
                # running now) are theirs; the kept first bytes of its blobs go unless in use
                with contextlib.suppress(Exception):
                    self.store.forget_kept_layers(self.kept)
                for layer in layers:
                    with contextlib.suppress(Exception):
                        self.store.drop_partial_blob(layer.digest)
            with contextlib.suppress(Exception):
                self.store.collect_garbage()  # what this pull added, but the layers kept to resume
            raise
        if self.resumed:
            log.debug("layers: %d bytes fetched, %d resumed from what an earlier pull kept", self.fetched,
                      self.resumed)
        self.progress.line(f"Digest: {top.digest}")
        if existed and not self.downloaded:
            self.progress.line(f"Status: Image is up to date for {ref.familiar()}")
        else:
            self.progress.line(f"Status: Downloaded newer image for {ref.familiar()}")
        return image

    def _read_manifest(self, data: bytes, digest: str) -> tuple[str, bytes, list[LayerDescriptor]]:
        """Check a manifest, fetch its config: (config digest, config bytes, layers with diff IDs)."""
        manifest = _manifest.parse_manifest(data, digest)
        config_digest = manifest.config.digest
        if self.store.has_blob(config_digest):
            config = self.store.read_blob(config_digest)
        else:
            config = self.client.fetch_blob(self.ref, config_digest, manifest.config.size)
        diff_ids = _manifest.diff_ids(config, config_digest, len(manifest.layers))
        if self.wanted is not None:
            config_obj = _manifest.json_object(config, f"config {config_digest}")
            found = _platform.Platform(str(config_obj.get("os", "")), str(config_obj.get("architecture", "")),
                                       str(config_obj.get("variant", "")))
            if config_obj.get("os") and _platform.matches(found, self.wanted) is None:
                raise LayerfsError(f"image was found but does not match the specified platform: "
                                   f"wanted {self.wanted}, actual: {found.normalized()}")
        layers = [LayerDescriptor(layer.digest, layer.size, layer.media_type, diff_id)
                  for layer, diff_id in zip(manifest.layers, diff_ids)]
        return config_digest, config, layers

    def _layers(self, layers: Iterable[LayerDescriptor]) -> None:
        """Download and unpack the missing layers in parallel; cancel the others on the first error."""
        todo: list[tuple[int, LayerDescriptor]] = []
        unique = list({layer.diff_id: layer for layer in reversed(list(layers))}.values())[::-1]
        lowers = Lowers(self.store, [layer.diff_id for layer in unique], cancelled=self.cancelled.is_set)
        for index, layer in enumerate(unique):
            if self.store.has_layer(layer.diff_id):
                self.store.drop_partial_blob(layer.digest)  # what a killed pull kept of it
                self.progress.layer(short(layer.digest), EXISTS)
                lowers.done(layer.diff_id)
            else:
                self.progress.layer(short(layer.digest), PULLING)
                todo.append((index, layer))
        for _, layer in todo[self.workers:]:
            self.progress.layer(short(layer.digest), WAITING)
        if not todo:
            return
        errors: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.workers,
                                                   thread_name_prefix="layerfs-pull") as pool:
            futures = [pool.submit(self._one_layer, layer, lowers, index) for index, layer in todo]
            try:
                for future in concurrent.futures.as_completed(futures):
                    err = future.exception()
                    if err is not None:
                        errors.append(err)
                        self.cancelled.set()
            except BaseException:
                self.cancelled.set()
                raise
        if errors:
            # The first real cause, not the "cancelled" errors it provoked in the other threads.
            real = [e for e in errors if "cancelled" not in str(e)] or errors
            raise real[0]

    def _one_layer(self, layer: LayerDescriptor, lowers: Lowers, index: int) -> None:
        ok = False
        try:
            self._add_layer(layer, lowers, index)
            ok = True
        finally:
            lowers.done(layer.diff_id, ok)

    def _add_layer(self, layer: LayerDescriptor, lowers: Lowers, index: int) -> None:
        """Add one layer, resuming from the bytes an earlier pull kept of its blob (see the module
        docstring); keep what this one downloads unless the blob is wrong or the disk full."""
        if self.cancelled.is_set():
            raise LayerfsError("cancelled")
        layer_id = short(layer.digest)
        with self.store.partial_blob(layer.digest) as partial:
            if partial is not None and partial.size > layer.size:
                partial.truncate()  # more than the blob: not a part of it
            kept = partial.size if partial is not None else 0
            try:
                try:
                    record = self._add(layer, layer_id, partial, lowers.below(index))
                except (DigestMismatch, BadArchive):
                    if partial is None or not kept:
                        raise
                    # The kept bytes may be what is wrong (a disk that lost them): once more, all fetched.
                    log.info("blob %s: wrong after resuming at %d; fetching it again from the start",
                             layer.digest, kept)
                    partial.truncate()
                    record = self._add(layer, layer_id, partial, lowers.below(index))
            except (DigestMismatch, BadArchive, OSError):
                if partial is not None:
                    partial.drop()  # wrong bytes, or no room for them: nothing to resume
                raise
            if partial is not None:
                partial.drop()  # complete: the layer is in the store
        if not record.existed:
            self.kept.add(layer.diff_id)  # first: a mark half-made is forgotten too
            self.store.keep_layer(layer.diff_id)  # until the image lists it, even if this pull dies
            self.downloaded += 1
        self.progress.layer(layer_id, EXISTS if record.existed else COMPLETE)

    def _add(self, layer: LayerDescriptor, layer_id: str, partial: PartialBlob | None,
             lowers: LowerDirs | None) -> LayerRecord:
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            if done >= layer.size:
                self.progress.layer(layer_id, VERIFYING)
                self.progress.layer(layer_id, EXTRACTING)
            else:
                self.progress.layer(layer_id, DOWNLOADING, done, layer.size)

        def open_blob() -> _ResumedBlob:
            self.progress.layer(layer_id, DOWNLOADING, partial.size if partial is not None else 0, layer.size)
            return _ResumedBlob(self, layer, partial, on_bytes)

        # A corrupt blob usually breaks the decompressor first; the unpacker then drains the
        # blob and names the digest mismatch, as docker does ("digest did not match").
        return add_layer(self.store, open_blob, diff_id=layer.diff_id, digest=layer.digest, size=layer.size,
                         media_type=layer.media_type, cancelled=self.cancelled.is_set, lowers=lowers,
                         on_wait=lambda: self.progress.layer(layer_id, WAITING_OTHER))


class _ResumedBlob:
    """A layer blob as the unpacker reads it: the bytes kept of it first, then the registry's from
    there on (``Range``), each of those also appended to the kept ones (if it can be: a full disk
    stops the keeping, not the pull)."""

    def __init__(self, pull: _Pull, layer: LayerDescriptor, partial: PartialBlob | None,
                 on_bytes: Callable[[int], None]) -> None:
        self._pull = pull
        self._layer = layer
        self._partial = partial
        self._kept = partial.size if partial is not None else 0
        self._pos = 0
        self._on_bytes = on_bytes
        self._remote: BlobReader | None = None

    def __enter__(self) -> _ResumedBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._remote is not None:
            self._remote.close()

    def read(self, n: int = -1, /) -> bytes:
        if self._pos < self._kept and self._partial is not None:
            if self._pull.cancelled.is_set():
                raise LayerfsError(f"blob {self._layer.digest}: cancelled")
            want = self._kept - self._pos if n is None or n < 0 else min(n, self._kept - self._pos)
            data = self._partial.read(self._pos, want)
            if data:
                self._pos += len(data)
                self._pull.count(resumed=len(data))
                self._on_bytes(len(data))
                return data
            self._kept = self._pos  # shorter than it was: fetch from here
        if self._remote is None:
            pull = self._pull
            self._remote = pull.client.open_blob(pull.ref, self._layer.digest, self._layer.size,
                                                 on_bytes=self._on_bytes, cancelled=pull.cancelled)
            self._remote.offset = self._kept  # the first request asks for the rest only
        data = self._remote.read(n)
        self._pull.count(fetched=len(data))
        partial = self._partial
        if data and partial is not None and not partial.dropped:
            try:
                partial.append(data)
            except OSError as err:
                log.info("blob %s: not kept for a resume: %s", self._layer.digest, err.strerror)
                partial.drop()
        return data


def _no_space(err: BaseException | None) -> bool:
    """Whether ``err`` (or what caused it) is a full disk (ENOSPC)."""
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def pull(store: Store, ref: Reference | str, *, platform: _platform.Platform | str | None = None,
         progress: Progress | None = None, insecure_registries: Iterable[str] = (),
         client: RegistryClient | None = None, max_concurrent_downloads: int = MAX_CONCURRENT_DOWNLOADS,
         stall_timeout: float | None = None) -> Image:
    """Pull an image from its registry into ``store``, like ``docker pull``.

    Args:
        store: where the image goes.
        ref: ``alpine``, ``host:port/repo:tag``, ``repo@sha256:…`` (normalised as docker does).
        platform: ``os/arch[/variant]`` to choose from a multi-platform index; default the host's.
            Given explicitly, a single-platform image must match it too.
        progress: where progress goes (:mod:`layerfs._transfer.progress`); default none.
        insecure_registries: hosts to reach over plain HTTP (localhost always is).
        client: a registry client to use (its ``statistics()`` then count this pull); default a new one.
        max_concurrent_downloads: layers downloaded at once.
        stall_timeout: seconds without (almost) any byte after which a transfer is stalled (see
            :mod:`layerfs._registry.client`); default ``$LAYERFS_STALL_TIMEOUT`` or 30.  Only for a
            client made here.
    Returns:
        The image, tagged with ``ref`` and with the repo digest of what was pulled.
    Raises:
        InvalidReference: ``ref`` does not parse (nothing was contacted).
        LayerfsError: any failure, as one line ``pull <ref>: <cause>``; no image is recorded (what
            was downloaded is kept for a resume: see the module docstring).
    """
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    wanted = _platform.parse(platform) if isinstance(platform, str) else platform
    own = client is None
    progress = progress or QuietProgress()
    try:
        if client is None:
            client = RegistryClient(insecure_registries=insecure_registries, stall_timeout=stall_timeout)
        return _Pull(store, parsed, client, progress, wanted, max_concurrent_downloads).run()
    except LayerfsError as err:
        raise err.with_context(f"pull {parsed.familiar()}") from err
    except OSError as err:
        cause = err.strerror or str(err)
        if err.errno == errno.ENOSPC:
            cause = "no space left on device"
        where = f": {err.filename}" if err.filename else ""
        raise LayerfsError(f"pull {parsed.familiar()}: {cause}{where}") from err
    finally:
        progress.close()
        if own and client is not None:
            client.close()
