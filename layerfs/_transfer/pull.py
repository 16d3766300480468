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
   the rename only) once verified.  A layer already in the store is not fetched ("Already
   exists"); one that another pull is fetching is waited for, not fetched twice.
6. Take the store lock to store the manifest(s) and config and record the image with its tag and
   repo digest.  Other commands (tag, rm, mount, another pull) run meanwhile: only steps 5's
   renames and 6 wait for the lock, and they are short.
7. On any failure the other downloads are cancelled, and what this pull added is removed (the
   layers it published, once no other command holds them): the store is as it was.  Errors are
   one line, ``pull <ref>: <cause>``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._errors import BadImage, ImageNotFound, LayerfsError
from .._oci import manifest as _manifest
from .._oci import platform as _platform
from .._oci.digest import short
from .._oci.manifest import INDEX_TYPES
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .._registry.client import BlobReader, RegistryClient
from .layers import add_layer
from .progress import (
    COMPLETE,
    DOWNLOADING,
    EXISTS,
    EXTRACTING,
    PULLING,
    VERIFYING,
    WAITING,
    Progress,
    QuietProgress,
)

if TYPE_CHECKING:
    from .._store.store import Image, Store

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
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.collect_garbage()  # the layers this pull published, unless another holds them
            raise
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
        todo: list[LayerDescriptor] = []
        seen: set[str] = set()
        for layer in layers:
            if layer.diff_id in seen:
                continue
            seen.add(layer.diff_id)
            if self.store.has_layer(layer.diff_id):
                self.progress.layer(short(layer.digest), EXISTS)
            else:
                self.progress.layer(short(layer.digest), PULLING)
                todo.append(layer)
        for layer in todo[self.workers:]:
            self.progress.layer(short(layer.digest), WAITING)
        if not todo:
            return
        errors: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.workers,
                                                   thread_name_prefix="layerfs-pull") as pool:
            futures = [pool.submit(self._one_layer, layer) for layer in todo]
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

    def _one_layer(self, layer: LayerDescriptor) -> None:
        if self.cancelled.is_set():
            raise LayerfsError("cancelled")
        layer_id = short(layer.digest)
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            if done >= layer.size:
                self.progress.layer(layer_id, VERIFYING)
                self.progress.layer(layer_id, EXTRACTING)
            else:
                self.progress.layer(layer_id, DOWNLOADING, done, layer.size)

        def open_blob() -> BlobReader:
            self.progress.layer(layer_id, DOWNLOADING, 0, layer.size)
            return self.client.open_blob(self.ref, layer.digest, layer.size, on_bytes=on_bytes,
                                         cancelled=self.cancelled)

        # A corrupt blob usually breaks the decompressor first; the unpacker then drains the
        # blob and names the digest mismatch, as docker does ("digest did not match").
        record = add_layer(self.store, open_blob, diff_id=layer.diff_id, digest=layer.digest, size=layer.size,
                           media_type=layer.media_type, cancelled=self.cancelled.is_set)
        if not record.existed:
            self.downloaded += 1
        self.progress.layer(layer_id, EXISTS if record.existed else COMPLETE)


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
        LayerfsError: any failure, as one line ``pull <ref>: <cause>``; the store is unchanged.
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
