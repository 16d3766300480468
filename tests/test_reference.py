"""References normalised as docker normalises them (distribution/reference;
docs/oci.rst "References")."""

from __future__ import annotations

import pytest

from layerfs import InvalidReference
from layerfs._oci.reference import parse

D = "sha256:" + "a" * 64

GOOD = {
    # name: (text, (domain, path, tag, digest), familiar)
    "official image": ("alpine", ("docker.io", "library/alpine", "latest", None), "alpine:latest"),
    "official with tag": ("alpine:3.19", ("docker.io", "library/alpine", "3.19", None), "alpine:3.19"),
    "user repo": ("user/app", ("docker.io", "user/app", "latest", None), "user/app:latest"),
    "explicit docker.io": ("docker.io/alpine", ("docker.io", "library/alpine", "latest", None), "alpine:latest"),
    "index.docker.io rewritten": ("index.docker.io/library/alpine:1",
                                  ("docker.io", "library/alpine", "1", None), "alpine:1"),
    "host:port": ("localhost:5000/app:v1", ("localhost:5000", "app", "v1", None), "localhost:5000/app:v1"),
    "localhost alone is a domain": ("localhost/app", ("localhost", "app", "latest", None), "localhost/app:latest"),
    "dotted domain": ("quay.io/org/app", ("quay.io", "org/app", "latest", None), "quay.io/org/app:latest"),
    "ip:port nested path": ("127.0.0.1:5000/a/b/c:t", ("127.0.0.1:5000", "a/b/c", "t", None),
                            "127.0.0.1:5000/a/b/c:t"),
    "no library/ off docker hub": ("localhost:5000/alpine", ("localhost:5000", "alpine", "latest", None),
                                   "localhost:5000/alpine:latest"),
    "digest only": (f"alpine@{D}", ("docker.io", "library/alpine", None, D), f"alpine@{D}"),
    "tag and digest": (f"alpine:3@{D}", ("docker.io", "library/alpine", "3", D), f"alpine:3@{D}"),
    "separators": ("a_b__c-d--e/x.y", ("docker.io", "a_b__c-d--e/x.y", "latest", None), "a_b__c-d--e/x.y:latest"),
    "dotted first part is a domain": ("a.b/x", ("a.b", "x", "latest", None), "a.b/x:latest"),
    "uppercase domain": ("Example.COM/app", ("Example.COM", "app", "latest", None), "Example.COM/app:latest"),
    "long tag": ("app:" + "t" * 128, ("docker.io", "library/app", "t" * 128, None), "app:" + "t" * 128),
}


@pytest.mark.parametrize("text, want, familiar", GOOD.values(), ids=GOOD.keys())
def test_parse(text: str, want: tuple[str, str, str | None, str | None], familiar: str) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == want
    assert ref.familiar() == familiar


BAD = {
    "empty": "",
    "uppercase repo": "Alpine",
    "uppercase path": "localhost:5000/App",
    "64 hex name": "a" * 64,
    "tag too long": "app:" + "t" * 129,
    "tag starting with dot": "app:.x",
    "short digest": "app@sha256:abc",
    "unknown digest algorithm": "app@md5:" + "a" * 32,
    "empty path": "localhost:5000/",
    "double slash": "a//b",
    "trailing separator": "app-",
    "space": "al pine",
    "bad port": "host:port/app",
}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidReference, match="invalid reference format"):
        parse(text)


def test_registry_host_of_docker_hub() -> None:
    assert parse("alpine").registry_host == "registry-1.docker.io"
    assert parse("localhost:5000/x").registry_host == "localhost:5000"


def test_with_digest_drops_the_tag() -> None:
    assert str(parse("localhost:5000/x:1").with_digest(D)) == f"localhost:5000/x@{D}"
