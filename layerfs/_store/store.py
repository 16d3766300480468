"""The content-addressed store: blobs, unpacked layers, images, references and mounts.

Layout of a store root (``--root``)::

    lock                     flock(2): held exclusively by a command while it changes what others see
    tmp/                     temporary names, each leased by its owner (see _store.lease):
        layer-<hex>/           a layer being unpacked (one name per diff ID: made once)
        hold-*                 a command's hold on the layers of the image it is building
        trash-*/               a tree being removed; any other name: a file being written
        resume-blob-<hex>      the first bytes of a layer blob a pull downloaded (resumable)
        resume-layer-<hex>     a layer a pull completed, kept until an image uses it
    blobs/sha256/<hex>       exact bytes of manifests, indexes and configs
    layers/<hex>/            one per diff ID, shared by every image that uses it:
        diff/                  the unpacked tree, in overlay form (see _layer)
        layer.json             diff_id, size, entries, compressed digests seen
    chains/<hex>.json        one per ChainID: its diff_id and parent ChainID
    images/<hex>.json        one per image ID (= config digest): manifest and index digests
    repositories.json        {"Repositories": {repo: {"repo:tag" | "repo@digest": image ID}}}
    mounts/<key>.json        a mount that uses an image (image ID, mount point, pid, since, container);
                             one whose process died stays while its dead mount does (dead_mounts)
    containers/<id>/         a container: its record, upper and work dirs (see _store.containers)
    state/<name>/            derived data kept beside the layers (e.g. the merged index)
    reserve                  space kept so that ``rm`` can write repositories.json on a full disk

Rules that keep it consistent after a crash at any point, with many commands at once:

- every file is written under ``tmp/`` and renamed into place; every layer is unpacked under
  ``tmp/`` and its directory renamed into place once its digests are verified;
- an image record is written only after its config and all its layers are in place, and removed
  before any of them; references are rewritten atomically;
- readers take no lock: they see either the old or the new file.  Writers hold ``lock`` only
  while they change records (a pull downloads and unpacks without it, and takes it to rename a
  layer into place and to record the image); on entry they remove leftovers of crashed commands
  (what no live owner leases in ``tmp/``, and layers, chains and blobs no image uses nor a
  live hold keeps), and a writer that fails removes what it added;
- the exception, meant to be resumed: what a pull that failed, was interrupted or was killed
  had downloaded (``resume-*`` in ``tmp/``: a blob's first bytes, and the layers it completed)
  is kept :data:`RESUME_SECONDS` after it was last written, then removed by the next writer; a
  pull that needs them takes them up (a Range request from where the blob stopped), and they go
  once an image uses the layer.

Reference counts are derived, never stored: a layer is in use while an image record lists its
diff ID or a command holds it, and an image is in use while a live mount record names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from .. import _proc
from .._errors import BadImage, Conflict, DigestMismatch, ImageNotFound, InvalidReference, LayerfsError
from .._oci import digest as _digest
from .._oci import manifest as _manifest
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from . import containers as _containers
from . import lease as _lease
from .files import json_bytes as _json_bytes
from .files import now as _now
from .files import remove_now as _remove_now

log = logging.getLogger(__name__)

_JsonDict = dict[str, object]

#: The size of ``reserve``, the space kept for removals on a full disk (a repositories.json of some
#: 7,000 references, written to a temporary name before the old one goes).
RESERVE_BYTES = 1 << 20

#: How long what a failed pull downloaded is kept for the next pull to resume (since it was last
#: written): a day, so that a pull retried after a break costs only what is left.
RESUME_SECONDS = 24 * 3600

#: Names in ``tmp/`` of what is kept for a resume: a blob's first bytes, a completed layer.
RESUME_BLOB = "resume-blob-"
RESUME_LAYER = "resume-layer-"

#: Only small JSON documents are kept as blobs (docs/oci.rst "Size limits": manifests and configs
#: are capped at 4 MiB).
MAX_BLOB_SIZE = 4 << 20


@dataclasses.dataclass(frozen=True)
class Image:
    """An image in the store, as ``layerfs images`` and ``inspect`` show it."""

    id: str
    config: Mapping[str, object]
    diff_ids: tuple[str, ...]
    chain_ids: tuple[str, ...]
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: str
    size: int
    manifest_digest: str | None
    index_digest: str | None
    added: str

    @property
    def short_id(self) -> str:
        """The 12 hex digits docker shows in IMAGE ID."""
        return _digest.short(self.id)

    @property
    def top_chain_id(self) -> str | None:
        return self.chain_ids[-1] if self.chain_ids else None


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """A layer in the store.  ``existed`` is true when stage_layer found it already there."""

    diff_id: str
    path: Path
    size: int
    entries: int
    existed: bool = False


@dataclasses.dataclass
class LayerStage:
    """A layer being made under ``tmp/`` (see :meth:`Store.stage_layer`): fill ``diff``, then publish."""

    diff_id: str
    path: Path
    lease: _lease.Lease
    published: bool = False

    @property
    def diff(self) -> Path:
        """The empty directory to fill with the layer's tree, in overlay form."""
        return self.path / "diff"


