"""``layerfs push``: images to a real registry (Debian's docker-registry), checked by skopeo and by
pulling them back.

- a pulled image pushed to another repository of the same registry is mounted there, not sent
  again, and keeps its manifest digest; pushed to another registry, its blobs are uploaded from
  what the store kept, and again the digest is the same;
- a pull into a second store of what was pushed gives the same image (ID and tree);
- a committed image (a new layer) pushes and comes back with its file;
- Basic auth (after ``layerfs login``) and bearer tokens work; anonymous pushes a registry refuses
  fail in one line;
- chunked uploads (PATCH) give the same result as one PUT.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _images import BuiltImage, busybox_image, edge_image  # noqa: F401 - fixtures
from _registry_server import Registry, TokenServer, push, write_htpasswd
from conftest import require_fuse, require_root, require_tool, run_layerfs

from layerfs import Store, _proc

USER, PASSWORD = "pusher", "s3cret"


@dataclass
class Registries:
    a: Registry
    b: Registry
    basic: Registry
    token: Registry


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory, edge_image: BuiltImage) -> Iterator[Registries]:  # noqa: F811
    require_root()
    require_tool("docker-registry", "skopeo")
    work = tmp_path_factory.mktemp("push-registries")
    started: list[Registry | TokenServer] = []
    try:
        (work / "a").mkdir()
        (work / "b").mkdir()
        (work / "auth").mkdir()
        a = Registry.start(work, work / "a")
        started.append(a)
        b = Registry.start(work, work / "b")
        started.append(b)
        htpasswd = write_htpasswd(work / "htpasswd", {USER: PASSWORD})
        basic = Registry.start(work, work / "auth", htpasswd=htpasswd)
        started.append(basic)
        tokens = TokenServer.start(work / "tokens", users={USER: PASSWORD}, public=("public/",))
        started.append(tokens)
        token = Registry.start(work, work / "auth", token=tokens)
        started.append(token)
        push(edge_image.source, f"{a.host}/src/edge:1")
        yield Registries(a, b, basic, token)
    finally:
        for server in reversed(started):
            server.stop()


def _skopeo_digest(ref: str, *extra: str) -> str:
    out = subprocess.run(["skopeo", "--insecure-policy", "inspect", "--tls-verify=false", *extra, f"docker://{ref}"],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)["Digest"])


def test_a_pulled_image_pushes_with_its_digests(registries: Registries, tmp_path: Path) -> None:
    a, b = registries.a.host, registries.b.host
    store = tmp_path / "store"
    src = f"{a}/src/edge:1"
    run_layerfs("pull", "-q", src, root=store)
    original = _skopeo_digest(src)
    # the same registry, another repository: mounted, nothing uploaded
    out = run_layerfs("push", src, f"{a}/copy/edge:2", root=store).stdout
    assert "Mounted from src/edge" in out and "Pushed" not in out, out
    assert f"2: digest: {original} size:" in out
    assert _skopeo_digest(f"{a}/copy/edge:2") == original
    # again: every blob is there already
    out = run_layerfs("push", src, f"{a}/copy/edge:2", root=store).stdout
    assert "Layer already exists" in out and "Mounted" not in out
    # another registry: uploaded from the blobs the store kept, same manifest digest
    out = run_layerfs("push", src, f"{b}/other/edge:1", root=store).stdout
    assert "Pushed" in out
    assert _skopeo_digest(f"{b}/other/edge:1") == original
    # and a second store pulls the same image back
    second = tmp_path / "second"
    image_id = run_layerfs("pull", "-q", f"{b}/other/edge:1", root=second).stdout.strip()
    assert image_id == Store(store).get(src).id


def test_a_committed_image_pushes_and_comes_back(registries: Registries, tmp_path: Path) -> None:
    require_fuse()
    a, b = registries.a.host, registries.b.host
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    run_layerfs("pull", "-q", f"{a}/src/edge:1", root=store)
    try:
        run_layerfs("mount", "--name", "w", f"{a}/src/edge:1", str(mnt), root=store)
        (mnt / "committed.txt").write_text("travelled\n")
        run_layerfs("commit", "w", f"{b}/made/here:1", root=store)
    finally:
        if os.path.realpath(mnt) in _proc.mountpoints():
            run_layerfs("umount", str(mnt), root=store)
    digest = run_layerfs("push", "-q", f"{b}/made/here:1", root=store).stdout.strip()
    assert digest == _skopeo_digest(f"{b}/made/here:1")
    second = tmp_path / "second"
    run_layerfs("pull", "-q", f"{b}/made/here:1", root=second)
    run_layerfs("mount", "--read-only", f"{b}/made/here:1", str(mnt), root=second)
    try:
        assert (mnt / "committed.txt").read_text() == "travelled\n"
    finally:
        run_layerfs("umount", str(mnt), root=second)


def test_push_with_basic_auth_and_tokens(registries: Registries, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_layerfs("pull", "-q", f"{registries.a.host}/src/edge:1", root=store)
    env = {"DOCKER_CONFIG": str(tmp_path / "docker"), "REGISTRY_AUTH_FILE": str(tmp_path / "none.json")}
    for reg in (registries.basic, registries.token):
        target = f"{reg.host}/private/edge:1"
        refused = run_layerfs("push", f"{registries.a.host}/src/edge:1", target, root=store, check=False, env=env)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"Error: push {target}: ")
        run_layerfs("login", reg.host, "-u", USER, "--password-stdin", root=store, input=PASSWORD.encode(), env=env)
        run_layerfs("push", f"{registries.a.host}/src/edge:1", target, root=store, env=env)
        assert _skopeo_digest(target, "--creds", f"{USER}:{PASSWORD}") == _skopeo_digest(
            f"{registries.a.host}/src/edge:1")


def test_chunked_uploads_give_the_same_image(registries: Registries, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from layerfs._transfer import push as push_module

    store = Store(tmp_path / "store")
    run_layerfs("pull", "-q", f"{registries.a.host}/src/edge:1", root=store.root)
    monkeypatch.setattr(push_module, "CHUNK", 4096)  # every layer blob of the edge image is bigger
    target = f"{registries.b.host}/chunked/edge:1"
    digest = push_module.push(store, f"{registries.a.host}/src/edge:1", target)
    assert digest == _skopeo_digest(target) == _skopeo_digest(f"{registries.a.host}/src/edge:1")


def test_push_needs_a_reference(registries: Registries, tmp_path: Path, busybox_image: BuiltImage) -> None:  # noqa: F811
    store = tmp_path / "store"
    run_layerfs("load", "--tag", "local:1", busybox_image.source, root=store)
    image_id = json.loads(run_layerfs("inspect", "local:1", root=store).stdout)[0]["Id"]
    bad = run_layerfs("push", image_id, root=store, check=False)
    assert bad.returncode == 1 and "give the reference to push to" in bad.stderr
    # a loaded image (its layers' blobs kept) pushes to a registry and a pull gives it back
    target = f"{registries.b.host}/loaded/bb:1"
    run_layerfs("push", "local:1", target, root=store)
    assert run_layerfs("pull", "-q", target, root=tmp_path / "second").stdout.strip() == image_id
