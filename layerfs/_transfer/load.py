"""``layerfs load``: images from an OCI image layout or an archive on disk into the store.

Sources, as skopeo names them:

- ``oci:DIR[:TAG]``: an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``);
- ``oci-archive:FILE[:TAG]``: the same layout in a tar file;
- ``docker-archive:FILE``: what ``docker save`` writes (``manifest.json`` with RepoTags);
- a bare path: a directory holding ``oci-layout`` is ``oci:``; a tar file holding ``manifest.json``
  is ``docker-archive:``, one holding ``oci-layout`` is ``oci-archive:``;
- a stream (``docker load`` reads standard input): spooled to an unlinked file first, then
  detected like a bare path.

A transport that does not fit what the path holds is refused, naming what was found (an
``oci-archive:`` prefix on a docker archive never loads it silently).  Names come from the
source only: ``RepoTags``, ``io.containerd.image.name``, a full
``org.opencontainers.image.ref.name``; a bare tag names the image after the layout *directory*
(``oci:./busybox:1.36`` -> ``busybox:1.36``, as podman names ``oci:`` loads), never after an
archive's file name: an archive entry with only a bare tag loads untagged, as ``docker load``
leaves it.

Every digest is verified on the way (manifest against the index, config and layers against the
manifest, each layer's diff ID against the config), and nothing is written to the store unless the
whole image is good.
"""

from __future__ import annotations

import bz2
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from .._errors import BadImage, DigestMismatch, LayerfsError
from .._layer.compress import Reader, open_decompressed
from .._oci import digest as _digest
from .._oci import manifest as _manifest
from .._oci import platform as _platform
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .._store.store import Image, Store
from .layers import Lowers, add_layer
from .progress import EXISTS, LOADED, LOADING, WAITING_OTHER, Progress, QuietProgress

#: How many layers are unpacked at once (decompression releases the GIL; 2 cores are common).
PARALLEL_LAYERS = 2

#: What each kind of source is, in the words of the errors.
_KINDS = {"oci": "an OCI image layout directory", "oci-archive": "an OCI archive",
          "docker-archive": "a docker archive"}
#: What makes an archive one kind or the other.
_MARKS = {"oci-archive": " (it holds oci-layout)", "docker-archive": " (it holds manifest.json)"}


@dataclasses.dataclass(frozen=True)
class Loaded:
    """An image loaded, and the names the source gave it (``--tag`` ones included), familiar form.

    ``docker load`` prints ``Loaded image: NAME`` for each name, and ``Loaded image ID: ID`` for an
    image the source names not at all.
    """

    image: Image
    names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed SOURCE argument."""

    transport: str  # "oci", "oci-archive", "docker-archive", or "archive" (a bare file: either)
    path: Path
    tag: str | None


def parse_source(text: str) -> Source:
    """Parse ``transport:path[:tag]`` or detect the transport of a bare path.

    Raises:
        BadImage: an unknown transport, or a path that is no layout or archive.
    """
    transport, sep, rest = text.partition(":")
    if sep and transport in ("oci", "oci-archive", "docker-archive"):
        path, tag = rest, None
        if not os.path.exists(path) and ":" in rest:
            head, _, tail = rest.rpartition(":")
            if "/" not in tail:
                path, tag = head, tail
        if transport == "docker-archive" and tag is not None:
            raise BadImage(f"{text}: docker-archive takes no :TAG (its manifest.json names the images)")
        return Source(transport, Path(path), tag or None)
    if sep and re.fullmatch(r"[a-z-]+", transport) and not os.path.exists(text):
        raise BadImage(f"{text}: unknown transport {transport!r} (use oci:, oci-archive: or docker-archive:)")
    bare = Path(text)
    if bare.is_dir():
        if (bare / "oci-layout").is_file():
            return Source("oci", bare, None)
        raise BadImage(f"{text}: a directory without oci-layout is not an OCI image layout")
    if bare.is_file():
        return Source("archive", bare, None)  # which kind: _Files.kind() tells, once it is open
    raise BadImage(f"{text}: no such file or directory")


def _first_line(err: BaseException) -> str:
    """tarfile's errors for ``r:*`` span several lines; messages here are one line."""
    return (str(err).splitlines() or [type(err).__name__])[0].rstrip(":")


def _clean(name: str) -> str:
    return os.path.normpath(name.lstrip("/")).removeprefix("./")


