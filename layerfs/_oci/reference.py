"""Image references, normalised as docker normalises them (distribution/reference;
docs/oci.rst "References").

``alpine`` is ``docker.io/library/alpine:latest``; ``host:port/repo:tag``, ``repo@sha256:…`` and
``repo:tag@sha256:…`` are understood; anything else raises :class:`InvalidReference` before any
network or store access.
"""

from __future__ import annotations

import dataclasses
import re

from .._errors import InvalidReference
from .digest import is_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"\A{_COMPONENT}(?:/{_COMPONENT})*\Z")
_DOMAIN_RE = re.compile(
    r"\A(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?\Z")
_TAG_RE = re.compile(r"\A[\w][\w.-]{0,127}\Z", re.ASCII)
_HEX64_RE = re.compile(r"\A[a-f0-9]{64}\Z")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """``domain/path``, the name docker shows in REPOSITORY (familiar form: see :attr:`familiar`)."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """The repository as docker prints it: ``alpine``, ``user/app``, ``localhost:5000/app``."""
        if self.domain == DEFAULT_DOMAIN:
            return self.path.removeprefix(OFFICIAL_PREFIX) if self.path.count("/") == 1 else self.path
        return self.repository

    @property
    def registry_host(self) -> str:
        """The host to talk to for this reference."""
        return "registry-1.docker.io" if self.domain == DEFAULT_DOMAIN else self.domain

    def with_tag(self, tag: str) -> Reference:
        return dataclasses.replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return dataclasses.replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form docker prints: ``alpine:latest``, ``localhost:5000/app@sha256:…``."""
        out = self.familiar_repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference.

    Args:
        text: what the user typed.
        default_tag: add ``:latest`` when neither tag nor digest is given (docker pull does).
    Raises:
        InvalidReference: with docker's words, naming ``text``.
    """
    def bad(why: str) -> InvalidReference:
        return InvalidReference(f"invalid reference format: {text!r}: {why}")

    if not text or len(text) > 255 + 128 + 140:
        raise bad("empty or too long")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not is_digest(digest):
            raise bad("digest must be sha256:<64 hex>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise bad("tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN_RE.match(domain):
            raise bad(f"bad registry host {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if not path:
        raise bad("missing repository name")
    if path != path.lower():
        raise bad("repository name must be lowercase")
    if not _PATH_RE.match(path) or len(f"{domain}/{path}") > 255:
        raise bad("repository name must be lowercase components of [a-z0-9] joined by . _ __ or -")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        if _HEX64_RE.match(path):
            raise bad("cannot specify 64-byte hexadecimal strings")
        path = OFFICIAL_PREFIX + path
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
