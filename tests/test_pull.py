"""``layerfs pull`` against real registries (Debian ``docker-registry`` on 127.0.0.1;
docs/testing.rst "Registries").

One storage dir is served by four registries: anonymous, htpasswd Basic, bearer tokens (from the
token server in ``_registry_server``) and Basic + the redirect storage middleware (blobs served by
another host name).  Images are pushed once with skopeo: the edge image as OCI/gzip, OCI/zstd and
docker v2s2; a multi-arch OCI index and its docker manifest-list copy; an image whose config has a
wrong diff ID; one whose layer blob is corrupted in the registry's storage; a three-layer image of
random bytes (for resume and interruption).  Each case is pulled and checked against skopeo's image
ID, the GNU tar layer oracle and ``umoci unpack`` (through a kernel overlay); each bad case must fail
with one line naming the reference and leave the store as it was.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _images import (
    MEDIA_MANIFEST,
    BuiltImage,
    Copies,
    TarEntry,
    build_hostile,
    gzip_bytes,
    sha256,
    tar_bytes,
    write_layout,
)
from _images import busybox_image as busybox_image  # noqa: F401  (fixtures)
from _images import edge_copies as edge_copies  # noqa: F401
from _images import edge_image as edge_image  # noqa: F401
from _oracles import blob_path, kernel_overlay, tar_layer_dirs, umoci_unpack
from _registry_server import (
    Drip,
    FileServer,
    Proxy,
    Registry,
    TokenServer,
    free_port,
    inspect_config_digest,
    push,
    write_htpasswd,
)
from _trees import Tree, assert_same_tree, diff, snapshot
from conftest import require_root, require_tool, run_layerfs

from layerfs import DigestMismatch, InvalidReference, LayerfsError, Store
from layerfs._registry.auth import Credentials
from layerfs._registry.client import RegistryClient
from layerfs._transfer.progress import PlainProgress
from layerfs._transfer.pull import pull

USER, PASSWORD = "alice", "wonderland"
REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module", autouse=True)
def _needs_tools() -> None:
    require_root()
    require_tool("docker-registry", "skopeo", "umoci", "htpasswd")


# -- images -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Multi:
    """A multi-arch image: the index digest and each platform's config digest."""

    layout: Path
    index_digest: str
    configs: dict[str, str]  # "linux/amd64" -> config digest