class _Files:
    """Read-only access to the files of a layout directory or an archive, by relative path.

    Archive members are read in place with ``pread`` (no shared file offset), so several layer
    threads may read at once.  A compressed archive (``docker save | gzip``, as ``docker load``
    takes) is first inflated once into an unlinked temporary file in ``tmpdir``: a compressed
    stream cannot be read at several offsets at once, nor seeked in without inflating it again.
    """

    def __init__(self, source: Source, tmpdir: Path, stream: BinaryIO | None = None) -> None:
        self.source = source
        self._members: dict[str, tarfile.TarInfo] = {}
        self._fd = -1
        if stream is None and (source.transport != "oci" or source.path.is_file()):
            try:
                stream = open(source.path, "rb")
            except OSError as err:
                raise BadImage(f"{source.path}: {err.strerror}") from None
        elif stream is None:
            return  # a layout directory
        try:
            with stream as raw:
                magic = raw.read(6)
                if _is_compressed(magic) or not raw.seekable():
                    tmpdir.mkdir(parents=True, exist_ok=True)
                    plain = tempfile.TemporaryFile(dir=tmpdir)  # unlinked: nothing for clean-up to find
                    if _is_compressed(magic):
                        _inflate(magic, raw, plain)
                    else:
                        plain.write(magic)
                        shutil.copyfileobj(raw, plain, 1 << 20)
                    self._fd = os.dup(plain.fileno())
                    plain.close()
                else:
                    self._fd = os.dup(raw.fileno())
            os.lseek(self._fd, 0, os.SEEK_SET)
            with tarfile.open(fileobj=os.fdopen(os.dup(self._fd), "rb"), mode="r:") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        self._members[_clean(m.name)] = m
        except (tarfile.TarError, OSError, EOFError) as err:
            self.close()
            raise BadImage(f"{source.path}: not a readable tar archive: {_first_line(err)}") from None

    def kinds(self) -> list[str]:
        """What the source can be read as: ``oci`` (a directory), else ``docker-archive`` (it
        holds manifest.json) and / or ``oci-archive`` (oci-layout): ``docker save`` writes both."""
        if self._fd < 0:
            return ["oci"]
        return [kind for kind, member in (("docker-archive", "manifest.json"), ("oci-archive", "oci-layout"))
                if member in self._members]

    def kind(self) -> str:
        """How to read the source: the transport it was given with, or the detected one.

        Raises:
            BadImage: the source is not what its transport says (naming what it is), or neither
                kind of archive.
        """
        kinds = self.kinds()
        if not kinds:
            raise BadImage(f"{self.source.path}: neither a docker archive (manifest.json) nor an OCI archive "
                           f"(oci-layout)")
        wanted = self.source.transport
        if wanted == "archive":
            return kinds[0]
        if wanted not in kinds:
            raise BadImage(f"{self.source.path}: is {_KINDS[kinds[0]]}{_MARKS.get(kinds[0], '')}, not "
                           f"{_KINDS[wanted]}: load it as {kinds[0]}:{self.source.path}")
        return wanted

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, name: str, limit: int = 4 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BadImage(f"{name}: larger than {limit} bytes")
        return data

    def size(self, name: str) -> int | None:
        """The size of ``name`` in bytes, or None if it cannot be told."""
        if self._fd < 0:
            try:
                return os.stat(self.source.path / name).st_size
            except OSError:
                return None
        member = self._members.get(_clean(name))
        return member.size if member is not None else None

    @property
    def is_directory(self) -> bool:
        """Whether the source is a layout directory (not an archive)."""
        return self._fd < 0

    def open(self, name: str) -> BinaryIO:
        """A file object reading ``name``; archive members are read in place, never extracted."""
        if ".." in Path(name).parts or name.startswith("/"):
            raise BadImage(f"{self.source.path}: refusing path {name!r} outside the layout")
        if self._fd < 0:
            try:
                return open(self.source.path / name, "rb")
            except FileNotFoundError:
                raise BadImage(f"{self.source.path}: missing {name}") from None
        member = self._members.get(_clean(name))
        if member is None:
            raise BadImage(f"{self.source.path}: missing {name}")
        return io.BufferedReader(_Slice(self._fd, member.offset_data, member.size), 1 << 20)


def _inflate(magic: bytes, raw: BinaryIO, out: BinaryIO) -> None:
    """Copy the decompressed bytes of ``magic`` + ``raw`` (gzip, zstd, bzip2 or xz, as docker load
    takes); ``magic`` is what was already read of ``raw``, which may be a pipe."""
    source = io.BufferedReader(_Prefixed(magic, raw), 1 << 20)
    reader: bz2.BZ2File | lzma.LZMAFile | Reader
    if magic[:3] == b"BZh":
        reader = bz2.open(source)
    elif magic == b"\xfd7zXZ\x00":
        reader = lzma.open(source)
    else:
        reader = open_decompressed(source)[0]
    try:
        while chunk := reader.read(1 << 20):
            out.write(chunk)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as err:
        raise BadImage(f"cannot decompress: {err}") from None
    finally:
        reader.close()


