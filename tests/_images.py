"""Small test images, built offline in seconds, covering every edge a layer can hold.

API (every builder takes a fresh work dir and returns plain data; nothing here touches layerfs)::

    img = build_busybox(work)          # BuiltImage: 1 layer, busybox + applets + passwd/group
    img = build_edge(work)             # BuiltImage: 4 layers, every edge (listed below)
    img = build_second(edge, work)     # BuiltImage: edge's base layer + 1 tiny layer (shared base)
    copies = build_copies(edge, work)  # Copies: oci-archive, docker-archive, zstd and v2s2 copies
    bad = build_hostile(kind, work, outside=dir)   # Hostile: a broken or malicious layout

    img.layout, img.tag, img.source ("oci:LAYOUT:TAG", what `layerfs load` takes)
    img.config_digest (= image ID), img.manifest_digest, img.diff_ids, img.layer_digests

Session caching: the builders are plain functions; ``cached(name, factory, builder, ...)`` runs a
builder once per test session in ``factory.mktemp(name)``.  The pytest fixtures at the bottom
(``busybox_image``, ``edge_image``, ``second_image``, ``edge_copies``, and the edge image's
oracles ``edge_rootfs`` = umoci unpack, ``edge_tar_layers`` = GNU tar layer dirs, base first) do
that; import the ones you use into your test module (``from _images import edge_image  # noqa: F401``).

The edge image (``edge_image``, tag ``edge``), layer by layer:

1. base (``umoci repack``): ``/bin/busybox`` (static) + applet symlinks, ``/etc/passwd``,
   ``/etc/group``; in ``/edge``: ``setuid`` (4755), ``cap`` (``security.capability``
   cap_net_bind_service=ep), ``xattr`` (``user.test``, ``user.binary`` with non-UTF-8 bytes),
   ``chr`` (c 1 3), ``blk`` (b 7 0), ``fifo``, ``sparse`` (64 MiB, 6 bytes in the middle),
   ``hl1``/``hl2`` (hard links), ``long/<255-byte name>``, ``deep/...`` (a path over 300 bytes),
   ``caf\\xe9`` (non-UTF-8 name), ``uid3000000`` (owner 3000000:3000000), ``old`` and ``oldlink``
   (mtime 2001), ``emptydir``; and what later layers change: ``del/{file,dir/...,link}``,
   ``meta/{chmod,chown}``, ``type/{f2d,d2f/child,l2f,f2l}``, ``recreate/{old,sub/x}``,
   ``hlbreak/{a,b}`` (linked), ``opq/{a,b,sub/c}``, ``opq2/{x,y}``;
2. ``umoci repack``: whiteouts of a file, a dir with children, a symlink (umoci writes them after
   siblings); chmod 0600 / chown 1234:5678 (metadata only); type changes file->dir, dir->file,
   symlink->file, file->symlink; ``recreate`` deleted; ``hlbreak/a`` replaced by a new file (the
   link is broken, ``b`` keeps the old content); ``opq/l2file`` added;
3. ``umoci repack``: ``recreate/`` made again with other content; ``/etc/passwd`` content changed;
4. a hand-made GNU tar (pax, xattrs, sorted by hand, fixed mtimes) added with ``umoci raw
   add-layer``: ``./`` (root), ``./opq/`` with ``./opq/.wh..wh..opq`` *before* its new child
   ``./opq/new``; ``opq2/`` with its new child ``opq2/z`` *before* ``opq2/.wh..wh..opq`` (no ``./``
   prefix); ``mixed/file`` (no ``./``); ``edge/.wh.old`` (a whiteout in a dir the layer does not
   otherwise carry).

umoci's quirks (docs/testing.rst "Tool quirks"): it omits ``mediaType`` in manifests, writes
whiteouts after siblings and never writes ``.wh..wh..opq``: hence layer 4.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from _oracles import JSON, blob_path, manifest_descriptor, read_image, run, skopeo_copy, tar_layer_dirs, umoci_unpack

#: mtime used for everything whose time is fixed (2001-09-09T01:46:40Z).
OLD_MTIME = 1_000_000_000
#: mtime of the hand-made layer's entries (2020-09-13T12:26:40Z).
LAYER4_MTIME = 1_600_000_000

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "echo", "true", "stat")

#: Paths (relative to the image root) a test can rely on in the edge image's merged view.
LONG_NAME = "n" * 255
DEEP_PATH = "edge/deep/" + "/".join(["d" * 100, "e" * 100, "f" * 60])
NON_UTF8_NAME = os.fsdecode(b"caf\xe9")


@dataclass(frozen=True)
class BuiltImage:
    """An image in an OCI layout, with what the layout says about it (read back, not assumed)."""

    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    diff_ids: tuple[str, ...]
    layer_digests: tuple[str, ...]
    layer_media_types: tuple[str, ...]

    @property
    def image_id(self) -> str:
        """The image ID docker would show: the config digest."""
        return self.config_digest

    @property
    def source(self) -> str:
        """The ``layerfs load`` / skopeo argument: ``oci:LAYOUT:TAG``."""
        return f"oci:{self.layout}:{self.tag}"

    def manifest(self) -> JSON:
        """The manifest, parsed."""
        return read_image(self.layout, self.tag)[0]

    def config(self) -> JSON:
        """The config, parsed."""
        return read_image(self.layout, self.tag)[1]


def describe_layout(layout: Path, tag: str) -> BuiltImage:
    """Read ``layout:tag`` back into a :class:`BuiltImage`."""
    desc = manifest_descriptor(layout, tag)
    manifest, config = read_image(layout, tag)
    return BuiltImage(
        layout=Path(layout), tag=tag, manifest_digest=desc["digest"],
        config_digest=manifest["config"]["digest"],
        diff_ids=tuple(config["rootfs"]["diff_ids"]),
        layer_digests=tuple(layer["digest"] for layer in manifest["layers"]),
        layer_media_types=tuple(layer["mediaType"] for layer in manifest["layers"]))


# ---------------------------------------------------------------------------------------------
# Building blocks

@contextlib.contextmanager
def fixed_umask(mask: int = 0o022) -> Iterator[None]:
    """Run the body under ``mask`` (the builders create files with Python and tools: the image
    content must not depend on the runner's umask)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])


def _umask_022(fn: F) -> F:
    """Decorator: run a builder under umask 022."""
    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        with fixed_umask():
            return fn(*args, **kwargs)
    return cast(F, wrapper)


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def _fill_busybox(rootfs: Path) -> None:
    """busybox + applet symlinks + passwd/group: the base every image here starts from."""
    (rootfs / "bin").mkdir(mode=0o755)
    shutil.copyfile(BUSYBOX, rootfs / "bin" / "busybox")
    os.chmod(rootfs / "bin" / "busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc").mkdir(mode=0o755)
    _write(rootfs / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    _write(rootfs / "etc" / "group", "root:x:0:\nnogroup:x:65534:\n")


def _umoci_start(work: Path, tag: str) -> tuple[Path, Path]:
    """``umoci init`` + ``new`` + ``unpack``: an empty image and its bundle; returns (layout, rootfs)."""
    layout, bundle = work / "layout", work / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:{tag}")
    run("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
    return layout, bundle / "rootfs"


def _umoci_repack(layout: Path, tag: str, rootfs: Path, created_by: str) -> None:
    run("umoci", "repack", "--refresh-bundle", "--history.created_by", created_by,
        "--image", f"{layout}:{tag}", rootfs.parent)


def _umoci_finish(layout: Path, tag: str, work: Path) -> None:
    """Drop the bundle and unreferenced blobs."""
    shutil.rmtree(work / "bundle")
    run("umoci", "gc", "--layout", layout)


# ---------------------------------------------------------------------------------------------
# The images

@_umask_022
def build_busybox(work: Path, tag: str = "latest") -> BuiltImage:
    """A minimal one-layer image: busybox, its applet symlinks, /etc/passwd, /etc/group; CMD sh."""
    layout, rootfs = _umoci_start(work, tag)
    _fill_busybox(rootfs)
    _umoci_repack(layout, tag, rootfs, "busybox")
    run("umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", "/bin/sh")
    _umoci_finish(layout, tag, work)
    return describe_layout(layout, tag)


def _layer1(root: Path) -> None:
    _fill_busybox(root)
    edge = root / "edge"
    edge.mkdir(mode=0o755)
    _write(edge / "setuid", "setuid\n", 0o4755)
    _write(edge / "cap", "capability\n", 0o755)
    run("setcap", "cap_net_bind_service=ep", edge / "cap")
    _write(edge / "xattr", "xattrs\n")
    os.setxattr(edge / "xattr", "user.test", b"value")
    os.setxattr(edge / "xattr", "user.binary", b"\xff\x00\xfe")
    os.mknod(edge / "chr", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(edge / "blk", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mkfifo(edge / "fifo", 0o640)
    for name, mode in (("chr", 0o666), ("blk", 0o660), ("fifo", 0o640)):
        os.chmod(edge / name, mode)  # mknod/mkfifo apply the umask
    with open(edge / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
    _write(edge / "hl1", "hard link\n")
    os.link(edge / "hl1", edge / "hl2")
    _write(edge / "long" / LONG_NAME, "long name\n")
    _write(root / DEEP_PATH, "deep path\n")
    _write(edge / NON_UTF8_NAME, "non-utf-8 name\n")
    _write(edge / "uid3000000", "high uid\n")
    os.chown(edge / "uid3000000", 3_000_000, 3_000_000)
    _write(edge / "old", "old mtime\n")
    os.symlink("old", edge / "oldlink")
    os.utime(edge / "old", (OLD_MTIME, OLD_MTIME))
    os.utime(edge / "oldlink", (OLD_MTIME, OLD_MTIME), follow_symlinks=False)
    (edge / "emptydir").mkdir(mode=0o711)
    # What later layers change.
    _write(root / "del" / "file", "to be deleted\n")
    _write(root / "del" / "dir" / "a", "a\n")
    _write(root / "del" / "dir" / "b" / "c", "c\n")
    os.symlink("file", root / "del" / "link")
    _write(root / "del" / "keep", "kept\n")
    _write(root / "meta" / "chmod", "chmod me\n")
    _write(root / "meta" / "chown", "chown me\n")
    _write(root / "type" / "f2d", "file, becomes a dir\n")
    _write(root / "type" / "d2f" / "child", "child of a dir that becomes a file\n")
    os.symlink("../etc/passwd", root / "type" / "l2f")
    _write(root / "type" / "f2l", "file, becomes a symlink\n")
    _write(root / "recreate" / "old", "old content\n")
    _write(root / "recreate" / "sub" / "x", "x\n")
    _write(root / "hlbreak" / "a", "linked\n")
    os.link(root / "hlbreak" / "a", root / "hlbreak" / "b")
    _write(root / "opq" / "a", "lower a\n")
    _write(root / "opq" / "b", "lower b\n")
    _write(root / "opq" / "sub" / "c", "lower c\n")
    _write(root / "opq2" / "x", "lower x\n")
    _write(root / "opq2" / "y", "lower y\n")


def _layer2(root: Path) -> None:
    os.unlink(root / "del" / "file")
    shutil.rmtree(root / "del" / "dir")
    os.unlink(root / "del" / "link")
    os.chmod(root / "meta" / "chmod", 0o600)
    os.chown(root / "meta" / "chown", 1234, 5678)
    os.unlink(root / "type" / "f2d")
    _write(root / "type" / "f2d" / "inside", "now a dir\n")
    shutil.rmtree(root / "type" / "d2f")
    _write(root / "type" / "d2f", "now a file\n")
    os.unlink(root / "type" / "l2f")
    _write(root / "type" / "l2f", "now a file, was a symlink\n")
    os.unlink(root / "type" / "f2l")
    os.symlink("../etc/group", root / "type" / "f2l")
    shutil.rmtree(root / "recreate")
    os.unlink(root / "hlbreak" / "a")
    _write(root / "hlbreak" / "a", "replaced, no longer linked\n")
    _write(root / "opq" / "l2file", "layer 2 file in opq\n")


def _layer3(root: Path) -> None:
    _write(root / "recreate" / "new", "recreated with other content\n", 0o600)
    with open(root / "etc" / "passwd", "a") as f:
        f.write("edge:x:1000:1000::/home/edge:/bin/sh\n")


def _layer4_tar(work: Path) -> Path:
    """The hand-made layer (see the module docstring), as an uncompressed tar file."""
    src = work / "layer4"
    src.mkdir(mode=0o755)
    os.chmod(src, 0o755)
    _write(src / "opq" / ".wh..wh..opq", "")
    _write(src / "opq" / "new", "new in opaque dir\n")
    os.chmod(src / "opq", 0o750)
    _write(src / "opq2" / "z", "new in opaque dir 2\n")
    _write(src / "opq2" / ".wh..wh..opq", "")
    _write(src / "mixed" / "file", "mixed naming\n")
    _write(src / "edge" / ".wh.old", "")
    os.chmod(src / "edge" / ".wh.old", 0)
    order = ["./", "./opq", "./opq/.wh..wh..opq", "./opq/new", "opq2", "opq2/z", "opq2/.wh..wh..opq",
             "mixed/file", "edge/.wh.old"]
    for name in order + ["edge", "mixed"]:
        os.utime(src / name, (LAYER4_MTIME, LAYER4_MTIME), follow_symlinks=False)
    tar = work / "layer4.tar"
    run("tar", "--format=pax", "--xattrs", "--sparse", "--numeric-owner", "--no-recursion",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "-C", src, "-cf", tar, *order)
    return tar


@_umask_022
def build_edge(work: Path, tag: str = "edge") -> BuiltImage:
    """The edge image (module docstring): 4 layers, gzip, every case the unpacker must handle."""
    layout, rootfs = _umoci_start(work, tag)
    _layer1(rootfs)
    _umoci_repack(layout, tag, rootfs, "edge layer 1: base")
    _layer2(rootfs)
    _umoci_repack(layout, tag, rootfs, "edge layer 2: whiteouts, metadata, type changes")
    _layer3(rootfs)
    _umoci_repack(layout, tag, rootfs, "edge layer 3: recreate")
    run("umoci", "raw", "add-layer", "--history.created_by", "edge layer 4: opaque dirs (hand-made tar)",
        "--image", f"{layout}:{tag}", _layer4_tar(work))
    run("umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", "/bin/sh")
    _umoci_finish(layout, tag, work)
    return describe_layout(layout, tag)


# ---------------------------------------------------------------------------------------------
# Layouts written directly (for shared layers and hostile content)

def gzip_bytes(data: bytes) -> bytes:
    """gzip ``data`` reproducibly (mtime 0)."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TarEntry:
    """One entry of a tar made in Python (:func:`tar_bytes`).

    ``name`` and ``linkname`` are str; non-UTF-8 bytes are surrogate escapes (``os.fsdecode``).
    ``mtime`` is whole seconds, or a decimal string such as ``"1500000000.123456789"`` (written as
    a PAX record, exact to the nanosecond).  ``xattrs`` become ``SCHILY.xattr.*`` records.
    """

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int | str = LAYER4_MTIME
    dev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()


def tar_bytes(entries: Sequence[TarEntry]) -> bytes:
    """A PAX tar of ``entries``, in order, names taken verbatim (``../x`` stays ``../x``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            pax = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in e.xattrs}
            if isinstance(e.mtime, str):
                info.mtime = int(e.mtime.partition(".")[0])
                pax["mtime"] = e.mtime
            else:
                info.mtime = e.mtime
            info.pax_headers = pax
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.dev
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(e.data) if e.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = sha256(data)
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def write_layout(layout: Path, tag: str, layers: Sequence[tuple[bytes, str]], *,
                 config: JSON | None = None, layer_media_type: str = MEDIA_LAYER_GZIP) -> BuiltImage:
    """Write (or add to) an OCI layout holding one image.

    Args:
        layout: the layout dir (created if missing; an existing ``index.json`` is extended).
        tag: its ``org.opencontainers.image.ref.name``.
        layers: ``(blob bytes, diff_id)`` per layer, base first; the diff_id is written as given
            (pass a wrong one to make a hostile image).
        config: the config to start from (``rootfs`` and ``history`` are replaced); default a
            minimal linux/amd64 config.
        layer_media_type: the media type of every layer descriptor.

    Returns:
        The image, read back from the layout.
    """
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    cfg: dict[str, Any] = dict(config or {"architecture": "amd64", "os": "linux",
                                          "created": "2020-09-13T12:26:40Z",
                                          "config": {"Cmd": ["/bin/sh"]}})
    cfg["rootfs"] = {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]}
    cfg["history"] = [{"created": "2020-09-13T12:26:40Z", "created_by": f"layer {i}"}
                      for i in range(len(layers))]
    config_digest, config_size = _put_blob(layout, json.dumps(cfg, sort_keys=True).encode())
    layer_descs = []
    for blob, _ in layers:
        digest, size = _put_blob(layout, blob)
        layer_descs.append({"mediaType": layer_media_type, "digest": digest, "size": size})
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
                "layers": layer_descs}
    manifest_digest, manifest_size = _put_blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index_path = layout / "index.json"
    index: dict[str, Any] = (json.loads(index_path.read_text()) if index_path.exists()
                             else {"schemaVersion": 2, "manifests": []})
    index["manifests"] = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append({"mediaType": MEDIA_MANIFEST, "digest": manifest_digest,
                               "size": manifest_size, "annotations": {REF_NAME: tag}})
    index_path.write_text(json.dumps(index))
    return describe_layout(layout, tag)


@_umask_022
def build_second(edge: BuiltImage, work: Path, tag: str = "second") -> BuiltImage:
    """An image sharing ``edge``'s base layer blob (same digest and diff_id), plus one tiny layer."""
    layout = work / "layout"
    base_blob = blob_path(edge.layout, edge.layer_digests[0]).read_bytes()
    tiny = tar_bytes([TarEntry("etc/", tarfile.DIRTYPE, mode=0o755),
                      TarEntry("etc/second-release", data=b"second image\n")])
    return write_layout(layout, tag, [(base_blob, edge.diff_ids[0]), (gzip_bytes(tiny), sha256(tiny))],
                        config={k: v for k, v in edge.config().items() if k not in ("rootfs", "history")})


# ---------------------------------------------------------------------------------------------
# Copies of one image in every format `layerfs load` must accept

@dataclass(frozen=True)
class Copy:
    """One copy of an image: ``source`` is what ``layerfs load`` (and skopeo) take."""

    name: str
    source: str
    #: The layout when the copy is a layout dir (None for archives).
    image: BuiltImage | None


@dataclass(frozen=True)
class Copies:
    """The same image as an OCI dir (gzip), oci-archive, docker-archive, zstd dir and v2s2 dir."""

    oci: Copy
    oci_archive: Copy
    docker_archive: Copy
    zstd: Copy
    v2s2: Copy

    def all(self) -> list[Copy]:
        """Every copy, the original first."""
        return [self.oci, self.oci_archive, self.docker_archive, self.zstd, self.v2s2]


@_umask_022
def build_copies(img: BuiltImage, work: Path, repo: str = "layerfs-test/edge") -> Copies:
    """Make the copies with skopeo (docs/testing.rst "Images").  All share config digest and
    diff_ids; the zstd and v2s2 copies have other layer and manifest digests."""
    work.mkdir(parents=True, exist_ok=True)
    tag = img.tag
    oci_archive = work / "edge.oci.tar"
    skopeo_copy(img.source, f"oci-archive:{oci_archive}:{tag}")
    docker_archive = work / "edge.docker.tar"
    skopeo_copy(img.source, f"docker-archive:{docker_archive}:{repo}:{tag}", "--format", "v2s2")
    zstd = work / "zstd"
    skopeo_copy(img.source, f"oci:{zstd}:{tag}", "--dest-compress", "--dest-compress-format", "zstd")
    v2s2 = work / "v2s2"
    skopeo_copy(img.source, f"oci:{v2s2}:{tag}", "--format", "v2s2")
    zstd_img, v2s2_img = describe_layout(zstd, tag), describe_layout(v2s2, tag)
    return Copies(
        oci=Copy("oci", img.source, img),
        oci_archive=Copy("oci-archive", f"oci-archive:{oci_archive}:{tag}", None),
        docker_archive=Copy("docker-archive", f"docker-archive:{docker_archive}", None),
        zstd=Copy("zstd", zstd_img.source, zstd_img),
        v2s2=Copy("v2s2", v2s2_img.source, v2s2_img))


# ---------------------------------------------------------------------------------------------
# Hostile layouts

#: The kinds :func:`build_hostile` makes.
HOSTILE_KINDS = ("bad-diff-id", "corrupt-blob", "dotdot", "absolute-dotdot", "symlink-escape",
                 "hardlink-escape")


@dataclass(frozen=True)
class Hostile:
    """A layout that must not load.  ``names``: the error line must contain one of these."""

    kind: str
    image: BuiltImage
    names: tuple[str, ...]
    #: Whether the content tries to leave the layer dir (then nothing outside may change).
    escapes: bool


@_umask_022
def build_hostile(kind: str, work: Path, *, outside: Path) -> Hostile:
    """Build the hostile layout ``kind`` (one of :data:`HOSTILE_KINDS`) in ``work``.

    Everything but the hostile part is consistent (digests, sizes, diff_ids match), so a loader
    can only fail for the intended reason:

    - ``bad-diff-id``: a valid layer whose config diff_id is another sha256;
    - ``corrupt-blob``: a layer blob whose bytes were changed after hashing (name kept);
    - ``dotdot``: an entry ``../escape`` (and ``ok`` before it);
    - ``absolute-dotdot``: an entry ``/../../<outside>/escape``;
    - ``symlink-escape``: a symlink ``evil`` -> ``outside`` (absolute), then a file ``evil/pwned``;
    - ``hardlink-escape``: a hard link ``stolen`` to ``../../../../etc/hostname``.

    Args:
        kind: which one.
        work: an empty dir to build in.
        outside: an absolute dir outside any store, which the hostile content aims at.
    """
    layout = work / "layout"
    ok = TarEntry("ok", data=b"fine\n")
    payload = b"escaped!\n"
    if kind in ("bad-diff-id", "corrupt-blob"):
        tar = tar_bytes([TarEntry("etc/", tarfile.DIRTYPE, mode=0o755), TarEntry("etc/hostile", data=b"x\n")])
        blob = gzip_bytes(tar)
        diff_id = sha256(tar)
        if kind == "bad-diff-id":
            wrong = sha256(b"not the layer")
            img = write_layout(layout, kind, [(blob, wrong)])
            return Hostile(kind, img, (wrong, diff_id, img.layer_digests[0]), escapes=False)
        img = write_layout(layout, kind, [(blob, diff_id)])
        path = blob_path(layout, img.layer_digests[0])
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
        path.write_bytes(bytes(data))
        return Hostile(kind, img, (img.layer_digests[0],), escapes=False)
    if kind == "dotdot":
        entries = [ok, TarEntry("../escape", data=payload)]
        names: tuple[str, ...] = ("../escape",)
    elif kind == "absolute-dotdot":
        name = "/../../../../../../.." + os.fspath(outside) + "/escape"
        entries = [ok, TarEntry(name, data=payload)]
        names = (name, name.lstrip("/"), "escape")
    elif kind == "symlink-escape":
        entries = [ok, TarEntry("evil", tarfile.SYMTYPE, linkname=os.fspath(outside)),
                   TarEntry("evil/pwned", data=payload)]
        names = ("evil/pwned", "evil")
    elif kind == "hardlink-escape":
        entries = [ok, TarEntry("stolen", tarfile.LNKTYPE, linkname="../../../../etc/hostname")]
        names = ("stolen", "../../../../etc/hostname")
    else:
        raise ValueError(f"unknown hostile kind {kind!r}")
    tar = tar_bytes(entries)
    img = write_layout(layout, kind, [(gzip_bytes(tar), sha256(tar))])
    return Hostile(kind, img, names, escapes=True)


# ---------------------------------------------------------------------------------------------
# Every type replacing every other type (the unpacker's type changes)

#: The kinds of entry that can replace one another at a path.
REPLACE_KINDS = ("file", "dir", "symlink", "hardlink", "fifo", "device", "whiteout")


@dataclass(frozen=True)
class Replacement:
    """One case of :func:`replacement_layers`: ``old`` then ``new`` at ``path``."""

    old: str
    new: str
    #: "across" (old in one layer, new in the next) or "within" (both in one layer)
    how: str
    #: what lies below before: "dir" (a dir with a child ``base``) or "nothing"
    below: str
    path: str


def _replace_entries(kind: str, path: str, tag: str) -> list[TarEntry]:
    """The entries that put ``kind`` at ``path`` (a hard link gets its target beside it)."""
    parent, _, name = path.rpartition("/")
    at = (parent + "/" if parent else "")
    if kind == "file":
        return [TarEntry(path, data=f"{tag} file\n".encode(), mode=0o640, mtime=OLD_MTIME)]
    if kind == "dir":
        return [TarEntry(path + "/", tarfile.DIRTYPE, mode=0o750, mtime=OLD_MTIME),
                TarEntry(f"{path}/{tag}-child", data=b"child\n", mtime=OLD_MTIME)]
    if kind == "symlink":
        return [TarEntry(path, tarfile.SYMTYPE, linkname=f"{tag}-target", mode=0o777, mtime=OLD_MTIME)]
    if kind == "hardlink":
        target = f"{at}{name}.{tag}-link"
        return [TarEntry(target, data=f"{tag} linked\n".encode(), mtime=OLD_MTIME),
                TarEntry(path, tarfile.LNKTYPE, linkname=target, mtime=OLD_MTIME)]
    if kind == "fifo":
        return [TarEntry(path, tarfile.FIFOTYPE, mode=0o600, mtime=OLD_MTIME)]
    if kind == "device":
        return [TarEntry(path, tarfile.CHRTYPE, mode=0o666, dev=(1, 3), mtime=OLD_MTIME)]
    if kind == "whiteout":
        return [TarEntry(f"{at}.wh.{name}", mtime=OLD_MTIME)]
    raise ValueError(f"unknown kind {kind!r}")


def replacement_layers(depth: int) -> tuple[list[list[TarEntry]], list[Replacement]]:
    """Three layers holding every pair of :data:`REPLACE_KINDS`, old replaced by new, at ``depth``
    (1: in the root, 2: in ``p/``, 3: in ``p/q/``), across layers and within one, over a lower dir
    with a child and over nothing; each case at its own path (named after it).

    Layer 1 holds the parents and the lower dirs; layer 2 the old entries (and, within a layer,
    the new ones after them); layer 3 the new entries of the cases across layers.  Every layer
    carries the parents as entries, as image builders write them.

    Returns:
        (the layers, base first; the cases).
    """
    parents = ["p", "p/q"][:depth - 1]
    prefix = "".join(f"{p.rpartition('/')[2]}/" for p in parents)
    dirs = [TarEntry(p + "/", tarfile.DIRTYPE, mode=0o755, mtime=OLD_MTIME) for p in parents]
    base, middle, top = list(dirs), list(dirs), list(dirs)
    cases = []
    for old in REPLACE_KINDS:
        for new in REPLACE_KINDS:
            for how in ("across", "within"):
                for below in ("dir", "nothing"):
                    path = f"{prefix}{old}-{new}-{how}-{below}"
                    cases.append(Replacement(old, new, how, below, path))
                    if below == "dir":
                        base += [TarEntry(path + "/", tarfile.DIRTYPE, mode=0o700, mtime=OLD_MTIME),
                                 TarEntry(path + "/base", data=b"base\n", mtime=OLD_MTIME)]
                    middle += _replace_entries(old, path, "old")
                    (middle if how == "within" else top).extend(_replace_entries(new, path, "new"))
    return [base, middle, top], cases


# ---------------------------------------------------------------------------------------------
# Session caching and fixtures

_CACHE: dict[str, object] = {}


def cached(name: str, factory: pytest.TempPathFactory, builder: Callable[..., T], *args: object) -> T:
    """Run ``builder(*args, factory.mktemp(name))`` once per session, under umask 022, and
    return its result."""
    if name not in _CACHE:
        with fixed_umask():
            _CACHE[name] = builder(*args, factory.mktemp(name))
    return cast(T, _CACHE[name])


def _require_build_tools(*extra: str) -> None:
    from conftest import require, require_root, require_tool

    require_root()
    require_tool("umoci", "tar", *extra)
    require(BUSYBOX.exists(), "busybox-static (/bin/busybox)")


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The minimal busybox image, built once per session (needs root and umoci)."""
    _require_build_tools()
    return cached("busybox-image", tmp_path_factory, build_busybox)


@pytest.fixture(scope="session")
def edge_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The edge image (module docstring), built once per session (needs root, umoci, setcap)."""
    _require_build_tools("setcap")
    return cached("edge-image", tmp_path_factory, build_edge)


@pytest.fixture(scope="session")
def second_image(edge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """An image sharing the edge image's base layer."""
    return cached("second-image", tmp_path_factory, build_second, edge_image)


@pytest.fixture(scope="session")
def edge_copies(edge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Copies:
    """The edge image as oci dir, oci-archive, docker-archive, zstd and v2s2 (needs skopeo)."""
    from conftest import require_tool

    require_tool("skopeo")
    return cached("edge-copies", tmp_path_factory, build_copies, edge_image)


@pytest.fixture(scope="session")
def edge_rootfs(edge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``umoci unpack`` of the edge image: the flattened oracle (session-wide; never write to it)."""
    return cached("edge-umoci", tmp_path_factory,
                  lambda work: umoci_unpack(edge_image.layout, edge_image.tag, work / "bundle"))


@pytest.fixture(scope="session")
def edge_tar_layers(edge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The GNU tar per-layer dirs of the edge image, base first (session-wide; never write to them)."""
    return cached("edge-tar-layers", tmp_path_factory,
                  lambda work: tar_layer_dirs(edge_image.layout, edge_image.tag, work / "layers"))