def _random_layer(seed: int, size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    tar = tar_bytes([TarEntry(f"data{seed}/", tarfile.DIRTYPE, mode=0o755),
                     TarEntry(f"data{seed}/random.bin", data=data)])
    return gzip_bytes(tar), sha256(tar)


def build_multi(work: Path) -> Multi:
    """Three single-layer images (amd64, arm64/v8, arm/v7) and an OCI index over them, written by hand
    (umoci cannot set variants)."""
    layout = work / "layout"
    platforms = {"linux/amd64": ("amd64", ""), "linux/arm64": ("arm64", "v8"), "linux/arm/v7": ("arm", "v7")}
    configs, entries = {}, []
    for name, (arch, variant) in platforms.items():
        tar = tar_bytes([TarEntry("etc/", tarfile.DIRTYPE, mode=0o755),
                         TarEntry("etc/arch", data=f"{name}\n".encode())])
        config = {"architecture": arch, "os": "linux", "created": "2020-09-13T12:26:40Z"}
        if variant:
            config["variant"] = variant
        img = write_layout(layout, f"multi-{arch}", [(gzip_bytes(tar), sha256(tar))], config=config)
        configs[name] = img.config_digest
        size = blob_path(layout, img.manifest_digest).stat().st_size
        platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        entries.append({"mediaType": MEDIA_MANIFEST, "digest": img.manifest_digest, "size": size,
                        "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digest = sha256(index)
    blob_path(layout, digest).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append({"mediaType": OCI_INDEX, "digest": digest, "size": len(index),
                             "annotations": {REF_NAME: "multi"}})
    (layout / "index.json").write_text(json.dumps(top))
    return Multi(layout, digest, configs)


def build_big(work: Path) -> BuiltImage:
    """Three layers of 10 MB random bytes each (incompressible): slow enough to interrupt."""
    return write_layout(work / "layout", "big", [_random_layer(i, 10 << 20) for i in range(3)])


def build_shared(work: Path, big: BuiltImage) -> BuiltImage:
    """An image whose base layer is ``big``'s, then a small layer and a 10 MB one of its own."""
    base = (blob_path(big.layout, big.layer_digests[0]).read_bytes(), big.diff_ids[0])
    return write_layout(work / "layout", "shared", [base, _random_layer(10, 4096), _random_layer(11, 10 << 20)])


def build_corrupt(work: Path) -> BuiltImage:
    """An image with a layer of its own (so corrupting it in the registry harms no other image)."""
    tar = tar_bytes([TarEntry("etc/", tarfile.DIRTYPE, mode=0o755),
                     TarEntry("etc/corrupt-me", data=os.urandom(4096))])
    return write_layout(work / "layout", "corrupt", [(gzip_bytes(tar), sha256(tar))])


# -- registries -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Registries:
    storage: Path
    anon: Registry
    basic: Registry
    token: Registry
    redirect: Registry
    tokens: TokenServer
    files: FileServer
    edge: BuiltImage
    copies: Copies
    multi: Multi
    big: BuiltImage
    corrupt: BuiltImage
    bad_diff_id: BuiltImage
    shared: BuiltImage


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory, edge_image: BuiltImage,  # noqa: F811
               edge_copies: Copies) -> Iterator[Registries]:  # noqa: F811
    work = tmp_path_factory.mktemp("registries")
    storage = work / "storage"
    storage.mkdir()
    htpasswd = write_htpasswd(work / "htpasswd", {USER: PASSWORD})
    started: list[Registry | TokenServer | FileServer] = []
    try:
        anon = Registry.start(work, storage)
        started.append(anon)
        basic = Registry.start(work, storage, htpasswd=htpasswd)
        started.append(basic)
        tokens = TokenServer.start(work / "tokens", users={USER: PASSWORD}, public=("public/",))
        started.append(tokens)
        token = Registry.start(work, storage, token=tokens)
        started.append(token)
        files = FileServer.start(storage)
        started.append(files)
        # Another host name for the same server: Authorization must not follow the redirect.
        redirect = Registry.start(work, storage, htpasswd=htpasswd, redirect_base=f"http://localhost:{files.port}")
        started.append(redirect)

        host = anon.host
        assert edge_copies.zstd.image is not None and edge_copies.v2s2.image is not None
        push(edge_image.source, f"{host}/public/edge:oci")
        push(edge_image.source, f"{host}/private/edge:oci")
        push(edge_copies.zstd.image.source, f"{host}/public/edge:zstd")
        push(edge_image.source, f"{host}/public/edge:v2s2", "--format", "v2s2")
        multi = build_multi(work / "multi")
        push(f"oci:{multi.layout}:multi", f"{host}/public/multi:oci", "--all", "--preserve-digests")
        push(f"oci:{multi.layout}:multi", f"{host}/public/multi:docker", "--all", "--format", "v2s2")
        big = build_big(work / "big")
        push(big.source, f"{host}/public/big:latest")
        shared = build_shared(work / "shared", big)
        push(shared.source, f"{host}/public/shared:latest")
        corrupt = build_corrupt(work / "corrupt")
        push(corrupt.source, f"{host}/public/bad:corrupt")
        data = Registry.blob_data_path(anon, storage, corrupt.layer_digests[0])
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        bad = build_hostile("bad-diff-id", work / "bad-diff-id", outside=work / "outside").image
        push(bad.source, f"{host}/public/bad:diffid")
        yield Registries(storage, anon, basic, token, redirect, tokens, files, edge_image, edge_copies, multi, big,
                         corrupt, bad, shared)
    finally:
        for server in reversed(started):
            server.stop()


def _creds(*hosts: str) -> object:
    def lookup(host: str) -> Credentials | None:
        return Credentials(USER, PASSWORD) if host in hosts else None
    return lookup


def _client(*cred_hosts: str, **kwargs: object) -> RegistryClient:
    return RegistryClient(credentials_for=_creds(*cred_hosts), read_config=False, backoff=0.05,  # type: ignore[arg-type]
                          **kwargs)  # type: ignore[arg-type]


def _files(root: Path) -> dict[str, int]:
    """Every file of a store (not the lock), with its size: equal before and after = unchanged."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path != root / "lock":
                out[str(path.relative_to(root))] = path.lstat().st_size
    return out


@pytest.fixture(scope="session")
def oracle_layers(edge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> list[Tree]:  # noqa: F811
    dirs = tar_layer_dirs(edge_image.layout, edge_image.tag, tmp_path_factory.mktemp("pull-tar") / "layers")
    return [snapshot(d, overlay_xattrs=True) for d in dirs]


@pytest.fixture(scope="session")
def umoci_tree(edge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Tree:  # noqa: F811
    return snapshot(umoci_unpack(edge_image.layout, edge_image.tag, tmp_path_factory.mktemp("pull-umoci") / "b"))


# -- good pulls ---------------------------------------------------------------------------------------

FORMATS = {
    # name: (tag, which registry, credentials needed)
    "oci gzip, anonymous": ("oci", "anon"),
    "oci zstd, anonymous": ("zstd", "anon"),
    "docker v2s2, anonymous": ("v2s2", "anon"),
    "oci gzip, htpasswd": ("oci", "basic"),
    "oci gzip, token": ("oci", "token"),
    "oci gzip, redirect": ("oci", "redirect"),
}


@pytest.mark.parametrize("tag, which", FORMATS.values(), ids=FORMATS.keys())
def test_pull_gives_the_image_skopeo_sees(registries: Registries, oracle_layers: list[Tree], tmp_path: Path,
                                          tag: str, which: str) -> None:
    reg: Registry = getattr(registries, which)
    ref = f"{reg.host}/public/edge:{tag}"
    store = Store(tmp_path / "store")
    with _client(reg.host) as client:
        image = pull(store, ref, client=client)
        stats = client.statistics()
    creds = ("--creds", f"{USER}:{PASSWORD}") if which in ("basic", "redirect") else ()
    assert image.id == inspect_config_digest(ref, *creds) == registries.edge.config_digest
    assert list(image.diff_ids) == list(registries.edge.diff_ids)
    assert f"{reg.host}/public/edge:{tag}" in image.repo_tags
    assert any(d.startswith(f"{reg.host}/public/edge@sha256:") for d in image.repo_digests)
    dirs = store.layer_dirs(image)
    problems = []
    for i, (ours, oracle) in enumerate(zip(dirs, oracle_layers, strict=True)):
        problems += [f"layer {i}: {line}" for line in
                     diff(snapshot(ours, overlay_xattrs=True), oracle, names=("pulled", "GNU tar"))]
    assert not problems, "\n".join(problems[:30])
    for digest_file in (store.root / "blobs/sha256").iterdir():
        assert sha256(digest_file.read_bytes()) == "sha256:" + digest_file.name
    if which == "redirect":
        assert stats.redirects >= len(dirs)
    if which == "token":
        assert client.auth.statistics().tokens_fetched == 1  # one scope, one token, cached


def test_merged_layers_equal_umoci_unpack(registries: Registries, umoci_tree: Tree, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    image = pull(store, f"{registries.anon.host}/public/edge:oci")
    with kernel_overlay(store.layer_dirs(image)[::-1], tmp_path / "mnt") as mnt:
        merged = snapshot(mnt)
    assert_same_tree(merged, umoci_tree, names=("kernel overlay of pulled layers", "umoci unpack"))


def test_copies_share_layers_and_image(registries: Registries, tmp_path: Path) -> None:
    """gzip, zstd and v2s2 copies: one image ID and the same diff-ID dirs; layers are fetched once."""
    store = Store(tmp_path / "store")
    host = registries.anon.host
    first = pull(store, f"{host}/public/edge:oci")
    layers = sorted(p.name for p in (store.root / "layers").iterdir())
    out = io.StringIO()
    for tag in ("zstd", "v2s2"):
        with _client() as client:
            image = pull(store, f"{host}/public/edge:{tag}", client=client, progress=PlainProgress(out))
            assert client.statistics().blob_bytes == 0, "layers already in the store were fetched again"
        assert image.id == first.id
    assert sorted(p.name for p in (store.root / "layers").iterdir()) == layers
    assert "Already exists" in out.getvalue()
    assert {f"{host}/public/edge:{t}" for t in ("oci", "zstd", "v2s2")} <= set(store.get(first.id).repo_tags)


def test_pull_by_digest_and_tag_at_digest(registries: Registries, tmp_path: Path) -> None:
    host = registries.anon.host
    ref = f"{host}/public/edge:oci"
    digest = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{ref}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    store = Store(tmp_path / "store")
    image = pull(store, f"{host}/public/edge@{digest}")
    assert image.id == registries.edge.config_digest
    assert f"{host}/public/edge@{digest}" in image.repo_digests
    assert image.repo_tags == (), "pulled by digest alone: no tag, as docker does"
    again = pull(Store(tmp_path / "store2"), f"{host}/public/edge:oci@{digest}")
    assert again.id == image.id


# -- multi-arch -------------------------------------------------------------------------------------

PLATFORMS = {
    "host default (amd64)": (None, "linux/amd64"),
    "arm64 asked": ("linux/arm64", "linux/arm64"),
    "arm64/v8 asked": ("linux/arm64/v8", "linux/arm64"),
    "arm/v7 asked": ("linux/arm/v7", "linux/arm/v7"),
    "bare arm means v7": ("linux/arm", "linux/arm/v7"),
    "386 cannot run amd64": ("linux/386", None),
    "arm/v6 cannot run v7": ("linux/arm/v6", None),
    "s390x": ("linux/s390x", None),
}


@pytest.mark.parametrize("tag", ["oci", "docker"])
@pytest.mark.parametrize("asked, want", PLATFORMS.values(), ids=PLATFORMS.keys())
def test_multi_arch(registries: Registries, tmp_path: Path, tag: str, asked: str | None, want: str | None) -> None:
    import platform as stdlib_platform

    if asked is None and stdlib_platform.machine() not in ("x86_64", "amd64"):
        pytest.skip("the default-platform case assumes an amd64 host")
    ref = f"{registries.anon.host}/public/multi:{tag}"
    store = Store(tmp_path / "store")
    if want is None:
        with pytest.raises(LayerfsError) as info:
            pull(store, ref, platform=asked)
        text = str(info.value)
        assert text.startswith(f"pull {ref}: no matching manifest for {asked}")
        for offered in registries.multi.configs:
            assert offered in text
        assert store.images() == []
        return
    image = pull(store, ref, platform=asked)
    assert image.id == registries.multi.configs[want]
    (layer,) = store.layer_dirs(image)
    assert (layer / "etc/arch").read_text() == f"{want}\n"
    if tag == "oci":
        assert f"{registries.anon.host}/public/multi@{registries.multi.index_digest}" in image.repo_digests


def test_explicit_platform_must_match_a_single_manifest(registries: Registries, tmp_path: Path) -> None:
    ref = f"{registries.anon.host}/public/edge:oci"
    with pytest.raises(LayerfsError, match="does not match the specified platform: wanted linux/arm64"):
        pull(Store(tmp_path / "store"), ref, platform="linux/arm64")


# -- auth -------------------------------------------------------------------------------------------

DENIED = {
    # name: (registry, repository, credentials, expected words)
    "basic, no credentials": ("basic", "public/edge:oci", False, "pull access denied for"),
    "token, anonymous, private repo": ("token", "private/edge:oci", False, "pull access denied for"),
    "redirect, no credentials": ("redirect", "public/edge:oci", False, "pull access denied for"),
}


@pytest.mark.parametrize("which, repo, _creds_, words", DENIED.values(), ids=DENIED.keys())
def test_access_denied(registries: Registries, tmp_path: Path, which: str, repo: str, _creds_: bool,
                       words: str) -> None:
    reg: Registry = getattr(registries, which)
    store = Store(tmp_path / "store")
    before = _files(store.root)
    with _client() as client, pytest.raises(LayerfsError) as info:
        pull(store, f"{reg.host}/{repo}", client=client)
    assert str(info.value).startswith(f"pull {reg.host}/{repo}: {words}")
    assert _files(store.root) == before


def test_wrong_password(registries: Registries, tmp_path: Path) -> None:
    for reg in (registries.basic, registries.token):
        client = RegistryClient(credentials_for=lambda host: Credentials(USER, "wrong"), read_config=False)
        with client, pytest.raises(LayerfsError, match=f"pull {reg.host}/private/edge:oci: unauthorized"):
            pull(Store(tmp_path / "store"), f"{reg.host}/private/edge:oci", client=client)


def test_token_with_credentials_reads_private_repo(registries: Registries, tmp_path: Path) -> None:
    reg = registries.token
    before = len(registries.tokens.requests)
    with _client(reg.host) as client:
        image = pull(Store(tmp_path / "store"), f"{reg.host}/private/edge:oci", client=client)
    assert image.id == registries.edge.config_digest
    asked = registries.tokens.requests[before:]
    assert asked and all(method == "POST" and authenticated for method, _, authenticated in asked)


def test_redirect_never_sends_authorization_to_the_storage_host(registries: Registries, tmp_path: Path) -> None:
    reg = registries.redirect
    before = len(registries.files.requests)
    with _client(reg.host) as client:
        image = pull(Store(tmp_path / "store"), f"{reg.host}/public/edge:oci", client=client)
    assert image.id == registries.edge.config_digest
    seen = registries.files.requests[before:]
    assert seen, "the storage host was never asked: the redirect middleware is not in use"
    assert [auth for _, auth in seen if auth] == []


def test_cli_login_pull_logout(registries: Registries, tmp_path: Path) -> None:
    """login checks and saves credentials in the docker config; pull uses them; logout removes them."""
    env = {"DOCKER_CONFIG": str(tmp_path / "docker"), "HOME": str(tmp_path), "REGISTRY_AUTH_FILE": ""}
    root = tmp_path / "store"
    for reg in (registries.basic, registries.token):
        bad = run_layerfs("login", reg.host, "-u", USER, "--password-stdin", root=root, input=b"wrong\n", env=env,
                          check=False)
        assert bad.returncode == 1 and bad.stderr.startswith(f"Error: login {reg.host}: "), bad.stderr
        config = tmp_path / "docker/config.json"
        assert not config.exists() or reg.host not in config.read_text()
        good = run_layerfs("login", reg.host, "-u", USER, "--password-stdin", root=root,
                           input=PASSWORD.encode() + b"\n", env=env)
        assert "Login Succeeded" in good.stdout
        out = run_layerfs("pull", "-q", f"{reg.host}/private/edge:oci", root=root, env=env)
        assert out.stdout.strip() == registries.edge.config_digest
        assert "Removing login credentials" in run_layerfs("logout", reg.host, root=root, env=env).stdout
        denied = run_layerfs("pull", f"{reg.host}/private/edge:oci", root=root, env=env, check=False)
        assert denied.returncode == 1
        assert denied.stderr.startswith(f"Error: pull {reg.host}/private/edge:oci: pull access denied")
    auth_file = tmp_path / "auth.json"
    import base64
    auth_file.write_text(json.dumps({"auths": {registries.basic.host: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    out = run_layerfs("pull", "-q", f"{registries.basic.host}/private/edge:oci", root=tmp_path / "store2",
                      env={**env, "REGISTRY_AUTH_FILE": str(auth_file)})
    assert out.stdout.strip() == registries.edge.config_digest


# -- bad cases --------------------------------------------------------------------------------------

BAD = {
    # name: (repository:tag, error class, words after "pull <ref>: ")
    "corrupt blob": ("public/bad:corrupt", DigestMismatch, "layer sha256:"),
    "wrong diff ID": ("public/bad:diffid", DigestMismatch, "layer sha256:"),
    "unknown tag": ("public/edge:nope", LayerfsError, "manifest for"),
    "unknown repository": ("public/nothing:latest", LayerfsError, "manifest for"),
}


@pytest.mark.parametrize("repo, cls, words", BAD.values(), ids=BAD.keys())
def test_bad_pull_fails_and_leaves_the_store_unchanged(registries: Registries, tmp_path: Path, repo: str,
                                                       cls: type[Exception], words: str) -> None:
    host = registries.anon.host
    root = tmp_path / "store"
    run_layerfs("pull", "-q", f"{host}/public/multi:oci", root=root)  # something already in it
    before = _files(root)
    proc = run_layerfs("pull", f"{host}/{repo}", root=root, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: pull {host}/{repo}: {words}"), proc.stderr
    if cls is DigestMismatch:
        assert "digest mismatch" in lines[0]
    else:
        assert "not found: manifest unknown" in lines[0]
    assert _files(root) == before
    with pytest.raises(cls):
        pull(Store(root), f"{host}/{repo}")
    assert _files(root) == before


def test_connection_refused(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    proc = run_layerfs("pull", f"127.0.0.1:{port}/x:1", root=tmp_path / "store", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Error: pull 127.0.0.1:{port}/x:1: "
                                   f'HEAD "http://127.0.0.1:{port}/v2/x/manifests/1": connect: connection refused')
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("ref", ["Alpine", "x@sha256:abc", "a" * 64, "host:port/x", "localhost:5000/App"])
def test_bad_reference_fails_before_any_network(tmp_path: Path, ref: str) -> None:
    proc = run_layerfs("pull", ref, root=tmp_path / "store", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Error: invalid reference format: {ref!r}")
    assert not (tmp_path / "store").exists()
    with pytest.raises(InvalidReference):
        pull(Store(tmp_path / "store"), ref, client=RegistryClient(read_config=False))


def test_plain_http_only_for_local_and_insecure_hosts(registries: Registries, tmp_path: Path) -> None:
    # "localhost" is always plain HTTP; a name for 127.0.0.1 that is not local must be HTTPS unless allowed.
    host = f"127.0.0.1.nip.invalid:{registries.anon.port}"
    client = RegistryClient(read_config=False)
    assert client.base_url(host).startswith("https://")
    assert RegistryClient(insecure_registries=[host], read_config=False).base_url(host).startswith("http://")
    assert client.base_url(registries.anon.host).startswith("http://")
    assert client.base_url(f"localhost:{registries.anon.port}").startswith("http://")


def test_insecure_registry_from_registries_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nlocation = "reg.example:5000"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    assert RegistryClient().base_url("reg.example:5000") == "http://reg.example:5000"
    assert RegistryClient().base_url("other.example:5000") == "https://other.example:5000"


def test_disk_full(registries: Registries, tmp_path: Path) -> None:
    """A store on a 4 MiB tmpfs cannot hold the 30 MB image: one line, no space, store unchanged."""
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], check=True)
    try:
        before = _files(root)
        proc = run_layerfs("pull", f"{registries.anon.host}/public/big:latest", root=root / "store", check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"Error: pull {registries.anon.host}/public/big:latest: ")
        assert "no space left on device" in proc.stderr.lower()
        assert len(proc.stderr.strip().splitlines()) == 1
        assert {k: v for k, v in _files(root).items() if not k.startswith("store/tmp/") and k != "store/lock"} == before
        assert list((root / "store/layers").iterdir()) == []
    finally:
        subprocess.run(["umount", str(root)], check=False)


# -- resume and interruption ------------------------------------------------------------------------


def _check_big(store: Store, image_id: str, big: BuiltImage) -> None:
    image = store.get(image_id)
    assert image.id == big.config_digest
    for i, layer in enumerate(store.layer_dirs(image)):
        want = blob_path(big.layout, big.layer_digests[i])
        import gzip
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(want.read_bytes()))) as tar:
            member = tar.getmember(f"data{i}/random.bin")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
        assert (layer / f"data{i}/random.bin").read_bytes() == data
    assert list((store.root / "tmp").iterdir()) == []


def test_dropped_connections_resume_with_range(registries: Registries, tmp_path: Path) -> None:
    """Each of the first 3 connections to get 4 MB into a body is cut; the pull resumes (206) and is right."""
    proxy = Proxy.start("127.0.0.1", registries.anon.port, cut_after=4 << 20, cuts=3)
    try:
        store = Store(tmp_path / "store")
        with _client() as client:
            image = pull(store, f"{proxy.host}/public/big:latest", client=client)
            stats = client.statistics()
        assert proxy.cuts_done == 3
        assert stats.resumes >= 3
        # Every byte fetched once: resuming did not start the blobs over (the config is a blob too).
        assert stats.blob_bytes == sum(blob_path(registries.big.layout, d).stat().st_size
                                       for d in (*registries.big.layer_digests, registries.big.config_digest))
        _check_big(store, image.id, registries.big)
    finally:
        proxy.stop()


def test_dropped_connection_resumes_on_a_200(registries: Registries, tmp_path: Path) -> None:
    """The redirect target ignores Range (answers 200): the reader skips what it already has."""
    proxy = Proxy.start("127.0.0.1", registries.files.port, cut_after=4 << 20, cuts=2)
    reg = None
    try:
        reg = Registry.start(tmp_path / "reg", registries.storage, redirect_base=f"http://localhost:{proxy.port}")
        store = Store(tmp_path / "store")
        with _client() as client:
            image = pull(store, f"{reg.host}/public/big:latest", client=client)
            assert client.statistics().resumes >= 2
        assert proxy.cuts_done == 2
        _check_big(store, image.id, registries.big)
    finally:
        if reg is not None:
            reg.stop()
        proxy.stop()


def test_killed_pull_restarts_and_ends_correct(registries: Registries, tmp_path: Path) -> None:
    """``kill -9`` a CLI pull mid-download (throttled to 4 MB/s per connection); the next pull works."""
    proxy = Proxy.start("127.0.0.1", registries.anon.port, rate=4 << 20)
    root = tmp_path / "store"
    ref = f"{proxy.host}/public/big:latest"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), "pull", ref],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while proxy.bytes_down < 8 << 20:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the pull never got going"
                time.sleep(0.02)
            assert any((root / "tmp").iterdir()), "nothing in progress in the store's tmp"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        assert not (root / "images").exists() or list((root / "images").iterdir()) == []
        out = run_layerfs("pull", "-q", ref, root=root)
        _check_big(Store(root), out.stdout.strip(), registries.big)
    finally:
        proxy.stop()


# -- output -----------------------------------------------------------------------------------------


def test_progress_plain_and_quiet(registries: Registries, tmp_path: Path) -> None:
    host = registries.anon.host
    ref = f"{host}/public/edge:oci"
    root = tmp_path / "store"
    first = run_layerfs("pull", ref, root=root)
    lines = first.stdout.splitlines()
    assert lines[0] == "oci: Pulling from public/edge"  # docker: the path, without the registry
    for layer in registries.edge.layer_digests:
        short = layer.partition(":")[2][:12]
        assert f"{short}: Pulling fs layer" in lines
        assert f"{short}: Pull complete" in lines
    assert any(line.startswith("Digest: sha256:") for line in lines)
    assert f"Status: Downloaded newer image for {ref}" in lines
    assert lines[-1] == ref
    second = run_layerfs("pull", ref, root=root).stdout.splitlines()
    assert f"Status: Image is up to date for {ref}" in second
    layer_lines = [line for line in second if re.match(r"[0-9a-f]{12}: ", line)]
    assert layer_lines and all(line.endswith(": Already exists") for line in layer_lines)
    quiet = run_layerfs("pull", "-q", ref, root=root)
    assert quiet.stdout == registries.edge.config_digest + "\n"
    assert quiet.stderr == ""


class _Flaky:
    """A reverse proxy to a registry that answers the first requests with an error status; with
    ``blank_messages``, the registry's error bodies lose their messages (as some registries send)."""

    def __init__(self, target_port: int, statuses: list[int], *, blank_messages: bool = False) -> None:
        import http.client
        import http.server
        import threading

        self.statuses = list(statuses)
        self.seen: list[int] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                if outer.statuses:
                    status = outer.statuses.pop(0)
                    outer.seen.append(status)
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if blank_messages and resp.status >= 400 and body:
                    doc = json.loads(body)
                    body = json.dumps({"errors": [{**e, "message": ""} for e in doc["errors"]]}).encode()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", resp.getheader("Content-Length", str(len(body)))
                                 if self.command == "HEAD" else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = _relay

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("statuses", [[503, 502], [429, 429, 500]], ids=["5xx", "429 then 500"])
def test_retries_with_backoff(registries: Registries, tmp_path: Path, statuses: list[int]) -> None:
    flaky = _Flaky(registries.anon.port, statuses)
    try:
        with _client() as client:
            image = pull(Store(tmp_path / "store"), f"127.0.0.1:{flaky.port}/public/multi:oci", client=client)
            assert client.statistics().retries == len(statuses)
        assert image.id in registries.multi.configs.values()
        assert flaky.seen == statuses
    finally:
        flaky.stop()


def test_retries_run_out(registries: Registries, tmp_path: Path) -> None:
    flaky = _Flaky(registries.anon.port, [503] * 10)
    root = tmp_path / "store"
    try:
        with _client(retries=2) as client, pytest.raises(LayerfsError) as info:
            pull(Store(root), f"127.0.0.1:{flaky.port}/public/multi:oci", client=client)
        assert str(info.value).startswith(f"pull 127.0.0.1:{flaky.port}/public/multi:oci: ")
        assert "503" in str(info.value)
        assert flaky.seen == [503] * 3
        assert not (root / "images").exists() or list((root / "images").iterdir()) == []
    finally:
        flaky.stop()


# -- many commands at once (issue 8 item 7) ----------------------------------------------------------


def _layer_published(root: Path, diff_id: str) -> bool:
    return (root / "layers" / diff_id[7:] / "layer.json").is_file()


def test_a_pull_blocks_no_other_command(registries: Registries, tmp_path: Path) -> None:
    """While a pull downloads (throttled to 1 MB/s), tag and rm go through at once; the rm's clean-up
    spares the layer the pull found already there (its only image is the one removed) and the layer
    it published that no image references yet; the pull then ends right."""
    host, shared = registries.anon.host, registries.shared
    root = tmp_path / "store"
    run_layerfs("pull", "-q", f"{host}/public/big:latest", root=root)  # holds shared's base layer
    run_layerfs("pull", "-q", f"{host}/public/multi:oci", root=root)  # something to tag
    proxy = Proxy.start("127.0.0.1", registries.anon.port, rate=1 << 20)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), "pull", "-q",
                                 f"{proxy.host}/public/shared:latest"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (_layer_published(root, shared.diff_ids[1]) and proxy.bytes_down > 1 << 20):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the pull never got going"
            time.sleep(0.02)
        started = time.monotonic()
        run_layerfs("tag", f"{host}/public/multi:oci", "other:1", root=root)
        run_layerfs("rm", f"{host}/public/big:latest", root=root)
        took = time.monotonic() - started
        assert proc.poll() is None, "the pull ended before the other commands did: they waited for it"
        assert took < 5, f"tag and rm took {took:.1f} s during a pull"
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        proxy.stop()
    store = Store(root)
    assert out.strip() == shared.config_digest
    assert [store.has_layer(d) for d in shared.diff_ids] == [True, True, True]
    assert not any(store.has_layer(d) for d in registries.big.diff_ids[1:])  # rm did remove big's own layers
    assert (store.layer_dirs(store.get(shared.config_digest))[2] / "data11/random.bin").stat().st_size == 10 << 20
    assert list((root / "tmp").iterdir()) == []


def test_two_pulls_sharing_a_layer_fetch_it_once(registries: Registries, tmp_path: Path) -> None:
    """big and shared have one base layer; pulled at once, its bytes cross the wire once."""
    proxy = Proxy.start("127.0.0.1", registries.anon.port, rate=4 << 20)
    root = tmp_path / "store"
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), "pull", "-q",
                                   f"{proxy.host}/public/{name}:latest"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("big", "shared")]
        outs = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
    finally:
        proxy.stop()
    big, shared = registries.big, registries.shared
    assert [o.strip() for o, _ in outs] == [big.config_digest, shared.config_digest]
    sizes = {d: blob_path(img.layout, d).stat().st_size for img in (big, shared) for d in img.layer_digests}
    once = sum(sizes.values())
    assert once < proxy.bytes_down < once + (2 << 20), "a shared layer was fetched twice"
    store = Store(root)
    _check_big(store, big.config_digest, big)
    assert store.get(shared.config_digest).diff_ids[0] == big.diff_ids[0]


