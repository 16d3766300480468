"""The reference implementations layerfs is compared against: real tools, never re-implementations.

API::

    with kernel_overlay([top, ..., base], mnt) as mnt: ...   # read-only kernel overlay (root)
    with fuse_overlayfs([top, ..., base], mnt) as mnt: ...   # read-only fuse-overlayfs (/dev/fuse)
    rootfs = umoci_unpack(layout, tag, dest)                  # flattened, spec-following tree
    layer_dirs = tar_layer_dirs(layout, tag, dest)            # per-layer overlay-form dirs, base first
    skopeo_copy("oci:L:t", "oci-archive:F:t", "--format", "v2s2")
    manifest, config = read_image(layout, tag)                # the JSON documents of a layout image

Layer lists for mounts are **topmost first**, like overlay's ``lowerdir=``; lists returned by
:func:`tar_layer_dirs` are **base first**, like ``manifest.layers`` and ``Store.layer_dirs()``:
reverse them for a mount (``kernel_overlay(dirs[::-1], mnt)``).

How the oracles are made (docs/testing.rst "Oracles"; docs/peers.rst "The bench image"):

- :func:`tar_layer_dirs`: each layer blob (gzip, zstd or plain, sniffed by magic) is extracted by
  GNU tar (``--xattrs --xattrs-include=* --numeric-owner --same-permissions``; the include pattern is
  needed, GNU tar otherwise restores ``user.*`` only) into its own empty dir, then OCI markers are
  converted the containerd/moby way (docs/oci.rst "Overlay form"): ``.wh.X`` -> char device 0/0
  ``X`` with mode 0000, owned by the marker's uid/gid (if the layer has its own ``X``: kept, and
  made opaque if it is a dir, as the spec's "removes X from lower layers" requires);
  ``.wh..wh..opq`` -> ``trusted.overlay.opaque=y`` on its dir; markers removed; other ``.wh..wh.*``
  names (AUFS metadata) dropped.  This is the form layerfs's unpacker
  must produce, so a layer dir from the store must equal this one (compare with
  ``snapshot(..., overlay_xattrs=True)``).
- :func:`umoci_unpack`: ``umoci unpack`` flattens the image the way the spec says (gzip only: umoci
  0.4.7 has no zstd).
- :func:`kernel_overlay`: the kernel refuses a read-only overlay with a single lower dir and no
  upper ("at least 2 lowerdir are needed"), so an empty directory is added as the bottom layer; it
  changes nothing in the view (the root's attributes come from the topmost layer).  ``:`` in a path
  is escaped as ``\\:``; a path holding ``,`` cannot be passed through mount(8) options and raises
  ValueError (pytest's tmp paths never hold one).

Every mount helper unmounts in ``finally`` (``umount``, then ``umount -l`` as the last resort), even
when the body fails.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

#: Compression magics (docs/oci.rst "Media types and compression").
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"


def _umask_022() -> None:
    os.umask(0o022)


def run(*argv: str | os.PathLike[str], input: bytes | None = None, timeout: float = 300) -> str:
    """Run a command under umask 022; return its stdout (text).  Raise AssertionError with
    stderr on failure.  (The umask is fixed so that dirs the tools make without being told a mode,
    such as implied parents, do not depend on the test runner's umask.)"""
    args = [os.fspath(a) for a in argv]
    proc = subprocess.run(args, input=input, capture_output=True, timeout=timeout, preexec_fn=_umask_022)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="surrogateescape")


# ---------------------------------------------------------------------------------------------
# Reading an OCI layout (index.json -> manifest -> config), enough for the oracles and the tests.

def blob_path(layout: Path, digest: str) -> Path:
    """The file of blob ``digest`` in an OCI layout."""
    algo, _, hexpart = digest.partition(":")
    return Path(layout) / "blobs" / algo / hexpart


def read_blob_json(layout: Path, digest: str) -> JSON:
    """A JSON blob of a layout, parsed."""
    data: JSON = json.loads(blob_path(layout, digest).read_bytes())
    return data


def manifest_descriptor(layout: Path, tag: str) -> JSON:
    """The descriptor of ``index.json`` whose ``org.opencontainers.image.ref.name`` is ``tag``.

    Raises:
        KeyError: no such tag.
    """
    index = json.loads((Path(layout) / "index.json").read_text())
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            found: JSON = desc
            return found
    raise KeyError(f"{layout}: no tag {tag!r}")


