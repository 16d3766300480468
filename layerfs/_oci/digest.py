"""Digests: parsing, ChainIDs, and hashing blobs while they stream.

Only ``sha256:<64 hex>`` and ``sha512:<128 hex>`` are accepted, so a digest can be used safely as
a file name or in a URL (docs/oci.rst "Digests and identifiers", CVE-2024-3727).
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from .._errors import InvalidReference

_DIGEST_RE = re.compile(r"\A(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")

#: Default algorithm of everything layerfs computes.
ALGORITHM = "sha256"


def is_digest(value: str) -> bool:
    """True if ``value`` is a well-formed sha256/sha512 digest."""
    return _DIGEST_RE.match(value) is not None


def check_digest(value: str) -> str:
    """Return ``value`` if it is a well-formed digest, else raise :class:`InvalidReference`."""
    if not is_digest(value):
        raise InvalidReference(f"invalid digest {value!r}: want sha256:<64 hex>")
    return value


def split(digest: str) -> tuple[str, str]:
    """``"sha256:ab…"`` -> ``("sha256", "ab…")`` after checking the form."""
    algo, _, hexpart = check_digest(digest).partition(":")
    return algo, hexpart


def short(digest: str) -> str:
    """The 12 hex digits docker shows for an image or a layer (``sha256:3f57a1b2…`` -> ``3f57a1b2c3d4``)."""
    return digest.partition(":")[2][:12]


def of_bytes(data: bytes, algorithm: str = ALGORITHM) -> str:
    """The digest of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainIDs of a layer stack (image-spec config.md): ChainID(L0) = DiffID(L0),
    ChainID(Ln) = sha256("<ChainID(Ln-1)> <DiffID(Ln)>")."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else of_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


class Readable(Protocol):
    """A blob as it arrives, from a file, an archive or a registry: anything with ``read``."""

    def read(self, n: int = -1, /) -> bytes: ...


class Hasher:
    """A running digest of one algorithm that also counts bytes."""

    def __init__(self, algorithm: str = ALGORITHM) -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"