# -- stalls (issue 13 item 5) ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_stalled_download_fails_naming_the_blob(registries: Registries, tmp_path: Path, how: str) -> None:
    """A registry sending a layer at one byte a second: with a stall timeout of 1 s (from
    LAYERFS_STALL_TIMEOUT or --stall-timeout) the pull resumes twice, then fails in seconds naming
    the blob, and leaves nothing behind but what a retry resumes from (issue 10): the bytes the
    big blobs got, and the small layer it completed (or its blob, while it waited for its lower)."""
    drip = Drip.start(registries.anon.port)
    root = tmp_path / "store"
    ref = f"{drip.host}/public/shared:latest"
    option = ["--stall-timeout", "1"] if how == "option" else []
    env = {**os.environ, "LAYERFS_STALL_TIMEOUT": "1" if how == "env" else "60"}
    try:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "layerfs", "--root", str(root), "pull", *option, ref],
                              capture_output=True, text=True, timeout=120, env=env)
        took = time.monotonic() - started
    finally:
        drip.stop()
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    big_layers = [d for d, size in zip(registries.shared.layer_digests, (10 << 20, 4096, 10 << 20)) if size > 4096]
    assert line.startswith(f"Error: pull {ref}: "), line
    assert any(f"blob {d}: stalled" in line for d in big_layers), line
    assert took < 30, f"the stalled pull took {took:.0f} s to fail"
    small = registries.shared.diff_ids[1][7:]
    left = sorted(p.name for p in (root / "tmp").iterdir())
    kept_layers = [n for n in left if n.startswith("resume-layer-")]
    assert kept_layers in ([], [f"resume-layer-{small}"]), left
    assert [n for n in left if not n.startswith("resume-")] == [], left
    # The small layer sits on a big one: it waits for that one to be published (its implicit
    # directories inherit from below), so what the pull kept of it may be its whole blob instead.
    kept_blobs = {n.removeprefix("resume-blob-") for n in left if n.startswith("resume-blob-")}
    small_blob = registries.shared.layer_digests[1][7:]
    assert kept_blobs <= {d[7:] for d in big_layers} | {small_blob}, left
    assert not (small_blob in kept_blobs and kept_layers), left
    assert sorted(p.name for p in (root / "layers").iterdir()) == [n.removeprefix("resume-layer-")
                                                                    for n in kept_layers]
    assert list((root / "images").iterdir()) == []


