"""``layerfs save``: archives that ``layerfs load`` and skopeo accept, with the same image IDs.

- oci-archive and docker-archive of one image: skopeo reads them (the config it finds hashes to the
  image ID), and a load into another store gives the same image ID and layer tree;
- several images in one archive load back as several images with their names;
- a pulled image saved as oci-archive keeps its manifest digest (skopeo copies it to a registry
  with the same digest);
- the archive streams to a pipe; a terminal is refused; a name the store lacks fails in one line
  and writes no file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from _images import BuiltImage, busybox_image, edge_image  # noqa: F401 - fixtures
from conftest import require_root, require_tool, run_layerfs

from layerfs import Store


def _skopeo_config_id(source: str) -> str:
    raw = subprocess.run(["skopeo", "--insecure-policy", "inspect", "--config", "--raw", source],
                         capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.fixture
def store(tmp_path: Path, busybox_image: BuiltImage, edge_image: BuiltImage) -> Path:  # noqa: F811
    require_root()
    require_tool("skopeo")
    root = tmp_path / "store"
    run_layerfs("load", "--tag", "bb:1", busybox_image.source, root=root)
    run_layerfs("load", "--tag", "edge:1", edge_image.source, root=root)
    return root


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_save_then_skopeo_and_load_agree(fmt: str, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    run_layerfs("save", "--format", fmt, "-o", str(out), "edge:1", root=store)
    image_id = Store(store).get("edge:1").id
    assert _skopeo_config_id(f"{fmt}:{out}") == image_id
    other = tmp_path / "other"
    loaded = run_layerfs("load", f"{fmt}:{out}", root=other).stdout
    assert "Loaded image: edge:1" in loaded
    again = Store(other).get("edge:1")
    assert again.id == image_id
    assert [Store(other).layer_info(d)["tree"] for d in again.diff_ids] == \
        [Store(store).layer_info(d)["tree"] for d in again.diff_ids]


def test_several_images_in_one_archive(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "both.tar"
    run_layerfs("save", "-o", str(out), "bb:1", "edge:1", root=store)
    other = tmp_path / "other"
    run_layerfs("load", f"oci-archive:{out}", root=other)
    names = {t for line in run_layerfs("images", "--format", "json", root=other).stdout.splitlines()
             for t in [json.loads(line)["Repository"] + ":" + json.loads(line)["Tag"]]}
    assert names == {"bb:1", "edge:1"}


def test_a_saved_image_keeps_its_manifest_digest(store: Path, tmp_path: Path) -> None:
    image = Store(store).get("edge:1")
    out = tmp_path / "img.tar"
    run_layerfs("save", "-o", str(out), "edge:1", root=store)
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(layout)], check=True)
    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_digest]


def test_streams_to_a_pipe_and_fails_cleanly(store: Path, tmp_path: Path) -> None:
    proc = subprocess.run(f"layerfs --root {store} save bb:1 | tar -tf -", shell=True, capture_output=True, text=True,
                          env={"PATH": f"{Path(__file__).resolve().parents[1] / '.venv' / 'bin'}:/usr/bin:/bin"})
    assert proc.returncode == 0 and "index.json" in proc.stdout.split() and "oci-layout" in proc.stdout.split()
    bad = run_layerfs("save", "-o", str(tmp_path / "x.tar"), "bb:1", "nosuch:1", root=store, check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["Error: No such image: nosuch:1"]
    assert not list(tmp_path.glob("*x.tar*"))
