"""The manifest rules pull and load share (layerfs._oci.manifest), as a table of named cases."""

from __future__ import annotations

import json

import pytest

from layerfs import BadImage, LayerfsError
from layerfs._oci import manifest as m
from layerfs._oci.platform import parse as parse_platform

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
CONFIG = {"mediaType": m.CONFIG_TYPES[0], "digest": D1, "size": 10}
LAYER = {"mediaType": m.LAYER_TYPES[1], "digest": D2, "size": 20}


def manifest(**changes: object) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": m.OCI_MANIFEST, "config": CONFIG, "layers": [LAYER]}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("data, message", [
    pytest.param(b"{", "not JSON", id="not-json"),
    pytest.param(b"[]", "not a JSON object", id="not-an-object"),
    pytest.param(manifest(config={**CONFIG, "mediaType": "application/vnd.example.artifact+json"}),
                 "not a container image", id="artifact"),
    pytest.param(manifest(layers=[{**LAYER, "mediaType": "application/x-tar-ish"}]), "unsupported media type",
                 id="unknown-layer-type"),
    pytest.param(manifest(layers=[{**LAYER, "urls": ["http://example.invalid/x"]}]), "foreign layers",
                 id="foreign-layer"),
    pytest.param(manifest(layers=[{**LAYER, "digest": "sha256:../../etc"}]), "bad digest", id="digest-path"),
    pytest.param(manifest(layers=[{**LAYER, "size": -1}]), "malformed descriptor", id="negative-size"),
    pytest.param(manifest(layers="x"), "no layers list", id="layers-not-a-list"),
])
def test_bad_manifests_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        m.parse_manifest(data, D1)


def test_a_good_manifest_gives_config_and_layers() -> None:
    parsed = m.parse_manifest(manifest(), D1)
    assert parsed.config.digest == D1 and [layer.digest for layer in parsed.layers] == [D2]


@pytest.mark.parametrize("doc, declared, result", [
    pytest.param({"mediaType": m.OCI_MANIFEST}, m.OCI_MANIFEST, m.OCI_MANIFEST, id="agree"),
    pytest.param({}, m.DOCKER_MANIFEST, m.DOCKER_MANIFEST, id="field-omitted-as-umoci-does"),
    pytest.param({"manifests": []}, "", m.OCI_INDEX, id="nothing-declared-index"),
    pytest.param({"mediaType": m.OCI_INDEX}, m.OCI_MANIFEST, "does not match", id="CVE-2021-41190-confusion"),
    pytest.param({"schemaVersion": 1}, "", "schema 1", id="schema1-body"),
    pytest.param({}, m.SCHEMA1_TYPES[1], "schema 1", id="schema1-type"),
    pytest.param({"mediaType": "text/html"}, "", "unsupported media type", id="not-a-manifest"),
])
def test_media_type_must_agree_with_what_pointed_at_it(doc: dict[str, object], declared: str, result: str) -> None:
    if result in m.MANIFEST_TYPES:
        assert m.media_type(doc, declared, "manifest x") == result
    else:
        with pytest.raises(BadImage, match=result):
            m.media_type(doc, declared, "manifest x")


@pytest.mark.parametrize("rootfs, layers, message", [
    pytest.param({"type": "layers", "diff_ids": [D1]}, 2, "1 diff IDs for 2 layers", id="count"),
    pytest.param({"type": "other", "diff_ids": [D1]}, 1, "rootfs must be", id="type"),
    pytest.param({"type": "layers", "diff_ids": ["sha256:short"]}, 1, "bad diff_id", id="bad-diff-id"),
])
def test_config_diff_ids_are_checked(rootfs: dict[str, object], layers: int, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        m.diff_ids(json.dumps({"rootfs": rootfs}).encode(), D1, layers)


def test_index_entry_chosen_by_platform_and_none_lists_what_is_offered() -> None:
    def entry(digest: str, arch: str, variant: str = "") -> dict[str, object]:
        plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return {"mediaType": m.OCI_MANIFEST, "digest": digest, "size": 1, "platform": plat}

    index = json.dumps({"manifests": [entry(D1, "arm", "v6"), entry(D2, "arm64")]}).encode()
    assert m.choose_platform(index, D1, parse_platform("linux/arm64")).digest == D2
    assert m.choose_platform(index, D1, parse_platform("linux/arm/v7")).digest == D1  # v7 runs v6
    with pytest.raises(LayerfsError, match=r"linux/s390x.*offers linux/arm/v6, linux/arm64"):
        m.choose_platform(index, D1, parse_platform("linux/s390x"))


@pytest.mark.parametrize("content_type, body, result", [
    pytest.param(m.OCI_MANIFEST, {"mediaType": m.OCI_MANIFEST}, m.OCI_MANIFEST, id="agree"),
    pytest.param(m.DOCKER_MANIFEST, {}, m.DOCKER_MANIFEST, id="body-without-field"),
    pytest.param("application/json", {"mediaType": m.OCI_INDEX}, m.OCI_INDEX, id="generic-type-body-decides"),
    pytest.param("application/json", {}, "unsupported media type", id="generic-type-no-field"),
    pytest.param(m.OCI_MANIFEST, {"mediaType": m.OCI_INDEX}, "does not match", id="confusion"),
    pytest.param(m.SCHEMA1_TYPES[1], {"schemaVersion": 1}, "schema 1", id="schema1"),
])
def test_registry_content_type_and_body_must_agree(content_type: str, body: dict[str, object], result: str) -> None:
    from layerfs._registry.client import _check_media_type

    data = json.dumps(body).encode()
    if result in m.MANIFEST_TYPES:
        assert _check_media_type(content_type, "manifest x", data) == result
    else:
        with pytest.raises(BadImage, match=result):
            _check_media_type(content_type, "manifest x", data)
