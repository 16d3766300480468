"""``layerfs push``: an image of the store to a registry, as ``docker push`` does.

The steps (distribution-spec "Pushing blobs", "Pushing Manifests"):

1. The manifest: the one the image came with (the exact bytes the store kept), when every layer
   it lists can be had: then a pulled image pushes with its original digests.  Otherwise (a layer
   whose kept blob differs, an image loaded from a docker archive) a new OCI manifest of the kept
   blobs.
2. Every layer blob, in parallel (three at a time, as docker): a ``HEAD`` first, so a blob the
   repository has is not sent again ("Layer already exists"); else a cross-repository mount from
   a repository of the same registry the image came from ("Mounted from ..."); else an upload of
   the blob the store kept (``layers/<diff ID>/blob``), monolithic, or in 64 MiB chunks beyond
   that size.  A layer whose blob was not kept and that the registry lacks cannot be pushed: the
   error says so.
3. The config blob, the same way; the manifest last, by tag (or by its digest when the reference
   has none).

Credentials and TLS are pull's (``_registry``).  Progress lines follow docker's.
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterable
from typing import BinaryIO

from .._errors import InvalidReference, LayerfsError
from .._oci.digest import short
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .._registry.client import RegistryClient
from .._store.store import Store
from .outgoing import OCI_CONFIG, Blob, plan, sources
from .progress import Progress, QuietProgress

#: Blobs beyond this size go up in chunks of this size (PATCH), smaller ones in one PUT.
CHUNK = 64 << 20
MAX_CONCURRENT_UPLOADS = 3


def push(store: Store, name: str, target: str | None = None, *, progress: Progress | None = None,
         insecure_registries: Iterable[str] = (), client: RegistryClient | None = None,
         max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS) -> str:
    """Push the image ``name`` as ``target`` (default: ``name``, which must then be a reference).

    Returns:
        The digest of the manifest pushed.
    Raises:
        InvalidReference: no reference to push to.
        ImageNotFound: no such image.
        LayerfsError: ``push <ref>: <cause>``: a registry refusal, a layer that cannot be had.
    """
    image = store.get(name)
    try:
        ref = parse_reference(target or name)
    except InvalidReference:
        raise InvalidReference(f"push {name}: give the reference to push to: layerfs push IMAGE "
                               f"REGISTRY/REPOSITORY[:TAG]") from None
    if target is None and name.startswith("sha256:"):
        raise InvalidReference(f"push {name}: give the reference to push to: layerfs push IMAGE "
                               f"REGISTRY/REPOSITORY[:TAG]")
    if ref.digest:
        raise InvalidReference(f"push {ref.familiar()}: push to a tag, not a digest")
    say = progress or QuietProgress()
    own = client is None
    if client is None:
        client = RegistryClient(insecure_registries=insecure_registries)
    try:
        say.header(f"The push refers to repository [{ref.familiar_repository}]")
        data, media_type, layers = plan(store, image)
        config = store.read_blob(image.id)
        mount_from = sources(image, ref)
        blobs = [*layers, Blob(image.id, len(config), OCI_CONFIG, None, config, "config")]
        workers = max(1, max_concurrent_uploads)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layerfs-push") as pool:
            futures = [pool.submit(_push_blob, client, ref, b, mount_from, say) for b in blobs]
            for f in futures:
                f.result()
        digest = client.put_manifest(ref, data, media_type)
        say.line(f"{ref.tag or 'latest'}: digest: {digest} size: {len(data)}")
        return digest
    except LayerfsError as err:
        raise err.with_context(f"push {ref.familiar()}") from err
    except OSError as err:
        raise LayerfsError(f"push {ref.familiar()}: {err.strerror or err}") from err
    finally:
        say.close()
        if own:
            client.close()


def _push_blob(client: RegistryClient, ref: Reference, blob: Blob, mount_from: list[str], say: Progress) -> None:
    tag = short(blob.digest)
    if client.blob_exists(ref, blob.digest):
        if blob.what == "layer":
            say.layer(tag, "Layer already exists")
        return
    for source in mount_from:
        if client.mount_blob(ref, blob.digest, source):
            say.layer(tag, f"Mounted from {source}")
            return
    if blob.data is not None:
        data = blob.data

        def opener() -> BinaryIO:
            return io.BytesIO(data)
    elif blob.path is not None:
        path = blob.path

        def opener() -> BinaryIO:
            return open(path, "rb")
    else:
        raise LayerfsError(f"layer blob {blob.digest}: the store did not keep it and the registry does not "
                           f"have it: pull the image again to push it")
    if blob.what == "layer":
        say.layer(tag, "Preparing")
    client.upload_blob(ref, blob.digest, blob.size, opener, chunk_size=CHUNK if blob.size > CHUNK else 0)
    if blob.what == "layer":
        say.layer(tag, "Pushed")
