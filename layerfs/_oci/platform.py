"""Platforms (os/arch/variant): parsing, normalisation and the choice of an index entry.

The rules are containerd's (containerd/platforms ``Normalize``, ``Only``; core/images ``Manifest``),
which docker follows (docs/oci.rst "Platforms"):

- names are normalised: ``x86_64``/``x86-64`` -> ``amd64`` (variant ``v1`` dropped), ``aarch64`` ->
  ``arm64`` (``8``/``v8``/``v8.0`` dropped), ``armhf`` -> ``arm/v7``, ``armel`` -> ``arm/v6``, ``arm``
  with no variant or ``7`` -> ``arm/v7``, ``i386`` -> ``386``; everything lowercase;
- a host also runs older variants, in this order of preference: amd64 ``vN`` then ``vN-1`` … ``v1``
  then ``386``; arm ``vN`` … ``v5``; arm64 (any variant) then ``arm/v8`` … ``arm/v5``;
- an index entry matches when its normalised os/arch/variant equals one of those and the host has
  every ``os.features`` entry it lists; entries without a platform are kept, last;
- among matches the most preferred wins, index order breaking ties.  No match is an error that lists
  what the index offers.
"""

from __future__ import annotations

import dataclasses
import platform as _stdlib_platform
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TypeVar

from .._errors import BadImage, LayerfsError

_NAME_RE = re.compile(r"\A[a-z0-9_.-]+\Z")


@dataclasses.dataclass(frozen=True)
class Platform:
    """One platform, as in an image index entry or an image config."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        return f"{out}/{self.variant}" if self.variant else out

    def normalized(self) -> Platform:
        """The normalised form (containerd ``platforms.Normalize``)."""
        os_name = self.os.lower()
        if os_name == "macos":
            os_name = "darwin"
        arch, variant = _normalize_arch(self.architecture.lower(), self.variant.lower())
        return dataclasses.replace(self, os=os_name, architecture=arch, variant=variant)


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    if arch in ("i386",):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8", "v8.0") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
        return "arm", variant
    return arch, variant


def parse(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (or ``arch`` alone, meaning linux) and normalise it.

    Raises:
        LayerfsError: the text is not of that form.
    """
    parts = text.strip().lower().split("/")
    if not 1 <= len(parts) <= 3 or not all(_NAME_RE.match(p) for p in parts):
        raise LayerfsError(f"invalid platform {text!r}: want os/arch[/variant], e.g. linux/arm64 or linux/arm/v7")
    if len(parts) == 1:
        # containerd: a lone known OS means the host's arch, anything else is an arch on linux.
        if parts[0] in ("linux", "windows", "darwin", "freebsd"):
            return dataclasses.replace(host(), os=parts[0])
        return Platform("linux", parts[0]).normalized()
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()


def from_json(obj: object) -> Platform | None:
    """The platform of an index entry (``{"os":…, "architecture":…, …}``), or None if absent.

    Raises:
        BadImage: the object is present but malformed.
    """
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise BadImage(f"malformed platform {obj!r}")
    os_name, arch = obj.get("os"), obj.get("architecture")
    variant, version, features = obj.get("variant", ""), obj.get("os.version", ""), obj.get("os.features", [])
    if not isinstance(os_name, str) or not isinstance(arch, str) or not isinstance(variant, str) \
            or not isinstance(version, str) or not isinstance(features, list) \
            or not all(isinstance(f, str) for f in features):
        raise BadImage(f"malformed platform {obj!r}")
    return Platform(os_name, arch, variant, version, tuple(features))


def _arm_variant_from_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "CPU architecture":
                    value = value.strip()
                    if value.startswith("AArch64") or value == "8":
                        return "v8"
                    return "v" + value if value.isdigit() else ""
    except OSError:
        pass
    return ""


def host() -> Platform:
    """The platform this process runs on (GOOS/GOARCH + the arm variant from /proc/cpuinfo)."""
    os_name = {"linux": "linux", "darwin": "darwin", "win32": "windows"}.get(sys.platform, sys.platform)
    machine = _stdlib_platform.machine().lower()
    variant = _arm_variant_from_cpuinfo() if machine.startswith("arm") else ""
    if machine.startswith("armv") and not variant:
        variant = "v" + machine[4:5]
    if machine.startswith("armv"):
        machine = "arm"
    return Platform(os_name, machine, variant).normalized()


def compatible(wanted: Platform) -> list[Platform]:
    """The platforms a ``wanted`` host runs, most preferred first (containerd ``platformVector``)."""
    p = wanted.normalized()
    vector = [p]
    if p.architecture == "amd64":
        level = _version(p.variant)
        if level is not None and level > 1:
            vector += [dataclasses.replace(p, variant=f"v{v}" if v > 1 else "") for v in range(level - 1, 0, -1)]
        vector.append(dataclasses.replace(p, architecture="386", variant=""))
    elif p.architecture == "arm":
        level = _version(p.variant)
        if level is not None and level > 5:
            vector += [dataclasses.replace(p, variant=f"v{v}") for v in range(level - 1, 4, -1)]
    elif p.architecture == "arm64":
        vector = [dataclasses.replace(p, variant=""), *([p] if p.variant else [])]
        vector += compatible(dataclasses.replace(p, architecture="arm", variant="v8"))
    return vector


def _version(variant: str) -> int | None:
    text = variant.removeprefix("v").split(".")[0]
    return int(text) if text.isdigit() else None


def matches(candidate: Platform, wanted: Platform) -> int | None:
    """The rank of ``candidate`` for a ``wanted`` host (0 = best), or None if it cannot run there."""
    c = candidate.normalized()
    for rank, p in enumerate(compatible(wanted)):
        if (c.os, c.architecture) != (p.os, p.architecture):
            continue
        if c.variant != p.variant and not (c.architecture == "arm64" and p.architecture == "arm64"):
            continue
        if not set(c.os_features) <= set(wanted.os_features):
            continue
        return rank
    return None


T = TypeVar("T")


def choose(entries: Sequence[tuple[Platform | None, T]], wanted: Platform, *, where: str) -> list[T]:
    """Order the index entries that can run on ``wanted``, best first.

    Args:
        entries: (platform or None, item) in index order.
        wanted: the target platform (the host's, or ``--platform``).
        where: names the index in the error, e.g. ``manifest sha256:…``.
    Returns:
        The matching items, best first; entries without a platform come last (the caller checks
        their config).
    Raises:
        LayerfsError: nothing matches; the message lists the platforms the index offers.
    """
    ranked: list[tuple[int, int, T]] = []
    for index, (plat, item) in enumerate(entries):
        rank = 1 << 30 if plat is None else matches(plat, wanted)
        if rank is not None:
            ranked.append((rank, index, item))
    if not ranked:
        offered = ", ".join(sorted({str(p.normalized()) for p, _ in entries if p is not None})) or "none"
        raise LayerfsError(f"no matching manifest for {wanted} in the manifest list entries "
                           f"({where} offers {offered})")
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [item for _, _, item in ranked]