def _is_compressed(magic: bytes) -> bool:
    return magic[:2] == b"\x1f\x8b" or magic[:4] == b"\x28\xb5\x2f\xfd" or magic[:3] in (b"BZh", b"\xfd7z")


class _Prefixed(io.RawIOBase):
    """The bytes ``head`` then the rest of ``raw``: a stream's magic, read, put back in front."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._raw.read(len(buf))
        buf[:len(data)] = data
        return len(data)


class _Slice(io.RawIOBase):
    """``size`` bytes of the file ``fd`` from ``offset``, read with pread (the fd is not owned)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._pos = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self._end - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [memoryview(buf)[:want]], self._pos)
        if not n:
            raise BadImage("archive member is truncated")
        self._pos += n
        return n


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One image to load: its manifest (if any), config and layer descriptors."""

    config_path: str
    config_digest: str | None
    layers: tuple[tuple[str, str | None, int | None, str | None], ...]  # (path, digest, size, media type)
    manifest_digest: str | None
    index_digest: str | None
    names: tuple[Reference, ...]
    #: the exact bytes of the manifest (and index) it came from, stored as blobs like a pull does
    documents: tuple[tuple[bytes, str], ...] = ()


def load(store: Store, source: str, *, tags: Sequence[str] = (), progress: Progress | None = None,
         platform: _platform.Platform | str | None = None) -> list[Image]:
    """Load every image of ``source`` (or the one its ``:TAG`` names) into ``store``.

    The same as :func:`load_images`, returning the images only.
    """
    return [loaded.image for loaded in load_images(store, source, tags=tags, progress=progress, platform=platform)]


def load_images(store: Store, source: str | BinaryIO, *, tags: Sequence[str] = (), progress: Progress | None = None,
                platform: _platform.Platform | str | None = None) -> list[Loaded]:
    """Load every image of ``source`` (or the one its ``:TAG`` names) into ``store``.

    Args:
        source: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE``, a bare path,
            or a stream holding either kind of archive (``docker load`` on standard input), read
            to its end and closed.
        tags: extra references (``repo:tag``) to give the loaded image.
        progress: where each layer's progress goes (:mod:`layerfs._transfer.progress`).
        platform: ``os/arch[/variant]`` to take from a multi-platform image (default: the
            host's); given, the image loaded must be of that platform.
    Returns:
        The images loaded, each with the names the source (and ``tags``) gave it.
    Raises:
        BadImage, DigestMismatch, BadArchive, InvalidReference: the store is left as it was.
        LayerfsError: ``load SOURCE: <step>: <cause>`` for a system call that failed (no space).
    """
    extra = [parse_reference(t) for t in tags]
    for ref in extra:
        if ref.digest:
            raise BadImage(f"--tag {ref.familiar()}: a tag cannot carry a digest")
    wanted = _platform.parse(platform) if isinstance(platform, str) else platform
    if isinstance(source, str):
        src, stream, label = parse_source(source), None, source
    else:
        src, stream, label = Source("archive", Path("stdin"), None), source, "stdin"
    shown = progress or QuietProgress()
    try:
        files = _Files(src, store.tmp_dir, stream)
    except LayerfsError as err:
        raise err.with_context(f"load {label}") from err
    try:
        candidates = (_docker_archive_candidates(files) if files.kind() == "docker-archive"
                      else _oci_candidates(files, src, wanted))
        if extra and len(candidates) != 1:
            raise BadImage(f"{label}: --tag needs exactly one image, the source holds {len(candidates)}")
        return _load_all(store, files, candidates, extra, shown, wanted)
    except LayerfsError as err:
        raise err.with_context(f"load {label}") from err
    except OSError as err:  # a full disk, a store that cannot be written: one line naming the load
        raise LayerfsError(f"load {label}: {err.strerror or err}") from err
    finally:
        files.close()
        shown.close()


def _check_platform(config: bytes, digest: str, wanted: _platform.Platform) -> None:
    """Refuse an image whose config names another platform than ``--platform`` (docker's words)."""
    obj = _manifest.json_object(config, f"config {digest}")
    found = _platform.Platform(str(obj.get("os", "")), str(obj.get("architecture", "")), str(obj.get("variant", "")))
    if obj.get("os") and _platform.matches(found, wanted) is None:
        raise LayerfsError(f"image {digest} was found but does not match the specified platform: "
                           f"wanted {wanted}, actual: {found.normalized()}")


def _load_all(store: Store, files: _Files, candidates: Sequence[_Candidate], extra: Sequence[Reference],
              progress: Progress, wanted: _platform.Platform | None) -> list[Loaded]:
    """Verify the configs, add the layers under a hold without the store lock, then record the
    images in one writer; on failure remove what was added (layers no other command holds)."""
    configs = []
    for cand in candidates:
        data = files.read(cand.config_path)
        digest = _digest.of_bytes(data, (cand.config_digest or _digest.ALGORITHM).partition(":")[0])
        if cand.config_digest is not None and digest != cand.config_digest:
            raise DigestMismatch(f"config {cand.config_path}", cand.config_digest, digest)
        if wanted is not None:
            _check_platform(data, digest, wanted)
        configs.append((data, digest, _manifest.diff_ids(data, digest, len(cand.layers))))
    try:
        with store.hold(d for _, _, diff_ids in configs for d in diff_ids):
            for cand, (_, _, diff_ids) in zip(candidates, configs):
                _add_layers(store, files, cand, diff_ids, progress)
            with store.writer() as w:
                loaded = []
                for cand, (data, digest, _) in zip(candidates, configs):
                    w.put_blob(data, digest)
                    for document, document_digest in cand.documents:
                        w.put_blob(document, document_digest)
                    names = [*cand.names, *extra]
                    image = w.add_image(digest, manifest_digest=cand.manifest_digest,
                                        index_digest=cand.index_digest, tags=names, record_digests=False)
                    loaded.append(Loaded(image, tuple(dict.fromkeys(n.familiar() for n in names))))
                return loaded
    except BaseException:
        with contextlib.suppress(Exception):
            store.collect_garbage()
        raise


class _Counted(io.RawIOBase):
    """A layer blob's reader that reports the bytes read so far (for the progress bar)."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buf)  # type: ignore[attr-defined]
        if n:
            self._on_bytes(n)
        return int(n or 0)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _add_layers(store: Store, files: _Files, cand: _Candidate, diff_ids: Sequence[str], progress: Progress) -> None:
    first = {str(d): i for i, d in reversed(list(enumerate(diff_ids)))}   # a repeated layer: its first place
    unique = sorted(first, key=first.__getitem__)
    cancelled = threading.Event()  # a layer failed: the others stop waiting (for those below, or another command)
    lowers = Lowers(store, unique, cancelled=cancelled.is_set)

    def one(index: int, diff_id: str) -> None:
        ok = False
        try:
            path, digest, size, media_type = cand.layers[first[diff_id]]
            layer_id = _digest.short(diff_id)
            if store.has_layer(diff_id):
                progress.layer(layer_id, EXISTS)
            else:
                total = size if size is not None else files.size(path)
                done = 0

                def on_bytes(n: int) -> None:
                    nonlocal done
                    done += n
                    progress.layer(layer_id, LOADING, done, total)

                def open_blob() -> BinaryIO:
                    progress.layer(layer_id, LOADING, 0, total)
                    return io.BufferedReader(_Counted(files.open(path), on_bytes), 1 << 20)

                rec = add_layer(store, open_blob, diff_id=diff_id, digest=digest, size=size, media_type=media_type,
                                lowers=lowers.below(index), cancelled=cancelled.is_set,
                                on_wait=lambda: progress.layer(layer_id, WAITING_OTHER))
                progress.layer(layer_id, EXISTS if rec.existed else LOADED)
            ok = True
        except BaseException:
            cancelled.set()
            raise
        finally:
            lowers.done(diff_id, ok)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL_LAYERS) as pool:
        for fut in [pool.submit(one, index, diff_id) for index, diff_id in enumerate(unique)]:
            fut.result()


# -- OCI layouts -------------------------------------------------------------------------------


def _json(files: _Files, name: str) -> dict[str, object]:
    try:
        value = json.loads(files.read(name))
    except ValueError as err:
        raise BadImage(f"{name}: not JSON: {err}") from None
    if not isinstance(value, dict):
        raise BadImage(f"{name}: not a JSON object")
    return value


def _blob_path(digest: str) -> str:
    algo, hexpart = _digest.split(digest)
    return f"blobs/{algo}/{hexpart}"


def _read_verified(files: _Files, digest: str, size: int) -> bytes:
    data = files.read(_blob_path(digest))
    if len(data) != size or _digest.of_bytes(data, digest.partition(":")[0]) != digest:
        raise DigestMismatch(f"blob {_blob_path(digest)}", digest, _digest.of_bytes(data))
    return data


def _oci_candidates(files: _Files, src: Source, wanted: _platform.Platform | None) -> list[_Candidate]:
    layout = _json(files, "oci-layout")
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise BadImage(f"{src.path}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}")
    index = _json(files, "index.json")
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise BadImage(f"{src.path}: index.json lists no manifests")
    chosen = []
    available = []
    for entry in entries:
        annotations = entry.get("annotations", {}) if isinstance(entry, dict) else {}
        if not isinstance(annotations, dict):
            annotations = {}
        ref_name = str(annotations.get("org.opencontainers.image.ref.name", ""))
        available.append(ref_name or "(untagged)")
        if src.tag is None or ref_name == src.tag or ref_name.endswith(f":{src.tag}") and _is_full(ref_name):
            chosen.append((entry, annotations))
    if not chosen:
        raise BadImage(f"{src.path}: no image tagged {src.tag!r} (the layout has: {', '.join(available)})")
    out = []
    for entry, annotations in chosen:
        top = _manifest.descriptor(entry, "index.json entry")
        data = _read_verified(files, top.digest, top.size)
        media_type = _manifest.media_type(_manifest.json_object(data, f"manifest {top.digest}"), top.media_type,
                                          f"manifest {top.digest}")
        index_digest, digest = None, top.digest
        documents = [(data, top.digest)]
        if media_type in _manifest.INDEX_TYPES:
            child = _manifest.choose_platform(data, top.digest, wanted)
            index_digest, digest = top.digest, child.digest
            data = _read_verified(files, child.digest, child.size)
            documents.append((data, digest))
            media_type = _manifest.media_type(_manifest.json_object(data, f"manifest {digest}"), child.media_type,
                                              f"manifest {digest}")
            if media_type in _manifest.INDEX_TYPES:
                raise BadImage(f"manifest {digest}: nested indexes are not supported")
        manifest = _manifest.parse_manifest(data, digest)
        out.append(_Candidate(_blob_path(manifest.config.digest), manifest.config.digest,
                              tuple((_blob_path(d.digest), d.digest, d.size, d.media_type) for d in manifest.layers),
                              digest, index_digest, _names(annotations, src, files.is_directory),
                              tuple(documents)))
    return out


def _is_full(name: str) -> bool:
    return "/" in name or ":" in name


def _names(annotations: dict[str, object], src: Source, directory: bool) -> tuple[Reference, ...]:
    """References for a layout entry: ``io.containerd.image.name`` or a full
    ``org.opencontainers.image.ref.name``; a bare tag goes with the layout directory's name as the
    repository (``oci:./busybox:1`` -> ``busybox:1``), as podman names an ``oci:`` load.  An
    archive's file name names nothing (``tiny.oci.tar.gz`` is no repository): its entry with a
    bare tag loads untagged, as ``docker load`` leaves it."""
    full = annotations.get("io.containerd.image.name")
    ref_name = annotations.get("org.opencontainers.image.ref.name")
    for value in (full, ref_name):
        if isinstance(value, str) and value and _is_full(value):
            try:
                return (parse_reference(value),)
            except LayerfsError:
                pass
    if directory and isinstance(ref_name, str) and ref_name:
        repo = re.sub(r"[^a-z0-9._-]+", "-", src.path.resolve().name.lower()).strip("._-") or "image"
        try:
            return (parse_reference(f"{repo}:{ref_name}"),)
        except LayerfsError:
            return ()
    return ()


# -- docker archives ---------------------------------------------------------------------------


def _docker_archive_candidates(files: _Files) -> list[_Candidate]:
    try:
        manifest = json.loads(files.read("manifest.json"))
    except ValueError as err:
        raise BadImage(f"manifest.json: not JSON: {err}") from None
    if not isinstance(manifest, list) or not manifest:
        raise BadImage("manifest.json: want a non-empty list of images")
    out = []
    for i, item in enumerate(manifest):
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str) or not isinstance(
                item.get("Layers"), list):
            raise BadImage(f"manifest.json entry {i}: want Config and Layers")
        names = tuple(parse_reference(t) for t in item.get("RepoTags") or [])
        layers = tuple((str(p), None, None, None) for p in item["Layers"])
        config_path = item["Config"]
        expected = None
        m = re.fullmatch(r"(?:blobs/sha256/)?([a-f0-9]{64})(?:\.json)?", config_path)
        if m:
            expected = f"sha256:{m.group(1)}"
        out.append(_Candidate(config_path, expected, layers, None, None, names))
    return out