def test_the_next_command_cleans_what_a_killed_pull_left_at_once(registries: Registries, tmp_path: Path) -> None:
    """A pull killed while its layers drip in leaves tmp/layer-*; the next command that writes (a tag)
    removes it at once, while it spares those of a pull still running."""
    drip = Drip.start(registries.anon.port)
    root = tmp_path / "store"
    run_layerfs("pull", "-q", f"{registries.anon.host}/public/multi:oci", root=root)
    pulls = []

    def stages() -> set[str]:
        return {p.name for p in (root / "tmp").iterdir() if p.name.startswith("layer-")}

    try:
        for name in ("big", "shared"):
            before = stages()
            pulls.append(subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), "pull",
                                           f"{drip.host}/public/{name}:latest"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 60
            while not stages() - before or drip.dripping < (3 if name == "big" else 4):
                assert time.monotonic() < deadline, "the pull never started its layers"
                time.sleep(0.02)
        killed, running = pulls
        killed_stages = {f"layer-{d[7:]}" for d in registries.big.diff_ids[1:]}
        running_stages = {f"layer-{registries.shared.diff_ids[2][7:]}"}
        assert killed_stages | running_stages <= stages()
        killed.kill()
        killed.wait()
        run_layerfs("tag", f"{registries.anon.host}/public/multi:oci", "other:1", root=root)
        left = stages()
        assert not killed_stages & left, "the killed pull's stages were not removed"
        assert running_stages <= left, "a running pull's stage was removed"
        assert running.poll() is None
    finally:
        for proc in pulls:
            proc.kill()
            proc.wait()
        drip.stop()