def read_image(layout: Path, tag: str) -> tuple[JSON, JSON]:
    """``(manifest, config)`` of the image tagged ``tag`` in an OCI layout."""
    manifest = read_blob_json(layout, manifest_descriptor(layout, tag)["digest"])
    return manifest, read_blob_json(layout, manifest["config"]["digest"])


def _decompressed(data: bytes) -> bytes:
    if data.startswith(_GZIP_MAGIC):
        return gzip.decompress(data)
    if data.startswith(_ZSTD_MAGIC):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# ---------------------------------------------------------------------------------------------
# Oracle 1: GNU tar, one dir per layer, markers converted to overlay form.

def _convert_markers(layer_dir: Path) -> None:
    """Turn OCI whiteout markers under ``layer_dir`` into overlay form (module docstring)."""
    for dirpath, dirnames, filenames in os.walk(os.fsencode(layer_dir)):
        names = dirnames + filenames
        for name in names:
            if not name.startswith(b".wh."):
                continue
            marker = os.path.join(dirpath, name)
            st = os.lstat(marker)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(marker)
            else:
                os.unlink(marker)
            if name == _OPAQUE_MARKER.encode():
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
            elif name.startswith(b".wh..wh."):
                continue  # AUFS metadata (.wh..wh.plnk, ...): dropped, as moby does
            else:
                target = os.path.join(dirpath, name[len(_WHITEOUT_PREFIX):])
                if os.path.lexists(target):
                    # A whiteout never removes an entry of its own layer
                    # (docs/oci.rst "Whiteout markers"), but it does remove the lower X: a dir X of
                    # this layer must then not merge with it.
                    if os.path.isdir(target) and not os.path.islink(target):
                        os.setxattr(target, "trusted.overlay.opaque", b"y")
                    continue
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        dirnames[:] = [d for d in dirnames if not d.startswith(b".wh.")]


def extract_layer(blob: Path, dest: Path, *, allowed: Callable[[str], bool] = lambda line: False) -> Path:
    """Extract one layer blob (gzip/zstd/plain) with GNU tar into the new dir ``dest``, convert
    markers to overlay form, and return ``dest``.

    GNU tar's errors fail the extraction, except for a marker below a file (see
    :func:`_is_marker_under_file`) and the lines ``allowed`` accepts.
    """
    dest.mkdir(parents=True)
    os.chmod(dest, 0o755)  # a layer without a "./" entry: its root is 0755, like implied parents
    argv = ["tar", "-x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-permissions",
            "--same-owner", "-C", os.fspath(dest), "-f", "-"]
    # umask 022: GNU tar makes implied parent dirs 0777 & ~umask; overlay converters and layerfs
    # make them 0755 (docs/oci.rst "Names, links and parents"), whatever the test runner's umask.
    proc = subprocess.run(argv, input=_decompressed(Path(blob).read_bytes()), capture_output=True,
                          timeout=300, preexec_fn=_umask_022)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
                  if not line.startswith("tar: Exiting with failure status")]
        if not errors or not all(_is_marker_under_file(line) or allowed(line) for line in errors):
            raise AssertionError(f"{' '.join(argv)} < {blob} failed ({proc.returncode}):\n"
                                 + "\n".join(errors))
    _convert_markers(dest)
    return dest


def _is_marker_under_file(tar_error: str) -> bool:
    """True for GNU tar's error on a whiteout marker below a path the same layer made a file.

    umoci writes such layers when a dir becomes a file: ``type/d2f`` (a file), then
    ``type/d2f/.wh.child`` (observed, umoci 0.4.7).  The marker can hide nothing (its parent is
    not a dir in this layer), so the converters' result is the layer without it.
    """
    head, sep, tail = tar_error.rpartition(": Cannot open: Not a directory")
    return bool(sep) and not tail and head.startswith("tar: ") and \
        os.path.basename(head[len("tar: "):]).startswith(_WHITEOUT_PREFIX)


def tar_layer_dirs(layout: Path, tag: str, dest: Path, *,
                   allowed: Callable[[str], bool] = lambda line: False) -> list[Path]:
    """Extract every layer of ``layout:tag`` into ``dest/0``, ``dest/1``, ... (base first).

    Args:
        layout: an OCI image layout dir.
        tag: the ``org.opencontainers.image.ref.name`` of the image.
        dest: a directory to create (its parent must exist).
        allowed: GNU tar error lines to accept (:func:`extract_layer`).

    Returns:
        The layer dirs, base layer first (as ``manifest.layers``).
    """
    manifest, _ = read_image(layout, tag)
    dest.mkdir()
    return [extract_layer(blob_path(layout, layer["digest"]), dest / str(i), allowed=allowed)
            for i, layer in enumerate(manifest["layers"])]


