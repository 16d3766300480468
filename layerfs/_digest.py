"""Digests: parsing, hashing while streaming, and verification.

Only ``sha256:<64 hex>`` and ``sha512:<128 hex>`` are accepted, so a digest can be used safely as
a file name or in a URL (oci.md §6, CVE-2024-3727).
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from ._errors import DigestMismatch, InvalidReference

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


class VerifyingReader:
    """A read-only file object that hashes what passes through it.

    Wraps ``raw`` (anything with ``read``); :meth:`verify` drains what is left and raises
    :class:`DigestMismatch` if the digest or (when given) the size differ from ``expected``.
    """

    def __init__(self, raw: BinaryIO, expected: str | None, *, what: str, size: int | None = None) -> None:
        self._raw = raw
        self.expected = expected
        self.expected_size = size
        self.what = what
        self.hasher = Hasher(expected.partition(":")[0] if expected else ALGORITHM)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self.hasher.update(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to EOF (the digest covers every byte, trailing ones included)."""
        while self.read(chunk):
            pass

    def verify(self) -> str:
        """Drain, then check size and digest.  Returns the digest."""
        self.drain()
        actual = self.hasher.digest()
        if self.expected_size is not None and self.hasher.size != self.expected_size:
            raise DigestMismatch(f"{self.what}: size {self.hasher.size} (expected {self.expected_size})",
                                 self.expected or "?", actual)
        if self.expected is not None and actual != self.expected:
            raise DigestMismatch(self.what, self.expected, actual)
        return actual