class PartialBlob:
    """The kept first bytes of a layer blob (``tmp/resume-blob-<hex>``), leased to one pull.

    Made by :meth:`Store.partial_blob`.  ``size`` bytes are kept; :meth:`append` adds the next
    ones as they arrive; :meth:`drop` gives up on them (the blob was wrong, or is complete).
    """

    def __init__(self, path: Path, lease: _lease.Lease, fd: int) -> None:
        self.path = path
        self._lease = lease
        self._fd = fd
        self.size = os.fstat(fd).st_size
        self.dropped = False

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` kept bytes from ``offset``."""
        return os.pread(self._fd, n, offset)

    def append(self, data: bytes) -> None:
        """Keep ``data``, the bytes after the first ``size``.

        Raises:
            OSError: it could not be written (no space): the caller stops keeping (see :meth:`drop`).
        """
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.size)
            self.size += n
            view = view[n:]

    def truncate(self) -> None:
        """Forget the kept bytes, and keep from the start again."""
        os.ftruncate(self._fd, 0)
        self.size = 0

    def drop(self) -> None:
        """Remove the file now (it is not kept for a resume)."""
        if not self.dropped:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.dropped = True

    def close(self) -> None:
        """Release it: kept (unless dropped, or empty) for the next pull, until it expires."""
        if self._fd >= 0:
            if not self.dropped and self.size == 0:
                self.drop()
            os.close(self._fd)
            self._fd = -1
            self._lease.release()


@dataclasses.dataclass(frozen=True)
class MountRecord:
    """A mount of an image, recorded so that the image counts as in use."""

    image_id: str
    mountpoint: str
    pid: int
    since: str
    #: the container whose writable mount this is (None: a read-only mount of the image)
    container: str | None = None


def _hex(digest: str) -> str:
    return _digest.split(digest)[1]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Name the step an OSError happened in: ``<what>: <cause>`` (see :func:`_doing`)."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, f"{what}: {err.strerror or err}") from err


@contextlib.contextmanager
def _doing(command: str) -> Iterator[None]:
    """Turn an OSError into the one-line error of ``command``: ``<command>: <step>: <cause>``."""
    try:
        yield
    except OSError as err:
        raise LayerfsError(f"{command}: {err.strerror or err}") from err


def _load_json(path: Path) -> _JsonDict:
    """A JSON object from a record of the store.

    Raises:
        OSError: it cannot be read (FileNotFoundError: it is not there).
        BadImage: it is not a JSON object (broken by hand, or by a disk that lost it): the message
            names the file.
    """
    with open(path, "rb") as f:
        try:
            value = json.load(f)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise BadImage(f"{path}: is corrupt: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise BadImage(f"{path}: is corrupt: not a JSON object")
    return value


def _real_mountpoint(mountpoint: str) -> str:
    """A recorded mount point as the mount table names it (its real path), its parent resolved and
    the mount point itself not (a mount point is no symlink, and a stat of it would wait for a
    daemon that hangs or fail on a dead one)."""
    parent, base = os.path.split(os.path.abspath(mountpoint))
    return os.path.join(os.path.realpath(parent), base)


class Store:
    """A layerfs store at ``root``; see the module docstring for its layout and rules.

    Reading methods take no lock.  Writing goes through :meth:`writer`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    # -- paths -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algo, hexpart = _digest.split(digest)
        return self.root / "blobs" / algo / hexpart

    def layer_path(self, diff_id: str) -> Path:
        """The directory of a layer (holding ``diff/`` and ``layer.json``)."""
        return self.root / "layers" / _hex(diff_id)

    def layer_dir(self, diff_id: str) -> Path:
        """The unpacked tree of a layer, in overlay form.  Never write into it."""
        return self.layer_path(diff_id) / "diff"

    def state_dir(self, name: str) -> Path:
        """A directory for derived data kept beside the layers (created on demand).

        Files in it should be named after the ChainID (hex) they derive from, or the image ID
        (hex) for an image with no layers: removing the last image of a chain (or the image)
        removes them too.  Directories are kept, and emptied.
        """
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad state dir name {name!r}")
        path = self.root / "state" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    # -- reading -----------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} is not in the store") from None

    def has_layer(self, diff_id: str) -> bool:
        return (self.layer_path(diff_id) / "layer.json").is_file()

    def layer_dirs(self, image: Image) -> list[Path]:
        """The unpacked trees of an image's layers, base layer first."""
        return [self.layer_dir(d) for d in image.diff_ids]

    def layer_blob(self, diff_id: str) -> tuple[Path, str, int, str | None] | None:
        """The blob a layer came as, when the store kept it: (path, digest, size, media type).

        Returns:
            None when none was kept (layers of older stores, or ``LAYERFS_KEEP_BLOBS=0``).
        """
        try:
            blob = self.layer_info(diff_id).get("blob")
        except (OSError, ValueError, BadImage):
            return None
        path = self.layer_path(diff_id) / "blob"
        if not isinstance(blob, dict) or not path.is_file():
            return None
        digest, size, media_type = blob.get("digest"), blob.get("size"), blob.get("media_type")
        if not isinstance(digest, str) or not isinstance(size, int):
            return None
        return path, digest, size, media_type if isinstance(media_type, str) else None

    def layer_info(self, diff_id: str) -> _JsonDict:
        return _load_json(self.layer_path(diff_id) / "layer.json")

    def _repositories(self) -> dict[str, dict[str, str]]:
        """``repositories.json``: repository -> reference -> image ID.

        Raises:
            LayerfsError: the file is corrupt: says which, and how to repair the store.
        """
        path = self.root / "repositories.json"
        try:
            data = _load_json(path)
            repos = data.get("Repositories", {})
            if not isinstance(repos, dict) or not all(
                    isinstance(refs, dict) and all(isinstance(i, str) for i in refs.values())
                    for refs in repos.values()):
                raise BadImage(f"{path}: is corrupt: want {{\"Repositories\": {{REPO: {{REF: IMAGE ID}}}}}}")
        except FileNotFoundError:
            return {}
        except BadImage as err:
            # Only the names are lost: images, layers and blobs are intact and listed by ID.
            raise LayerfsError(f"{err}; restore it from a backup, or remove it: the images stay, untagged "
                               f"(`layerfs images` lists them by ID; `layerfs tag ID NAME` names them "
                               f"again)") from None
        return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in repos.items()}

    def _references_by_image(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for refs in self._repositories().values():
            for ref, image_id in refs.items():
                out.setdefault(image_id, []).append(ref)
        return out

    def _image_ids(self) -> list[str]:
        try:
            names = os.listdir(self.root / "images")
        except FileNotFoundError:
            return []
        return [f"sha256:{n[:-5]}" for n in names if n.endswith(".json") and _digest.is_digest(f"sha256:{n[:-5]}")]

    def _load_image(self, image_id: str, refs: Sequence[str]) -> Image:
        record = _load_json(self.root / "images" / f"{_hex(image_id)}.json")
        raw = self.read_blob(image_id)
        config = _manifest.json_object(raw, f"config {image_id}")
        diff_ids = _manifest.diff_ids(raw, image_id)
        size = 0
        for diff_id in diff_ids:
            with contextlib.suppress(FileNotFoundError, BadImage):
                size += int(self.layer_info(diff_id).get("size", 0))  # type: ignore[call-overload]
        tags = sorted(_familiar(r) for r in refs if "@" not in r)
        digests = sorted(_familiar(r) for r in refs if "@" in r)
        return Image(
            id=image_id, config=config, diff_ids=tuple(diff_ids), chain_ids=tuple(_digest.chain_ids(diff_ids)),
            repo_tags=tuple(tags), repo_digests=tuple(digests), created=str(config.get("created", "")),
            size=size, manifest_digest=_opt_str(record.get("manifest")), index_digest=_opt_str(record.get("index")),
            added=str(record.get("added", "")))

    def images(self) -> list[Image]:
        """Every image, newest first (by config ``created``)."""
        refs = self._references_by_image()
        out = []
        for image_id in self._image_ids():
            try:
                out.append(self._load_image(image_id, refs.get(image_id, [])))
            except (FileNotFoundError, ImageNotFound):
                continue  # removed while we were reading
        out.sort(key=lambda i: (i.created, i.id), reverse=True)
        return out

    def get(self, name: str) -> Image:
        """Find an image by reference (``repo:tag``, ``repo@digest``), full ID or unique ID prefix.

        Raises:
            ImageNotFound: nothing answers to ``name`` (docker's words: "No such image"), also
                when the image is removed while it is being read.
            BadImage: its record is there but its config blob is not (corruption, not a missing
                image: ``verify --repair`` removes it).
        """
        image_id = self._resolve(name)
        try:
            return self._load_image(image_id, self._references_by_image().get(image_id, []))
        except (FileNotFoundError, ImageNotFound):  # its record, or its config blob (read_blob)
            if image_id not in self._image_ids():  # went with an rm meanwhile (the record goes first)
                raise ImageNotFound(f"No such image: {name}") from None
            if self.has_blob(image_id):
                raise  # not this image's record nor its config: say what it is
            raise BadImage(f"image {image_id}: is corrupt: its config blob is missing "
                           f"(`layerfs verify --repair` removes it)") from None

    def _resolve(self, name: str) -> str:
        ids = self._image_ids()
        if name.startswith("sha256:") and name in ids:
            return name
        try:
            ref = parse_reference(name)
        except InvalidReference:
            ref = None
        if ref is not None:
            key = _ref_key(ref)
            repos = self._repositories()
            image_id = repos.get(ref.repository, {}).get(key)
            if image_id is not None and image_id in ids:
                return image_id
        prefix = name.removeprefix("sha256:")
        if 3 <= len(prefix) <= 64 and all(c in "0123456789abcdef" for c in prefix):
            matches = [i for i in ids if i[7:].startswith(prefix)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ImageNotFound(f"{name}: ambiguous image ID prefix ({len(matches)} images match)")
        raise ImageNotFound(f"No such image: {name}")

    def inspect(self, image: Image) -> _JsonDict:
        """The image as ``docker image inspect`` shows it, plus where each layer lives."""
        config = image.config
        dirs = self.layer_dirs(image)
        layers = []
        for diff_id, chain_id, path in zip(image.diff_ids, image.chain_ids, dirs):
            info = self.layer_info(diff_id)
            layers.append({"DiffID": diff_id, "ChainID": chain_id, "Path": str(path),
                           "Size": info.get("size", 0), "Digests": info.get("digests", [])})
        return {
            "Id": image.id,
            "RepoTags": list(image.repo_tags),
            "RepoDigests": list(image.repo_digests),
            "Parent": "",
            "Comment": _history_comment(config),
            "Created": image.created,
            "Author": config.get("author", ""),
            "Config": config.get("config", {}),
            "Architecture": config.get("architecture", ""),
            **({"Variant": config["variant"]} if config.get("variant") else {}),
            "Os": config.get("os", ""),
            **({"OsVersion": config["os.version"]} if config.get("os.version") else {}),
            "Size": image.size,
            "GraphDriver": {"Name": "layerfs", "Data": {"LowerDir": ":".join(_lower_dirs(dirs))}},
            "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
            "Metadata": {"LastTagTime": image.added},
            "Descriptor": {"ManifestDigest": image.manifest_digest, "IndexDigest": image.index_digest},
            "Layers": layers,
        }

    # -- the public verbs (thin: the work is in Writer; pull and load live in _transfer) --------

    def remove(self, name: str, *, force: bool = False) -> list[str]:
        """``layerfs rm``: untag or delete an image; returns docker's ``Untagged:``/``Deleted:`` lines.

        Works on a full disk (see :meth:`Writer.remove`).

        Raises:
            ImageNotFound, Conflict: as :meth:`Writer.remove`.
            LayerfsError: a system call failed: ``rm NAME: <step>: <cause>``.
        """
        with _doing(f"rm {name}"), self.writer() as w:
            return w.remove(name, force=force)

    def tag(self, name: str, ref: str) -> None:
        """``layerfs tag``: point the reference ``ref`` at the image ``name``.

        Raises:
            ImageNotFound, InvalidReference: as docker says them.
            LayerfsError: a system call failed: ``tag NAME REF: <step>: <cause>``.
        """
        target = parse_reference(ref)
        with _doing(f"tag {name} {ref}"), self.writer() as w:
            w.tag(self.get(name), target)

    # -- mounts ------------------------------------------------------------------------------

    def _mount_record_path(self, mountpoint: str) -> Path:
        key = hashlib.sha256(os.path.abspath(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.root / "mounts" / f"{key}.json"

    def _read_mount(self, path: Path) -> tuple[MountRecord, int | None]:
        """A mount record and the start time of its process (None in records of layerfs 0.1).

        Raises:
            OSError, ValueError, KeyError, BadImage: unreadable.
        """
        data = _load_json(path)
        container = data.get("container")
        rec = MountRecord(str(data["image_id"]), str(data["mountpoint"]), int(data["pid"]),  # type: ignore[call-overload]
                          str(data["since"]), container if isinstance(container, str) else None)
        start = data.get("start")
        return rec, start if isinstance(start, int) else None

    def mounts(self) -> list[MountRecord]:
        """The mounts that keep images in use: records whose process lives.

        A record names the command starting a mount until its daemon exists, then the daemon,
        which serves until the last mount of it is gone, in every mount namespace.  A pid counts
        only with the start time recorded with it (a reused pid is another process).
        """
        try:
            names = sorted(os.listdir(self.root / "mounts"))
        except FileNotFoundError:
            return []
        mounted: dict[str, _proc.MountEntry] | None = None
        out = []
        for name in names:
            with contextlib.suppress(OSError, ValueError, KeyError, BadImage):
                rec, start = self._read_mount(self.root / "mounts" / name)
                if not _proc.pid_alive(rec.pid):
                    continue
                if start is None:  # an older record: alive while its mount point is mounted
                    mounted = _proc.mountpoints() if mounted is None else mounted
                    if _real_mountpoint(rec.mountpoint) in mounted:
                        out.append(rec)
                elif _proc.start_time(rec.pid) == start:
                    out.append(rec)
        return out

    def dead_mounts(self) -> list[MountRecord]:
        """Mounts whose process is gone (a daemon killed, or crashed) while their mount point is
        still a layerfs mount (``fuse.layerfs``) here: a dead mount, where every access fails with ENOTCONN until
        ``layerfs umount`` removes it.  A dead mount keeps nothing in use (``rm`` may remove its
        image), but its record stays until then, so that it can be named; the clean-up removes only
        the records of mounts that no longer exist (as after a reboot).
        """
        try:
            names = sorted(os.listdir(self.root / "mounts"))
        except FileNotFoundError:
            return []
        live = {self._mount_record_path(m.mountpoint).name for m in self.mounts()}
        table = _proc.mountpoints()
        out = []
        for name in names:
            if name in live:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, BadImage):
                rec, _ = self._read_mount(self.root / "mounts" / name)
                entry = table.get(_real_mountpoint(rec.mountpoint))
                if entry is not None and entry.fstype == "fuse.layerfs":  # not another file system's
                    out.append(rec)
        return out

    def _write_mount(self, rec: MountRecord) -> None:
        start = _proc.start_time(rec.pid)
        if start is None:
            raise ProcessLookupError(errno.ESRCH, f"process {rec.pid} is gone")
        with _step("record the mount in the store"):
            self._write_atomic(self._mount_record_path(rec.mountpoint),
                               _json_bytes({**dataclasses.asdict(rec), "start": start}))

    def register_mount(self, image_id: str, mountpoint: str, pid: int, container: str | None = None) -> MountRecord:
        """Record that ``pid`` mounts (or is about to mount) ``image_id`` at ``mountpoint``.

        From now on, while ``pid`` lives, the image counts as in use: ``rm`` refuses it.  A mount
        registers before it starts its daemon, then hands the record over to it
        (:meth:`hand_over_mount`), so that no daemon ever serves an image the store does not know
        to be in use.  Takes the store lock briefly, so it cannot race with ``rm``, and removes what
        killed commands left in ``tmp/`` and the records of mounts that are gone (:meth:`Writer.reap`,
        not the whole clean-up: a mount stays fast).

        Raises:
            ImageNotFound: the image is not (or no longer) in the store.
            Conflict: another live mount is recorded at ``mountpoint``.
            OSError: ``record the mount in the store: <cause>`` (nothing is recorded).
        """
        rec = MountRecord(image_id, os.path.abspath(mountpoint), pid, _now(), container)
        with self._locked():
            with _step("clean up"):
                Writer(self).reap()  # what a killed command left, stale records (after a reboot) too
            if image_id not in self._image_ids():
                raise ImageNotFound(f"No such image: {image_id}")
            for other in self.mounts():
                if other.mountpoint == rec.mountpoint:
                    raise Conflict(f"{rec.mountpoint}: process {other.pid} is mounting or serving "
                                   f"{other.image_id} there")
                if container is not None and other.container == container:
                    raise Conflict(f"container {container[:12]} is already mounted at {other.mountpoint}")
            self._write_mount(rec)
        return rec

    def hand_over_mount(self, mountpoint: str, from_pid: int, to_pid: int) -> MountRecord:
        """Pass the record of the mount at ``mountpoint`` from ``from_pid`` (the command) to
        ``to_pid`` (the daemon it started, before that mounts anything).

        Raises:
            LayerfsError: the record is gone or names another process.
            OSError: ``record the mount in the store: <cause>`` (the record is unchanged).
        """
        path = self._mount_record_path(mountpoint)
        with self._locked():
            try:
                rec, _ = self._read_mount(path)
            except (OSError, ValueError, KeyError, BadImage):
                raise LayerfsError(f"{mountpoint}: the mount record is gone") from None
            if rec.pid != from_pid:
                raise LayerfsError(f"{mountpoint}: the mount record names process {rec.pid}, not {from_pid}")
            new = dataclasses.replace(rec, pid=to_pid)
            self._write_mount(new)
        return new

    def unregister_mount(self, mountpoint: str, pid: int | None = None) -> None:
        """Remove the record of the mount at ``mountpoint`` (only if it names ``pid``, if given)."""
        path = self._mount_record_path(mountpoint)
        if pid is not None:
            try:
                rec, _ = self._read_mount(path)
            except (OSError, ValueError, KeyError, BadImage):
                return
            if rec.pid != pid:
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- layers: stage, then publish (no writer needed) -----------------------------------------

    @contextlib.contextmanager
    def hold(self, diff_ids: Iterable[str]) -> Iterator[None]:
        """Keep the layers ``diff_ids`` from being collected while a command builds an image on them.

        A pull or a load takes a hold on every layer of the image before it looks at which ones
        the store has: those stay (even if the only image using them is removed meanwhile), and
        those it publishes stay although no image lists them yet.  The hold is a leased file
        ``tmp/hold-*`` listing the diff IDs, written under the store lock (clean-up reads holds
        under it, so a hold is either seen by a clean-up or taken after it ended); it ends with
        the block, or with the process.

        Raises:
            InvalidReference: a diff ID is not a digest.
            OSError: ``hold the image's layers: <cause>`` (no space): nothing is held.
        """
        ids = sorted({_digest.check_digest(d) for d in diff_ids})
        with self._locked(), _step("hold the image's layers"):
            lease = self.temp_file("hold")
            try:
                lease.write_all(_json_bytes({"layers": ids, "pid": os.getpid()}))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(lease.path)
                lease.release()
                raise
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lease.path)
            lease.release()

    def _layer_record(self, diff_id: str, *, existed: bool) -> LayerRecord:
        info = self.layer_info(diff_id)
        return LayerRecord(diff_id, self.layer_dir(diff_id), int(info.get("size", 0)),  # type: ignore[call-overload]
                           int(info.get("entries", 0)), existed=existed)  # type: ignore[call-overload]

    @contextlib.contextmanager
    def stage_layer(self, diff_id: str, *,
                    cancelled: Callable[[], bool] | None = None) -> Iterator[LayerStage | LayerRecord]:
        """Stage a layer for ``diff_id``: "stage, then publish", without the store lock.

        Yields the existing :class:`LayerRecord` (``existed`` true) when the store has the layer;
        otherwise a :class:`LayerStage` whose empty ``diff`` directory the caller fills (the
        unpacker, a commit) and then hands to :meth:`publish_layer`.  The stage is the leased
        directory ``tmp/layer-<diff ID hex>``: one name per layer, so that two commands (or two
        threads) staging one layer make it once: the second waits for the first and then sees the
        layer published, or takes over the stage if the first failed or died.  A stage that is
        not published is removed when the block ends, whatever happened.  Call it under a
        :meth:`hold` of the layer.

        Args:
            diff_id: the layer's diff ID.
            cancelled: asked while waiting for another stager; true ends the wait.
        Raises:
            InvalidReference: ``diff_id`` is not a digest.
            LayerfsError: cancelled while waiting.
            OSError: the stage cannot be made.
        """
        _digest.check_digest(diff_id)
        while True:
            if self.has_layer(diff_id):
                yield self._layer_record(diff_id, existed=True)
                return
            self._ensure_layout()
            try:
                lease, created = _lease.claim_dir(self.tmp_dir / f"layer-{_hex(diff_id)}", cancelled=cancelled)
            except InterruptedError:
                raise LayerfsError(f"layer {diff_id}: cancelled") from None
            if not self.has_layer(diff_id):
                break
            with lease:  # published by another stager while we waited: this one is not needed
                _remove_now(lease.path)
        stage = LayerStage(diff_id, lease.path, lease)
        try:
            if not created:  # the leftover of a stager that died: start afresh
                for child in os.listdir(stage.path):
                    _remove_now(stage.path / child)
            stage.diff.mkdir(mode=0o700)
            yield stage
        finally:
            if not stage.published:
                _remove_now(stage.path)
            lease.release()

    def publish_layer(self, stage: LayerStage, *, size: int, entries: int, digests: Sequence[str] = (),
                      media_type: str | None = None, tree: str | None = None,
                      blob: Mapping[str, object] | None = None) -> LayerRecord:
        """Move a filled, verified stage into ``layers/<diff ID>`` and record what it holds.

        Takes the store lock only for the rename.  Until an image lists the layer, only a
        :meth:`hold` keeps clean-up from removing it.

        Args:
            stage: from :meth:`stage_layer`; its ``diff`` directory is complete.
            size, entries: the sum of its regular files' sizes and its tar entry count.
            digests: the compressed blob digests it is known under.
            media_type: the media type it came as.
            tree: the digest of the unpacked tree (``_layer.tree``), what ``verify`` rechecks.
            blob: the stage holds ``blob``, the layer's blob as it came: its digest, size and media
                type (kept for ``save`` and ``push``; see :meth:`layer_blob`).
        Raises:
            OSError: nothing is published (the stage is removed when its block ends).
        """
        diff_id, work = stage.diff_id, stage.path
        meta = {"diff_id": diff_id, "size": size, "entries": entries, "digests": sorted(set(digests)),
                "media_type": media_type, "added": _now(), **({"tree": tree} if tree else {}),
                **({"blob": dict(blob)} if blob else {})}
        with open(work / "layer.json", "xb") as f:
            f.write(_json_bytes(meta))
            os.fsync(f.fileno())
        final = self.layer_path(diff_id)
        with self._locked():
            if final.exists():  # a layer dir without layer.json: a leftover, replace it
                self._remove_tree(final)
            os.rename(work, final)
            stage.published = True
            _fsync_dir(final.parent)
        return LayerRecord(diff_id, final / "diff", size, entries)

    # -- what a failed pull keeps for the next one (RESUME_SECONDS) ----------------------------

    @contextlib.contextmanager
    def partial_blob(self, digest: str) -> Iterator[PartialBlob | None]:
        """Lease the kept first bytes of the layer blob ``digest`` (``tmp/resume-blob-<hex>``),
        made empty if there are none; None if another command is using them.

        The file is not removed when the block ends: what it holds is kept for the next pull to
        resume, :data:`RESUME_SECONDS` after it was last written, unless it was dropped (or is
        empty).  Its bytes are not verified here: the reader of the whole blob verifies its digest.

        Raises:
            InvalidReference: ``digest`` is not a digest.
            OSError: the file cannot be made.
        """
        path = self.tmp_dir / f"{RESUME_BLOB}{_hex(_digest.check_digest(digest))}"
        self._ensure_layout()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        lease = _lease.take(path)
        if lease is None:
            yield None  # another pull is writing it (or an expired one is being removed)
            return
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) != (os.fstat(lease.fd).st_ino, os.fstat(lease.fd).st_dev):
                raise FileNotFoundError(errno.ENOENT, "replaced while it was leased", str(path))
            os.utime(fd)  # in use: its expiry starts again
        except BaseException:
            if fd >= 0:
                os.close(fd)
            lease.release()
            raise
        partial = PartialBlob(path, lease, fd)
        try:
            yield partial
        finally:
            partial.close()

    def drop_partial_blob(self, digest: str) -> None:
        """Remove the kept first bytes of the layer blob ``digest``, unless a pull is using them:
        for a layer the store has, they serve nothing (a pull killed after it published the layer
        but before it dropped them left them, for a day)."""
        path = self.tmp_dir / f"{RESUME_BLOB}{_hex(_digest.check_digest(digest))}"
        with contextlib.suppress(OSError):
            _lease.reap(path, _remove_now)

    def keep_layer(self, diff_id: str) -> None:
        """Keep the published layer ``diff_id`` :data:`RESUME_SECONDS` although no image uses it
        (yet): a pull marks each layer it completes, so that one that fails, is interrupted or
        killed costs nothing for that layer next time.  Call it under the :meth:`hold` of the
        layer; the mark goes once an image lists the layer (:meth:`forget_kept_layers`, or the
        next clean-up).

        Raises:
            OSError: the mark cannot be written (the layer is kept only while held).
        """
        path = self.tmp_dir / f"{RESUME_LAYER}{_hex(_digest.check_digest(diff_id))}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        os.utime(path)

    def forget_kept_layers(self, diff_ids: Iterable[str]) -> None:
        """Remove the marks of :meth:`keep_layer` (an image now lists these layers)."""
        for diff_id in diff_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_dir / f"{RESUME_LAYER}{_hex(diff_id)}")

    def collect_garbage(self) -> list[str]:
        """Take the write lock just to clean up (as every writer does on entry): remove leftovers of
        failed or killed commands, and layers, chains and blobs no image uses nor any command holds.

        Returns:
            The diff IDs of the layers removed.
        """
        with self._locked():
            return Writer(self).collect_garbage()

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[Writer]:
        """Hold the store's write lock; on an exception, remove what this writer added.

        Entering cleans what crashed writers left behind.  The lock is an flock(2) on
        ``ROOT/lock``: another layerfs command that writes waits for it.
        """
        with self._locked():
            writer = Writer(self)
            with _step("clean up"):
                writer.collect_garbage()
            try:
                yield writer
            except BaseException:
                writer.roll_back()
                raise
            self._keep_reserve()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's write lock, and nothing more (no clean-up on entry, no roll-back)."""
        self._ensure_layout()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _keep_reserve(self) -> None:
        """Make sure ``reserve`` holds :data:`RESERVE_BYTES` (best effort: not on a full disk)."""
        path = self.root / "reserve"
        try:
            if os.stat(path).st_size >= RESERVE_BYTES:
                return
        except FileNotFoundError:
            pass
        with contextlib.suppress(OSError), self.temp_file("reserve") as lease:
            try:
                os.posix_fallocate(lease.fd, 0, RESERVE_BYTES)
                os.rename(lease.path, path)
            except OSError:
                os.unlink(lease.path)
                raise

    def _spend_reserve(self) -> bool:
        """Free the reserve for a removal that must write on a full disk; False if there is none."""
        try:
            os.unlink(self.root / "reserve")
        except FileNotFoundError:
            return False
        return True

    def _ensure_layout(self) -> None:
        for sub in ("tmp", "blobs/sha256", "layers", "chains", "images", "mounts", "state", "containers"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    # -- temporary names (leased: see _store.lease) -------------------------------------------

    def temp_file(self, hint: str) -> _lease.Lease:
        """A new empty file under ``tmp/``, leased to the caller until it releases it.

        Clean-up never removes it while the lease is held; once released (or the process
        dies) it is a leftover, removed by the next writer unless the caller renamed it away.
        """
        self._ensure_layout()
        return _lease.new_file(self.tmp_dir, hint)

    def temp_dir(self, hint: str) -> _lease.Lease:
        """A new empty directory under ``tmp/``, leased like :meth:`temp_file`."""
        self._ensure_layout()
        return _lease.new_dir(self.tmp_dir, hint)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path``: a leased file under ``tmp/``, fsync, rename, fsync of the directory.

        Raises:
            OSError: nothing is left behind (the temporary file is removed).
        """
        with self.temp_file(path.name) as lease:
            try:
                lease.write_all(data)
                os.rename(lease.path, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(lease.path)
                raise
        _fsync_dir(path.parent)

    def put_state(self, name: str, filename: str, data: bytes) -> Path:
        """Write derived data (e.g. a merged index) to ``state/<name>/<filename>``; no lock needed.

        The file is written under ``tmp/`` with a lease and renamed into place, so a writer's
        clean-up running meanwhile neither removes it half-written nor sees a partial file.
        Name it after the ChainID (hex) it derives from (see :meth:`state_dir`).

        Returns:
            The path written.
        Raises:
            ValueError: ``filename`` is not a plain name.
            OSError: it cannot be written; nothing is left behind.
        """
        if not filename or "/" in filename or filename.startswith("."):
            raise ValueError(f"bad state file name {filename!r}")
        path = self.state_dir(name) / filename
        self._write_atomic(path, data)
        return path

    def _remove_tree(self, path: Path) -> None:
        """Remove a file, or a tree in a way a crash cannot leave half-removed in place.

        A directory is leased and renamed into ``tmp/`` first: if the process dies while
        removing it, the next writer finds an unowned leftover there and finishes the job.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # Blocking: only a command that waited for a layer's stage may hold it, for an instant.
            fcntl.flock(fd, fcntl.LOCK_EX)
            trash = self.tmp_dir / f"trash-{secrets.token_hex(8)}"
            try:
                os.rename(path, trash)
                path = trash
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
            _remove_now(path)
        finally:
            os.close(fd)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ref_key(ref: Reference) -> str:
    return f"{ref.repository}@{ref.digest}" if ref.digest else f"{ref.repository}:{ref.tag}"


def _familiar(key: str) -> str:
    try:
        return parse_reference(key).familiar()
    except InvalidReference:
        return key


def _lower_dirs(dirs: Sequence[Path]) -> list[str]:
    """An image's layer directories (base first) as overlay's ``lowerdir=`` lists them: top first,
    each once.  Two layers with one diff ID (two empty layers) share a directory; the kernel
    refuses a list naming one twice, and the merged view is the same with the topmost alone
    (what a lower copy of it could show, the upper copy shows first)."""
    out: list[str] = []
    for d in reversed(dirs):
        if str(d) not in out:
            out.append(str(d))
    return out


def _history_comment(config: Mapping[str, object]) -> str:
    history = config.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        return str(history[-1].get("comment", ""))
    return ""


class Writer:
    """What a holder of the store lock may do.  Made by :meth:`Store.writer` only.

    ``put_blob`` may be called from several threads at once; everything else from one.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._added_blobs: list[str] = []
        self._added_images: list[str] = []
        self._mutex = threading.Lock()
        self._removing = False  # a removal may spend the reserve

    # -- primitives --------------------------------------------------------------------------

    def write_file(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically: leased temp name, fsync, rename, fsync of the directory.

        During a removal, a full disk spends the store's reserve and tries once more.

        Raises:
            OSError: ``write <name>: <cause>``; nothing is left behind.
        """
        with _step(f"write {path.name}"):
            try:
                self.store._write_atomic(path, data)
            except OSError as err:
                if err.errno != errno.ENOSPC or not self._removing or not self.store._spend_reserve():
                    raise
                self.store._write_atomic(path, data)

    # -- blobs -------------------------------------------------------------------------------

    def put_blob(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store a manifest, index or config; returns its digest.

        Raises:
            DigestMismatch: ``data`` does not hash to ``expected_digest``.
        """
        if len(data) > MAX_BLOB_SIZE:
            raise BadImage(f"blob {expected_digest or ''} is {len(data)} bytes, over the {MAX_BLOB_SIZE} limit")
        algorithm = expected_digest.partition(":")[0] if expected_digest else _digest.ALGORITHM
        digest = _digest.of_bytes(data, algorithm)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatch("blob", expected_digest, digest)
        path = self.store.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.write_file(path, data)
            with self._mutex:
                self._added_blobs.append(digest)
        return digest

    # -- images and references ---------------------------------------------------------------

    def add_image(self, config_digest: str, *, manifest_digest: str | None = None, index_digest: str | None = None,
                  tags: Sequence[Reference] = (), record_digests: bool = True) -> Image:
        """Record an image whose config blob and layers are all in the store, and reference it.

        Args:
            config_digest: the image ID.
            manifest_digest, index_digest: the manifest (and index) it came from, if any.
            tags: references to point at the image.  A reference with a tag tags it; with
                ``record_digests`` and a ``manifest_digest``, each reference's repository also
                gets the repo digest ``repo@<manifest digest>`` (what docker records on pull).
        Raises:
            BadImage: the config is missing or malformed, or a layer is missing.
        """
        if not self.store.has_blob(config_digest):
            raise BadImage(f"config {config_digest} is not in the store")
        diff_ids = _manifest.diff_ids(self.store.read_blob(config_digest), config_digest)
        for diff_id in diff_ids:
            if not self.store.has_layer(diff_id):
                raise BadImage(f"image {config_digest}: layer {diff_id} is not in the store")
        for chain_id, parent, diff_id in zip(_digest.chain_ids(diff_ids), [None, *_digest.chain_ids(diff_ids)],
                                             diff_ids):
            path = self.store.root / "chains" / f"{_hex(chain_id)}.json"
            if not path.exists():
                self.write_file(path, _json_bytes({"chain_id": chain_id, "diff_id": diff_id, "parent": parent}))
        record_path = self.store.root / "images" / f"{_hex(config_digest)}.json"
        new = not record_path.exists()
        old = {} if new else _load_json(record_path)
        record = {"id": config_digest, "manifest": manifest_digest or old.get("manifest"),
                  "index": index_digest or old.get("index"), "added": old.get("added") or _now()}
        if new or record != old:
            self.write_file(record_path, _json_bytes(record))
        if new:
            self._added_images.append(config_digest)
        refs = list(tags)
        if record_digests and manifest_digest:
            refs += [r.with_digest(manifest_digest) for r in tags]
        for ref in refs:
            self._set_reference(ref, config_digest)
        return self.store.get(config_digest)

    def tag(self, image: Image, ref: Reference) -> None:
        """Point ``ref`` (a tag) at ``image``, moving it from any other image."""
        if ref.digest:
            raise InvalidReference(f"refusing to create a tag with a digest reference: {ref.familiar()}")
        self._set_reference(ref, image.id)

    def _set_reference(self, ref: Reference, image_id: str) -> None:
        repos = self.store._repositories()
        repos.setdefault(ref.repository, {})[_ref_key(ref)] = image_id
        self._write_repositories(repos)

    def _write_repositories(self, repos: Mapping[str, Mapping[str, str]]) -> None:
        clean = {k: dict(sorted(v.items())) for k, v in sorted(repos.items()) if v}
        self.write_file(self.store.root / "repositories.json", _json_bytes({"Repositories": clean}))

    def remove(self, name: str, *, force: bool = False) -> list[str]:
        """``docker image rm``: untag, and delete the image when its last reference goes.

        Removing ``repo:tag`` of an image that has other tags only untags.  Removing by ID
        untags everything and deletes; if the image is tagged in several repositories that
        needs ``force``.  An image used by a live mount is never removed.  Layers that no other
        image uses are deleted with it.

        Works with zero bytes free: an image is deleted (its record, then its layers) before
        ``repositories.json`` is rewritten, and a write that still finds the disk full spends the
        store's ``reserve`` (kept by every writer that succeeds).

        Returns:
            The lines docker prints: ``Untagged: …`` and ``Deleted: …``.
        Raises:
            ImageNotFound, Conflict (docker's words: "conflict: unable to delete …").
            OSError: ``<step>: <cause>``.
        """
        store = self.store
        image_id = store._resolve(name)
        image = store.get(image_id)
        repos = store._repositories()
        refs = [(repo, key) for repo, m in repos.items() for key, i in m.items() if i == image_id]
        by_ref = False
        try:
            ref = parse_reference(name)
            by_ref = any(key == _ref_key(ref) for _, key in refs)
        except InvalidReference:
            ref = None
        lines: list[str] = []
        if by_ref and ref is not None:
            # moby image_delete.go: untag; when no tag of that repository is left, its digest
            # references go too; the image is deleted only when no reference at all is left.
            entries = repos[ref.repository]
            entries.pop(_ref_key(ref))
            lines.append(f"Untagged: {ref.familiar()}")
            if not ref.digest and not any("@" not in k and i == image_id for k, i in entries.items()):
                for key in [k for k, i in entries.items() if "@" in k and i == image_id]:
                    entries.pop(key)
                    lines.append(f"Untagged: {_familiar(key)}")
            refs = [(r, k) for r, m in repos.items() for k, i in m.items() if i == image_id]
            if refs:
                self._removing = True  # untagging frees nothing: on a full disk it spends the reserve
                self._write_repositories(repos)
                return lines
        else:
            repositories = {r for r, _ in refs}
            if len(repositories) > 1 and not force:
                raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - image is "
                               f"referenced in multiple repositories")
        for mount in store.mounts():
            if mount.image_id == image_id:
                raise Conflict(f"conflict: unable to delete {image.short_id} (cannot be forced) - image is "
                               f"being used by the mount at {mount.mountpoint} (pid {mount.pid})")
        users = _containers.users_of_image(store, image_id)
        if users and not force:
            raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - image is being used "
                           f"by stopped container {users[0].short_id}")
        for repo, key in refs:
            repos[repo].pop(key, None)
            lines.append(f"Untagged: {_familiar(key)}")
        if users:  # forced: untagged, but kept for its containers (docker keeps it too)
            self._removing = True
            self._write_repositories(repos)
            return lines
        # Delete first, write last, so that a full disk has room by the time something is written.
        # A crash in between leaves references to a missing image: readers ignore them, and the
        # next writer's clean-up drops them.
        with _step(f"remove image record {image_id}"):
            os.unlink(store.root / "images" / f"{_hex(image_id)}.json")
            _fsync_dir(store.root / "images")
        lines.append(f"Deleted: {image_id}")
        with _step("remove unused layers"):
            lines += [f"Deleted: {d}" for d in self.collect_garbage()]
        self._removing = True
        self._write_repositories(repos)
        return lines

    # -- consistency -------------------------------------------------------------------------

    def reap(self) -> tuple[set[str], set[str]]:
        """Remove what killed commands left: what no live command owns in ``tmp/`` (temporary files,
        stages, trees being removed, holds; what a failed pull keeps for a resume only once it
        expires, :data:`RESUME_SECONDS`) and the records of mounts that no longer exist (their
        process is gone and their mount point is not mounted: after a reboot; a dead mount's record
        stays until ``umount``, see :meth:`Store.dead_mounts`).

        Cheap (two directory listings): the commands that write only records (``mount``) run this
        instead of the whole :meth:`collect_garbage`.

        Returns:
            The layers (hex) that live holds keep, and those a failed pull keeps for its resume.
        """
        store = self.store
        held: set[str] = set()
        kept: set[str] = set()
        now = time.time()
        for entry in os.listdir(store.tmp_dir):
            if entry.startswith((RESUME_BLOB, RESUME_LAYER)):
                try:
                    fresh = now - os.lstat(store.tmp_dir / entry).st_mtime < RESUME_SECONDS
                except FileNotFoundError:
                    continue
                if not fresh:
                    _lease.reap(store.tmp_dir / entry, _remove_now)  # expired, and no pull uses it
                elif entry.startswith(RESUME_LAYER):
                    kept.add(entry.removeprefix(RESUME_LAYER))
                continue
            if _lease.reap(store.tmp_dir / entry, _remove_now):  # only what no live command owns
                continue
            if entry.startswith("hold-"):
                with contextlib.suppress(OSError, ValueError):
                    layers = json.loads((store.tmp_dir / entry).read_bytes()).get("layers", [])
                    held.update(_hex(d) for d in layers if isinstance(d, str) and _digest.is_digest(d))
        mounts = {store._mount_record_path(m.mountpoint).name for m in [*store.mounts(), *store.dead_mounts()]}
        for entry in os.listdir(store.root / "mounts"):
            if entry not in mounts:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(store.root / "mounts" / entry)
        return held, kept

    def collect_garbage(self) -> list[str]:
        """Remove leftovers (:meth:`reap`), and layers, chains, blobs and state files that no image
        uses (nor, for layers, a live :meth:`Store.hold`).  Returns the diff IDs of the layers removed."""
        store = self.store
        held, kept = self.reap()
        used_layers: set[str] = set()
        used_chains: set[str] = set()
        used_blobs: set[str] = set()
        for image_id in store._image_ids():
            try:
                record = _load_json(store.root / "images" / f"{_hex(image_id)}.json")
                diff_ids = _manifest.diff_ids(store.read_blob(image_id), image_id)
            except (OSError, ValueError, LayerfsError):
                log.warning("store: image record %s is unreadable; removing it", image_id)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(store.root / "images" / f"{_hex(image_id)}.json")
                continue
            used_layers.update(_hex(d) for d in diff_ids)
            used_chains.update(_hex(c) for c in _digest.chain_ids(diff_ids))
            used_blobs.add(_hex(image_id))
            for key in ("manifest", "index"):
                value = record.get(key)
                if isinstance(value, str) and _digest.is_digest(value):
                    used_blobs.add(_hex(value))
        repos = store._repositories()
        live = set(store._image_ids())
        if any(i not in live for m in repos.values() for i in m.values()):
            # references to an image whose removal was cut short (see remove)
            with contextlib.suppress(OSError):
                self._write_repositories({r: {k: i for k, i in m.items() if i in live} for r, m in repos.items()})
        for hexpart in kept & used_layers:  # an image lists it now: the mark is not needed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.tmp_dir / f"{RESUME_LAYER}{hexpart}")
        removed = []
        for entry in sorted(os.listdir(store.root / "layers")):
            if entry not in used_layers and entry not in held and entry not in kept:
                store._remove_tree(store.root / "layers" / entry)
                removed.append(f"sha256:{entry}")
        for entry in os.listdir(store.root / "chains"):
            if entry.removesuffix(".json") not in used_chains:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(store.root / "chains" / entry)
        blob_dir = store.root / "blobs" / "sha256"
        for entry in os.listdir(blob_dir):
            if entry not in used_blobs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(blob_dir / entry)
        for state in os.listdir(store.root / "state"):
            for entry in os.listdir(store.root / "state" / state):
                if entry[:64] not in used_chains and entry[:64] not in used_blobs:  # a chain, or an image ID
                    store._remove_tree(store.root / "state" / state / entry)
        return removed

    def roll_back(self) -> None:
        """Undo what this writer added (called when the ``with`` block raised)."""
        store = self.store
        for image_id in self._added_images:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.root / "images" / f"{_hex(image_id)}.json")
        repos = store._repositories()
        if any(i in self._added_images for m in repos.values() for i in m.values()):
            self._write_repositories({r: {k: i for k, i in m.items() if i not in self._added_images}
                                      for r, m in repos.items()})
        self.collect_garbage()
