"""Store upkeep as a docker user expects it: ``image prune``, ``container prune``, ``system prune``,
``verify [--repair]``.

- prune removes only what nothing uses (a tagged image, one a container was made from, one a mount
  uses, a mounted container all stay), prints docker's lines and the space freed, asks first (and
  refuses without a terminal unless -f);
- verify passes a healthy store, names each broken part in one line (a blob whose bytes changed, a
  layer file changed on disk, a missing chain record, a dangling reference, a stale mount record,
  a damaged merged index), and --repair removes them so that the store is healthy again and the
  image comes back with the next load; never what a live mount uses, never a container.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _images import BuiltImage, busybox_image, edge_image  # noqa: F401 - fixtures
from conftest import require_fuse, require_root, run_layerfs

from layerfs import _proc


@pytest.fixture
def root(tmp_path: Path, busybox_image: BuiltImage) -> Iterator[Path]:  # noqa: F811
    require_root()
    require_fuse()
    store = tmp_path / "store"
    run_layerfs("load", "--tag", "bb:1", busybox_image.source, root=store)
    yield store
    for m in [m.mountpoint for m in _proc.mounts() if m.mountpoint.startswith(str(tmp_path))]:
        subprocess.run(["umount", "-l", m], capture_output=True)


def _ids(store: Path) -> set[str]:
    return {json.loads(line)["ID"] for line in run_layerfs("images", "--no-trunc", "--format", "json",
                                                            root=store).stdout.splitlines()}


def test_image_prune_removes_dangling_images_only(root: Path, edge_image: BuiltImage) -> None:  # noqa: F811
    run_layerfs("load", edge_image.source, root=root)
    edge_id = edge_image.config_digest
    for tag in json.loads(run_layerfs("inspect", edge_id, root=root).stdout)[0]["RepoTags"]:
        run_layerfs("tag", "bb:1", tag, root=root)  # the tag moves away, as after a rebuild
    assert edge_id in _ids(root)  # untagged: dangling now
    out = run_layerfs("image", "prune", "-f", root=root).stdout
    assert "Deleted Images:" in out and f"deleted: {edge_id}" in out
    assert out.strip().splitlines()[-1].startswith("Total reclaimed space: ")
    assert out.strip().splitlines()[-1] != "Total reclaimed space: 0B"
    assert edge_id not in _ids(root) and len(_ids(root)) == 1  # bb:1 stays
    assert run_layerfs("image", "prune", "-f", root=root).stdout.strip() == "Total reclaimed space: 0B"


def test_prune_all_keeps_what_containers_and_mounts_use(root: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_layerfs("mount", "--name", "c1", "bb:1", str(mnt), root=root)
    run_layerfs("image", "prune", "-af", root=root)
    assert len(_ids(root)) == 1  # a mount and a container use it
    out = run_layerfs("container", "prune", "-f", root=root).stdout
    assert "Deleted Containers:" not in out  # c1 is mounted
    run_layerfs("umount", str(mnt), root=root)
    out = run_layerfs("system", "prune", "-af", root=root).stdout
    assert "Deleted Containers:" in out and "Deleted Images:" in out
    assert _ids(root) == set() and run_layerfs("ps", "-q", root=root).stdout == ""
    assert os.listdir(root / "layers") == []


def test_prune_asks_and_needs_a_terminal_or_f(root: Path) -> None:
    refused = run_layerfs("image", "prune", root=root, check=False)
    assert refused.returncode == 1 and "-f" in refused.stderr


def test_verify_passes_a_healthy_store(root: Path) -> None:
    proc = run_layerfs("verify", root=root)
    assert proc.stdout == "" and "ok:" in proc.stderr


def _layer_dir(store: Path) -> Path:
    (name,) = os.listdir(store / "layers")
    return store / "layers" / name / "diff"


@pytest.mark.parametrize("damage", ["blob bytes", "layer file", "chain record", "reference", "mount record",
                                    "merged index"])
def test_verify_names_each_broken_part_and_repair_heals(damage: str, root: Path, tmp_path: Path,
                                                        busybox_image: BuiltImage) -> None:  # noqa: F811
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_layerfs("mount", "--read-only", "bb:1", str(mnt), root=root)  # makes the merged index
    run_layerfs("umount", str(mnt), root=root)
    image_id = json.loads(run_layerfs("inspect", "bb:1", root=root).stdout)[0]["Id"]
    if damage == "blob bytes":
        path = root / "blobs" / "sha256" / image_id[7:]
        data = path.read_bytes()
        path.write_bytes(data.replace(b"amd64", b"AMD64") if b"amd64" in data else data + b" ")
        expect = f"blob {image_id}: content does not match"
    elif damage == "layer file":
        (_layer_dir(root) / "etc" / "passwd").write_text("changed\n")
        expect = "the directory changed since it was unpacked"
    elif damage == "chain record":
        for p in (root / "chains").iterdir():
            p.unlink()
        expect = f"image {image_id}: chain"
    elif damage == "reference":
        repos = json.loads((root / "repositories.json").read_text())
        repos["Repositories"]["docker.io/library/ghost"] = {"docker.io/library/ghost:1": "sha256:" + "0" * 64}
        (root / "repositories.json").write_text(json.dumps(repos))
        expect = "reference docker.io/library/ghost:1: names image"
    elif damage == "mount record":
        (root / "mounts" / ("f" * 32 + ".json")).write_text(json.dumps(
            {"image_id": image_id, "mountpoint": "/nowhere", "pid": 999999, "since": "x", "start": 1}))
        expect = "mount record ffff"
    else:
        (index,) = (root / "state" / "merged").glob("*.idx")
        data = bytearray(index.read_bytes())
        data[200:260] = b"\xff" * 60
        index.write_bytes(bytes(data))
        expect = "merged index"
    found = run_layerfs("verify", root=root, check=False)
    assert found.returncode == 1 and expect in found.stdout, found.stdout
    assert all(": " in line for line in found.stdout.splitlines())
    repaired = run_layerfs("verify", "--repair", root=root, check=False)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert run_layerfs("verify", root=root).returncode == 0
    # whatever went, a load brings back and the image mounts again
    run_layerfs("load", "--tag", "bb:1", busybox_image.source, root=root)
    run_layerfs("mount", "--read-only", "bb:1", str(mnt), root=root)
    assert (mnt / "bin" / "busybox").exists()
    run_layerfs("umount", str(mnt), root=root)


def test_verify_repair_never_touches_a_mounted_layer_or_a_container(root: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_layerfs("mount", "--name", "keep", "bb:1", str(mnt), root=root)
    (mnt / "mine").write_text("my changes\n")
    (_layer_dir(root) / "etc" / "group").write_text("changed under a live mount\n")
    out = run_layerfs("verify", "--repair", root=root, check=False)
    assert out.returncode == 1 and "not repaired: in use by a live mount" in out.stdout
    assert (mnt / "mine").read_text() == "my changes\n"
    run_layerfs("umount", str(mnt), root=root)
    names = [json.loads(line)["Names"] for line in run_layerfs("ps", "--format", "json", root=root).stdout.splitlines()]
    assert names == ["keep"]