# ---------------------------------------------------------------------------------------------
# Oracle 2: umoci unpack (flattened).

def umoci_unpack(layout: Path, tag: str, dest: Path) -> Path:
    """``umoci unpack --image layout:tag dest`` (a bundle); return ``dest/rootfs``.

    gzip (or plain) layers only: umoci 0.4.7 cannot read zstd.  Run as root so owners are kept.
    """
    run("umoci", "unpack", "--image", f"{layout}:{tag}", dest)
    return dest / "rootfs"


# ---------------------------------------------------------------------------------------------
# Oracles 3 and 4: mounts.

def _escape_lower(path: Path) -> str:
    text = os.fspath(path)
    if "," in text:
        raise ValueError(f"{text!r}: a ',' cannot be passed in mount options")
    return text.replace("\\", "\\\\").replace(":", "\\:")


def unmount(mountpoint: Path) -> None:
    """Unmount ``mountpoint`` if it is mounted: ``umount``, retried, then ``umount -l``."""
    for attempt in range(5):
        if not os.path.ismount(mountpoint):
            return
        if subprocess.run(["umount", os.fspath(mountpoint)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1 * (attempt + 1))
    if os.path.ismount(mountpoint):
        subprocess.run(["umount", "-l", os.fspath(mountpoint)], capture_output=True)


@contextlib.contextmanager
def kernel_overlay(lower_dirs_top_first: Sequence[Path], mountpoint: Path) -> Iterator[Path]:
    """Mount a read-only kernel overlay of the given lower dirs on ``mountpoint`` (made if missing).

    Needs root.  Yields the mountpoint; always unmounts on exit.
    """
    lowers = [Path(d) for d in lower_dirs_top_first]
    if not lowers:
        raise ValueError("kernel_overlay needs at least one lower dir")
    with tempfile.TemporaryDirectory(prefix="layerfs-ovl-empty-") as empty:
        if len(lowers) == 1:
            lowers.append(Path(empty))
        mountpoint.mkdir(parents=True, exist_ok=True)
        options = "ro,lowerdir=" + ":".join(_escape_lower(d) for d in lowers)
        run("mount", "-t", "overlay", "overlay", "-o", options, mountpoint)
        try:
            yield mountpoint
        finally:
            unmount(mountpoint)


@contextlib.contextmanager
def fuse_overlayfs(lower_dirs_top_first: Sequence[Path], mountpoint: Path) -> Iterator[Path]:
    """Mount a read-only fuse-overlayfs of the given lower dirs on ``mountpoint`` (made if missing).

    Needs /dev/fuse (and root to see other owners' files as they are).  Always unmounts on exit.
    """
    if not lower_dirs_top_first:
        raise ValueError("fuse_overlayfs needs at least one lower dir")
    mountpoint.mkdir(parents=True, exist_ok=True)
    lowers = ":".join(_escape_lower(Path(d)) for d in lower_dirs_top_first)
    run("fuse-overlayfs", "-o", f"lowerdir={lowers}", mountpoint)
    try:
        yield mountpoint
    finally:
        for attempt in range(5):
            if not os.path.ismount(mountpoint):
                break
            if subprocess.run(["fusermount3", "-u", os.fspath(mountpoint)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        unmount(mountpoint)


# ---------------------------------------------------------------------------------------------
# skopeo

def skopeo_copy(src: str, dst: str, *extra: str) -> None:
    """``skopeo --insecure-policy copy --quiet EXTRA... SRC DST`` (transports as skopeo spells them:
    ``oci:DIR:TAG``, ``oci-archive:FILE:TAG``, ``docker-archive:FILE:REPO:TAG``, ``docker://...``).
    """
    run("skopeo", "--insecure-policy", "copy", "--quiet", *extra, src, dst)


def skopeo_config_digest(src: str) -> str:
    """The image ID of ``src`` (``sha256:`` of ``skopeo inspect --config --raw``)."""
    raw = subprocess.run(["skopeo", "--insecure-policy", "inspect", "--config", "--raw", src],
                         capture_output=True, check=True, timeout=120).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()
