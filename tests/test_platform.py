"""Platform parsing, normalisation and index-entry choice: containerd's rules
(docs/oci.rst "Platforms")."""

from __future__ import annotations

import pytest

from layerfs import LayerfsError
from layerfs._oci.platform import Platform, choose, compatible, host, matches, parse

NORMALIZE = {
    # name: (os, arch, variant) in -> out
    "x86_64 is amd64": (("linux", "x86_64", ""), ("linux", "amd64", "")),
    "x86-64 is amd64": (("linux", "x86-64", ""), ("linux", "amd64", "")),
    "amd64 v1 is plain amd64": (("linux", "amd64", "v1"), ("linux", "amd64", "")),
    "amd64 v3 kept": (("linux", "amd64", "v3"), ("linux", "amd64", "v3")),
    "aarch64 is arm64": (("linux", "aarch64", ""), ("linux", "arm64", "")),
    "arm64 v8 is plain arm64": (("linux", "arm64", "v8"), ("linux", "arm64", "")),
    "arm64 8 is plain arm64": (("linux", "arm64", "8"), ("linux", "arm64", "")),
    "arm64 v8.0 is plain arm64": (("linux", "arm64", "v8.0"), ("linux", "arm64", "")),
    "armhf is arm/v7": (("linux", "armhf", ""), ("linux", "arm", "v7")),
    "armel is arm/v6": (("linux", "armel", ""), ("linux", "arm", "v6")),
    "bare arm is arm/v7": (("linux", "arm", ""), ("linux", "arm", "v7")),
    "arm 7 is arm/v7": (("linux", "arm", "7"), ("linux", "arm", "v7")),
    "arm 6 is arm/v6": (("linux", "arm", "6"), ("linux", "arm", "v6")),
    "i386 is 386": (("linux", "i386", ""), ("linux", "386", "")),
    "uppercase lowered": (("Linux", "AMD64", ""), ("linux", "amd64", "")),
    "s390x unchanged": (("linux", "s390x", ""), ("linux", "s390x", "")),
}


@pytest.mark.parametrize("given, want", NORMALIZE.values(), ids=NORMALIZE.keys())
def test_normalize(given: tuple[str, str, str], want: tuple[str, str, str]) -> None:
    p = Platform(*given).normalized()
    assert (p.os, p.architecture, p.variant) == want


PARSE = {
    "os/arch": ("linux/arm64", "linux/arm64"),
    "os/arch/variant": ("linux/arm/v6", "linux/arm/v6"),
    "arm normalised to v7": ("linux/arm", "linux/arm/v7"),
    "aarch64 normalised": ("linux/aarch64", "linux/arm64"),
    "arch alone means linux": ("s390x", "linux/s390x"),
    "spaces trimmed": (" linux/amd64 ", "linux/amd64"),
}


@pytest.mark.parametrize("text, want", PARSE.values(), ids=PARSE.keys())
def test_parse(text: str, want: str) -> None:
    assert str(parse(text)) == want


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "linux/amd64!", "/amd64"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(LayerfsError, match="invalid platform"):
        parse(text)


def test_host_is_normalised() -> None:
    h = host()
    assert h == h.normalized()
    assert h.os == "linux"
    assert h.architecture in ("amd64", "arm64", "arm", "386", "s390x", "ppc64le", "riscv64")


COMPATIBLE = {
    "amd64 runs 386": ("linux/amd64", ["linux/amd64", "linux/386"]),
    "amd64 v3 runs v2, v1, 386": ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
    "arm v7 runs v6, v5": ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    "arm v6 runs v5": ("linux/arm/v6", ["linux/arm/v6", "linux/arm/v5"]),
    "arm64 runs arm v8..v5": ("linux/arm64", ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6",
                                              "linux/arm/v5"]),
    "s390x only itself": ("linux/s390x", ["linux/s390x"]),
}


@pytest.mark.parametrize("wanted, want", COMPATIBLE.values(), ids=COMPATIBLE.keys())
def test_compatible(wanted: str, want: list[str]) -> None:
    assert [str(p) for p in compatible(parse(wanted))] == want


AMD64, ARM64, ARMV7, ARMV6 = (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"),
                              Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6"))
INDEX = [(AMD64, "amd"), (ARM64, "arm64"), (ARMV7, "armv7"), (None, "attestation-like")]

CHOOSE = {
    "amd64 host gets amd64": ("linux/amd64", INDEX, "amd"),
    "arm64 asked, v8 variant in index": ("linux/arm64", INDEX, "arm64"),
    "arm/v7 exact": ("linux/arm/v7", INDEX, "armv7"),
    "arm64 host falls back to arm/v7": ("linux/arm64", [(AMD64, "amd"), (ARMV7, "armv7")], "armv7"),
    "arm/v7 host takes arm/v6": ("linux/arm/v7", [(AMD64, "amd"), (ARMV6, "armv6")], "armv6"),
    "exact beats compatible whatever the order": ("linux/arm/v7", [(ARMV6, "armv6"), (ARMV7, "armv7")], "armv7"),
    "index order breaks ties": ("linux/amd64", [(Platform("linux", "x86_64"), "first"), (AMD64, "second")], "first"),
    "amd64 host runs a 386 image": ("linux/amd64", [(Platform("linux", "386"), "i386")], "i386"),
    "no platform comes last": ("linux/amd64", [(None, "none"), (AMD64, "amd")], "amd"),
}


@pytest.mark.parametrize("wanted, entries, want", CHOOSE.values(), ids=CHOOSE.keys())
def test_choose(wanted: str, entries: list[tuple[Platform | None, str]], want: str) -> None:
    assert choose(entries, parse(wanted), where="manifest sha256:x")[0] == want


NO_MATCH = {
    "arm/v6 cannot run v7": "linux/arm/v6",
    "s390x": "linux/s390x",
    "windows": "windows/amd64",
}


@pytest.mark.parametrize("wanted", NO_MATCH.values(), ids=NO_MATCH.keys())
def test_choose_no_match_lists_platforms(wanted: str) -> None:
    entries = [(AMD64, "amd"), (ARM64, "arm64"), (ARMV7, "armv7")]
    with pytest.raises(LayerfsError) as info:
        choose(entries, parse(wanted), where="manifest sha256:abc")
    text = str(info.value)
    assert f"no matching manifest for {parse(wanted)}" in text
    for offered in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
        assert offered in text


def test_os_features_must_be_on_the_host() -> None:
    featured = Platform("windows", "amd64", os_features=("win32k",))
    assert matches(featured, Platform("windows", "amd64")) is None
    assert matches(featured, Platform("windows", "amd64", os_features=("win32k",))) == 0