# -- clear errors (issue 13 items 6 and 7) ---------------------------------------------------------


def test_a_missing_child_manifest_is_named(registries: Registries, tmp_path: Path) -> None:
    """An index whose manifest for this platform is gone from the registry: the error names it."""
    import urllib.request

    host, multi = registries.anon.host, registries.multi
    push(f"oci:{multi.layout}:multi", f"{host}/public/broken:oci", "--all", "--preserve-digests")
    index = json.loads(blob_path(multi.layout, multi.index_digest).read_bytes())
    [amd64] = [m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64"]
    request = urllib.request.Request(f"http://{host}/v2/public/broken/manifests/{amd64}", method="DELETE")
    urllib.request.urlopen(request, timeout=30).close()
    blank = _Flaky(registries.anon.port, [], blank_messages=True)  # a registry that says only the code
    try:
        for where in (host, f"127.0.0.1:{blank.port}"):
            proc = run_layerfs("pull", f"{where}/public/broken:oci", "--platform", "linux/amd64",
                               root=tmp_path / "store", check=False)
            assert proc.returncode == 1
            [line] = proc.stderr.strip().splitlines()
            assert line.startswith(f"Error: pull {where}/public/broken:oci: manifest {amd64} not found: "), line
            assert line.endswith(("manifest unknown", "manifest_unknown")), line
    finally:
        blank.stop()
