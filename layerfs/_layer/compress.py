"""Decompressing readers over layer blobs: gzip, zstd or plain, by media type and magic bytes.

The compression is sniffed from the first bytes, as containerd and docker do
(docs/oci.rst "Media types and compression"): gzip ``1f 8b``, zstd ``28 b5 2f fd`` (a zstd stream
may also open with skippable frames, ``5? 2a 4d 18``), anything else is a plain tar, and a 0-byte
blob is an empty layer.  A media type that says otherwise is logged and the magic wins.  A media
type that is not a layer (an OCI 1.1 artifact, an encrypted layer) is refused.

Implementations, chosen by measurement (``scripts/bench-unpack --codecs``; 915 MB tar of /usr,
gzip -6, inflate only): ``isal.igzip`` 770 MB/s (``isal.igzip_threaded`` 796), ``zlib_ng.gzip_ng``
710, stdlib ``gzip`` (zlib) 229.  All of them read multi-member gzip.  The readers here are
single-threaded and release the GIL while inflating: the unpacker runs them in its own worker
thread, together with both hashes.  zstd uses ``zstandard`` (multi-frame via
``read_across_frames``; libzstd skips skippable frames).
"""

from __future__ import annotations

import enum
import gzip
import logging
from typing import Protocol

import isal.igzip
import isal.isal_zlib
import zstandard

from .._errors import BadArchive
from .._oci.digest import Readable

log = logging.getLogger(__name__)

#: Bytes read at once from the compressed stream and handed out by the decompressors.
BLOCK_SIZE = 1 << 20


class Compression(enum.Enum):
    """How a layer blob is compressed."""

    PLAIN = "plain"
    GZIP = "gzip"
    ZSTD = "zstd"


#: Layer media types (docs/oci.rst "Media types and compression") and the compression each announces.
LAYER_MEDIA_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": Compression.PLAIN,
    "application/vnd.oci.image.layer.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.PLAIN,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.PLAIN,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.foreign.diff.tar": Compression.PLAIN,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}

_GZIP_MAGIC = b"\x1f\x8b"
#: What corrupt or truncated gzip raises (errors of the raw stream itself pass through).
_GZIP_ERRORS: tuple[type[Exception], ...] = (
    gzip.BadGzipFile, EOFError, isal.isal_zlib.error)  # type: ignore[assignment]  # isal's stub calls it an instance
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Reader(Protocol):
    """What :func:`open_decompressed` returns."""

    def read(self, n: int = -1, /) -> bytes: ...

    def readinto(self, buffer: bytearray | memoryview, /) -> int: ...

    def close(self) -> None: ...


def compression_of(media_type: str | None) -> Compression | None:
    """The compression a layer media type announces; None when no media type is given.

    Raises:
        BadArchive: ``media_type`` is not a layer media type (an artifact, an encrypted layer).
    """
    if media_type is None:
        return None
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise BadArchive(f"media type {media_type!r} is not a layer layerfs can unpack") from None


def sniff(head: bytes) -> Compression:
    """The compression of a blob whose first (up to 4) bytes are ``head``."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC) or _is_skippable_frame(head):
        return Compression.ZSTD
    return Compression.PLAIN


def _is_skippable_frame(head: bytes) -> bool:
    """zstd skippable frames: magic 0x184D2A50..0x184D2A5F, little endian."""
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50


class _Prefixed:
    """A reader that first returns ``head``, then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: Readable) -> None:
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._raw.read(n)

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


class _ZstdReader:
    """``zstandard`` stream reader across frames, with ``readinto`` and errors as BadArchive.

    ``zstandard`` reports a stream cut inside a frame as a clean EOF; the cut is caught anyway
    by the checks above it (blob digest and size, tar structure, diff_id).
    """

    def __init__(self, raw: Readable) -> None:
        dctx = zstandard.ZstdDecompressor()
        self._reader = dctx.stream_reader(raw, read_size=BLOCK_SIZE,  # type: ignore[arg-type]  # any read()
                                          read_across_frames=True, closefd=False)

    def read(self, n: int = -1, /) -> bytes:
        try:
            data: bytes = self._reader.read(n)
        except zstandard.ZstdError as err:
            raise BadArchive(f"zstd: {err}") from None
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        try:
            count: int = self._reader.readinto(buffer)
        except zstandard.ZstdError as err:
            raise BadArchive(f"zstd: {err}") from None
        return count

    def close(self) -> None:
        self._reader.close()  # type: ignore[no-untyped-call]


def _read_head(raw: Readable, n: int) -> bytes:
    head = b""
    while len(head) < n:
        data = raw.read(n - len(head))
        if not data:
            break
        head += data
    return head


def open_decompressed(raw: Readable, *, media_type: str | None = None) -> tuple[Reader, Compression]:
    """Open a reader of the decompressed bytes of the layer blob ``raw``.

    Args:
        raw: the blob as it arrives; read forward only, in blocks of up to :data:`BLOCK_SIZE`
            (hashing in ``raw.read`` happens in the caller's thread).
        media_type: the descriptor's media type, if known: checked to be a layer type, and
            compared with the sniffed compression (a mismatch is logged; the magic wins).

    Returns:
        ``(reader, compression)``.  Close the reader when done.
        Reading it raises :class:`BadArchive` for corrupt or truncated compressed data.

    Raises:
        BadArchive: a media type that is not a layer.
    """
    announced = compression_of(media_type)
    head = _read_head(raw, 4)
    actual = sniff(head)
    if announced is not None and announced is not actual and head:
        log.info("layer of media type %s is %s by its magic bytes: unpacking as %s",
                 media_type, actual.value, actual.value)
    source = _Prefixed(head, raw)
    if actual is Compression.GZIP:
        return _GzipReader(source), actual
    if actual is Compression.ZSTD:
        return _ZstdReader(source), actual
    return source, actual


class _GzipReader:
    """``isal.igzip`` reader (multi-member) with errors as BadArchive."""

    def __init__(self, raw: _Prefixed) -> None:
        self._reader = isal.igzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]

    def read(self, n: int = -1, /) -> bytes:
        try:
            data: bytes = self._reader.read(n)
        except _GZIP_ERRORS as err:
            raise BadArchive(f"gzip: {err}") from None
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        try:
            count: int = self._reader.readinto(buffer)
        except _GZIP_ERRORS as err:
            raise BadArchive(f"gzip: {err}") from None
        return count

    def close(self) -> None:
        self._reader.close()
