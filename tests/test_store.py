"""The store: what ``load``, ``images``, ``inspect``, ``tag`` and ``rm`` promise, and that a
failed or killed command leaves the store as it was (or cleans it on the next run).

Images here are OCI layouts written by the test itself (tiny gzip layers), so each case runs in
milliseconds; tests/test_load.py covers real images built with umoci and skopeo.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import require_root, require_tool, run_layerfs

from layerfs import BadImage, Conflict, ImageNotFound, Store, parse_reference
from layerfs._oci.digest import chain_ids
from layerfs._transfer.load import load

CHAIN_VECTOR = (
    ["sha256:34402835e972af8ffd24637c2413e4174991fd8830ac140df9303cc8153abc40",
     "sha256:12404d3c5ff0d4631d9ed2f4d084f76893257e46fe9fa57899693b4532e84ee6",
     "sha256:6dada18c71ff0aad9c3d8175baa3e1781535c4da861c9f96470757eed3499e8b",
     "sha256:fc5a483a7ecb9e1fa20816fac0340acf748d329633eca62a657ab667f9425e88"],
    ["sha256:34402835e972af8ffd24637c2413e4174991fd8830ac140df9303cc8153abc40",
     "sha256:82e46d129b0eeeb3530aa2a4919e3cffcfbbafd9388564891a876c3b8eaf722a",
     "sha256:5aa74f4e9355beac37ffc1cc9a10301c5e91bc30af50e3384f93cf104daffc80",
     "sha256:d6b171f6fec949abdb3fdfb4c00f2b06950705ea6bf9b30e761a2a81b5756efd"],
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_000_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_layout(path: Path, layers: list[dict[str, bytes]], tag: str = "latest", *,
                wrong_diff_id: int | None = None, corrupt_layer: int | None = None,
                created: str = "2024-01-02T03:04:05Z", big: int = 0) -> dict[str, object]:
    """Write an OCI layout with one image; returns its digests.  ``big`` adds a layer of that
    many random bytes (slow to unpack, for kill tests)."""
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> str:
        d = _sha(data)
        (path / "blobs" / "sha256" / d[7:]).write_bytes(data)
        return d

    tars = [layer_tar(f) for f in layers]
    if big:
        tars.append(layer_tar({"big.bin": os.urandom(big)}))
    diff_ids = [_sha(t) for t in tars]
    if wrong_diff_id is not None:
        diff_ids[wrong_diff_id] = _sha(b"not this layer")
    descs = []
    for i, t in enumerate(tars):
        z = gzip.compress(t, compresslevel=1)
        d = blob(z)
        if corrupt_layer == i:
            p = path / "blobs" / "sha256" / d[7:]
            raw = bytearray(p.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            p.write_bytes(bytes(raw))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": len(z)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": created,
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cfg = blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg,
                                      "size": len(config)},
                           "layers": descs}).encode()
    man = blob(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man, "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return {"config": cfg, "manifest": man, "diff_ids": diff_ids}


def store_contents(store: Store) -> dict[str, list[str]]:
    """What a store holds, directory by directory (tmp included)."""
    out = {}
    for sub in ("blobs/sha256", "layers", "chains", "images", "tmp"):
        p = store.root / sub
        out[sub] = sorted(os.listdir(p)) if p.exists() else []
    refs = store.root / "repositories.json"
    out["refs"] = [json.dumps(json.loads(refs.read_text())["Repositories"], sort_keys=True)] if refs.exists() else []
    return out


BASE = {"etc/os-release": b"ID=test\n", "bin/tool": b"#!/bin/sh\necho hi\n"}


def test_chain_ids_follow_the_image_spec_vector() -> None:
    diff_ids, expected = CHAIN_VECTOR
    assert chain_ids(diff_ids) == expected


def test_load_names_the_image_by_config_digest_and_shares_nothing_twice(store: Store, tmp_path: Path) -> None:
    info = make_layout(tmp_path / "app", [BASE, {"app/main": b"app"}], tag="1.0")
    [image] = load(store, f"oci:{tmp_path / 'app'}:1.0")
    assert image.id == info["config"]
    assert image.diff_ids == tuple(info["diff_ids"])  # type: ignore[arg-type]
    assert image.repo_tags == ("app:1.0",)
    assert image.repo_digests == ()  # like docker: only pulled or pushed images have repo digests
    dirs = store.layer_dirs(image)
    assert [d.parent.name for d in dirs] == [d[7:] for d in info["diff_ids"]]  # type: ignore[union-attr]
    assert (dirs[0] / "etc/os-release").read_bytes() == b"ID=test\n"
    assert (dirs[1] / "app/main").read_bytes() == b"app"
    assert image.size == sum(len(v) for v in BASE.values()) + 3
    # Chain records: ChainID, diff ID and parent of each layer.
    chains = [json.loads((store.root / "chains" / f"{c[7:]}.json").read_text()) for c in image.chain_ids]
    assert [c["parent"] for c in chains] == [None, image.chain_ids[0]]
    assert [c["diff_id"] for c in chains] == list(image.diff_ids)


def test_get_resolves_tags_ids_prefixes_and_digests(store: Store, tmp_path: Path) -> None:
    info = make_layout(tmp_path / "app", [BASE], tag="1.0")
    [image] = load(store, str(tmp_path / "app"), tags=["registry.example:5000/team/app:v1"])
    for name in ("app:1.0", "docker.io/library/app:1.0", image.id, image.id[7:], image.short_id, image.id[7:12],
                 "registry.example:5000/team/app:v1"):
        assert store.get(name).id == image.id, name
    for name in ("app", "app:2.0", "0000000", "registry.example:5000/team/app"):
        with pytest.raises(ImageNotFound, match="No such image"):
            store.get(name)
    assert store.get(image.id).manifest_digest == info["manifest"]


def test_an_image_whose_config_blob_is_missing_is_corrupt_not_missing(store: Store, tmp_path: Path) -> None:
    """Its record is there: "No such image" would send the user (and mount, which pulls what is
    missing) the wrong way; it is corruption, named with what repairs it."""
    make_layout(tmp_path / "app", [BASE], tag="1.0")
    [image] = load(store, str(tmp_path / "app"), tags=["app:1.0"])
    store.blob_path(image.id).unlink()
    with pytest.raises(BadImage) as err:
        store.get("app:1.0")
    assert not isinstance(err.value, ImageNotFound)
    assert str(err.value) == (f"image {image.id}: is corrupt: its config blob is missing "
                              f"(`layerfs verify --repair` removes it)")
    proc = run_layerfs("inspect", "app:1.0", root=store.root, check=False)
    assert proc.returncode == 1 and proc.stderr == f"Error: {err.value}\n"
    (store.root / "images" / f"{image.id[7:]}.json").unlink()  # the record gone too: no such image
    with pytest.raises(ImageNotFound, match="No such image: app:1.0"):
        store.get("app:1.0")


def test_shared_layers_are_stored_once_and_survive_removal_of_one_image(store: Store, tmp_path: Path) -> None:
    make_layout(tmp_path / "a", [BASE, {"a": b"a"}], tag="a")
    make_layout(tmp_path / "b", [BASE, {"b": b"b"}], tag="b")
    [a] = load(store, f"oci:{tmp_path / 'a'}")
    [b] = load(store, f"oci:{tmp_path / 'b'}")
    assert a.diff_ids[0] == b.diff_ids[0]
    assert len(os.listdir(store.root / "layers")) == 3
    with store.writer() as w:
        lines = w.remove("a:a")
    assert lines == ["Untagged: a:a", f"Deleted: {a.id}", f"Deleted: {a.diff_ids[1]}"]
    assert store.has_layer(b.diff_ids[0]) and store.has_layer(b.diff_ids[1])
    assert not store.has_layer(a.diff_ids[1])
    assert [i.id for i in store.images()] == [b.id]
    with store.writer() as w:
        w.remove(b.short_id)
    assert store_contents(store) == {"blobs/sha256": [], "layers": [], "chains": [], "images": [], "tmp": [],
                                     "refs": ["{}"]}


def test_removing_one_of_several_tags_only_untags(store: Store, tmp_path: Path) -> None:
    make_layout(tmp_path / "app", [BASE], tag="1.0")
    [image] = load(store, f"oci:{tmp_path / 'app'}", tags=["app:latest", "other/app:x"])
    with store.writer() as w:
        assert w.remove("app:latest") == ["Untagged: app:latest"]
    assert set(store.get(image.id).repo_tags) == {"app:1.0", "other/app:x"}
    with store.writer() as w, pytest.raises(Conflict, match=r"must be forced.*multiple repositories"):
        w.remove(image.short_id)
    with store.writer() as w:
        lines = w.remove(image.short_id, force=True)
    assert sorted(lines[:2]) == ["Untagged: app:1.0", "Untagged: other/app:x"]
    assert lines[2] == f"Deleted: {image.id}"
    assert store.images() == []


def test_an_image_in_use_by_a_mount_cannot_be_removed(store: Store, tmp_path: Path) -> None:
    """A mount record keeps its image while its process lives (the command starting a mount, then
    its daemon, which serves until its last mount in any namespace is gone); no longer after."""
    make_layout(tmp_path / "app", [BASE], tag="1.0")
    [image] = load(store, f"oci:{tmp_path / 'app'}")
    owner = subprocess.Popen(["sleep", "60"])
    try:
        store.register_mount(image.id, str(tmp_path / "mnt"), owner.pid)
        assert [m.image_id for m in store.mounts()] == [image.id]
        before = store_contents(store)
        for force in (False, True):
            with store.writer() as w, pytest.raises(Conflict, match=r"cannot be forced.*mount at"):
                w.remove("app:1.0", force=force)
        assert store_contents(store) == before
    finally:
        owner.kill()
        owner.wait()
    # The process is gone, so the record is stale: it no longer protects the image.
    assert store.mounts() == []
    with store.writer() as w:
        assert f"Deleted: {image.id}" in w.remove("app:1.0")
    assert os.listdir(store.root / "mounts") == []


@pytest.mark.parametrize("case", ["wrong_diff_id", "corrupt_layer"])
def test_a_bad_layer_leaves_the_store_as_it_was(store: Store, tmp_path: Path, case: str) -> None:
    make_layout(tmp_path / "good", [BASE], tag="good")
    load(store, f"oci:{tmp_path / 'good'}")
    before = store_contents(store)
    make_layout(tmp_path / "bad", [BASE, {"x": b"x"}, {"y": b"y"}], tag="bad", **{case: 2})
    proc = run_layerfs("load", f"oci:{tmp_path / 'bad'}", root=store.root, check=False)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: load oci:") and "digest mismatch" in line
    assert store_contents(store) == before


def test_a_killed_load_is_cleaned_by_the_next_command(store: Store, tmp_path: Path) -> None:
    make_layout(tmp_path / "big", [BASE], tag="big", big=256 << 20)
    proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(store.root), "load",
                             f"oci:{tmp_path / 'big'}"], stderr=subprocess.PIPE)
    # Wait until the unpacker is writing the big layer under tmp/, then kill it.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tmp = store.root / "tmp"
        if tmp.exists() and any((tmp / e / "diff" / "big.bin").exists() for e in os.listdir(tmp)):
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("the load never reached the big layer")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.listdir(store.root / "tmp"), "the killed load left nothing to clean: the test proves nothing"
    assert store.images() == []  # readers never see a half-loaded image
    # The next writer cleans up, then the load goes through.
    [image] = load(store, f"oci:{tmp_path / 'big'}")
    assert os.listdir(store.root / "tmp") == []
    assert (store.layer_dirs(image)[-1] / "big.bin").stat().st_size == 256 << 20


def test_leftovers_of_a_crash_are_removed_by_the_next_writer(store: Store, tmp_path: Path) -> None:
    make_layout(tmp_path / "app", [BASE], tag="1.0")
    [image] = load(store, f"oci:{tmp_path / 'app'}")
    before = store_contents(store)
    # What a writer killed at various points leaves: a temp file, a half-unpacked layer in tmp,
    # a layer renamed into place whose image record was never written, an unreferenced blob.
    (store.root / "tmp" / "repositories.json-0123").write_text("{")
    (store.root / "tmp" / "layer-abc" / "diff").mkdir(parents=True)
    orphan = store.root / "layers" / ("ab" * 32)
    (orphan / "diff").mkdir(parents=True)
    (orphan / "layer.json").write_text("{}")
    (store.root / "blobs" / "sha256" / ("cd" * 32)).write_bytes(b"{}")
    assert [i.id for i in store.images()] == [image.id]  # readers are not disturbed
    with store.writer():
        pass
    assert store_contents(store) == before


def test_concurrent_loads_both_succeed(store: Store, tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_layout(tmp_path / name, [BASE, {name: name.encode() * 1000}], tag=name)
    procs = [subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(store.root), "load", "-q",
                               f"oci:{tmp_path / n}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(t for i in store.images() for t in i.repo_tags) == ["a:a", "b:b"]
    assert len(os.listdir(store.root / "layers")) == 3


def test_images_and_inspect_commands(store: Store, tmp_path: Path) -> None:
    info = make_layout(tmp_path / "app", [BASE], tag="1.0", created="2001-01-01T00:00:00Z")
    out = run_layerfs("load", f"oci:{tmp_path / 'app'}", root=store.root).stdout.splitlines()
    assert out == ["Loaded image: app:1.0"]  # docker load prints the ID line for untagged images only
    table = run_layerfs("images", root=store.root).stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    row = table[1].split()
    assert row[:3] == ["app", "1.0", str(info["config"])[7:19]]
    assert row[3:5] == [row[3], "years"] and row[-2:] == ["ago", f"{sum(len(v) for v in BASE.values())}B"]
    assert run_layerfs("images", "-q", root=store.root).stdout.split() == [str(info["config"])[7:19]]
    [doc] = json.loads(run_layerfs("inspect", "app:1.0", root=store.root).stdout)
    assert doc["Id"] == info["config"]
    assert doc["RepoTags"] == ["app:1.0"]
    assert doc["RootFS"] == {"Type": "layers", "Layers": info["diff_ids"]}
    assert (doc["Architecture"], doc["Os"], doc["Config"]["Cmd"]) == ("amd64", "linux", ["/bin/sh"])
    assert Path(doc["Layers"][0]["Path"], "etc/os-release").is_file()
    missing = run_layerfs("inspect", "nope:1", root=store.root, check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: No such image: nope:1"


@pytest.mark.parametrize("source, message", [
    ("oci:/nonexistent/layout", "missing oci-layout"),
    ("bogus:/x", "unknown transport 'bogus'"),
    ("/nonexistent/path", "no such file or directory"),
])
def test_bad_sources_give_one_line(store: Store, source: str, message: str) -> None:
    proc = run_layerfs("load", source, root=store.root, check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_tag_digests_and_json_listing(store: Store, tmp_path: Path) -> None:
    info = make_layout(tmp_path / "app", [BASE], tag="1.0")
    load(store, f"oci:{tmp_path / 'app'}")
    run_layerfs("tag", "app:1.0", "localhost:5000/team/app:stable", root=store.root)
    rows = [json.loads(line) for line in run_layerfs("images", "--format", "json", root=store.root).stdout.splitlines()]
    assert sorted((r["Repository"], r["Tag"]) for r in rows) == [("app", "1.0"), ("localhost:5000/team/app", "stable")]
    assert {r["ID"] for r in rows} == {str(info["config"])[7:19]}
    # A repo digest, as a pull records it, shows in the DIGEST column of its repository only.
    with store.writer() as w:
        w.add_image(str(info["config"]), manifest_digest=str(info["manifest"]),
                    tags=[parse_reference("app:1.0")])
    table = run_layerfs("images", "--digests", "app", root=store.root).stdout.splitlines()
    assert table[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    assert [line.split()[:3] for line in table[1:]] == [["app", "1.0", str(info["manifest"])]]
    bad = run_layerfs("tag", "app:1.0", "Bad/Name", root=store.root, check=False)
    assert bad.returncode == 1 and "invalid reference format" in bad.stderr


@pytest.mark.parametrize("compress", [["gzip"], ["xz", "-T1"], ["zstd", "-q"]])
def test_compressed_docker_archives_load_like_docker_load(store: Store, tmp_path: Path, compress: list[str]) -> None:
    """``docker save | gzip`` (or xz, zstd) loads; its layers, read by parallel threads from one
    archive, must each come out whole."""
    require_tool("skopeo", compress[0])
    info = make_layout(tmp_path / "app", [{"a": os.urandom(1 << 20)}, {"b": os.urandom(1 << 20)},
                                          {"c": os.urandom(1 << 20)}], tag="1")
    archive = tmp_path / "app.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{tmp_path / 'app'}:1", f"docker-archive:{archive}:team/app:1"],
                   check=True)
    subprocess.run([*compress, str(archive)], check=True)
    [packed] = [p for p in tmp_path.iterdir() if p.name.startswith("app.tar.")]
    out = run_layerfs("load", str(packed), root=store.root).stdout.splitlines()
    assert out == ["Loaded image: team/app:1"]
    assert run_layerfs("images", "-q", "--no-trunc", root=store.root).stdout.split() == [info["config"]]
    assert os.listdir(store.root / "tmp") == []
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(b"not a tar"))
    proc = run_layerfs("load", str(bad), root=store.root, check=False)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr


# -- leases: temporary names, holds and the lock (issue 8 items 4, 7, 14) ----------------------


def _hold_temp_names(store: Store) -> subprocess.Popen[str]:
    """A process that makes a leased temp file and a leased temp dir in the store, says where, and
    waits (until its stdin closes, or it is killed)."""
    script = ("import sys; from layerfs import Store; s = Store(sys.argv[1]); "
              "f = s.temp_file('x.idx'); f.write_all(b'half'); d = s.temp_dir('layer'); "
              "(d.path / 'diff').mkdir(); print(f.path.name, d.path.name, flush=True); sys.stdin.read()")
    return subprocess.Popen([sys.executable, "-c", script, str(store.root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_clean_up_removes_temp_names_only_when_their_owner_is_gone(store: Store) -> None:
    owner = _hold_temp_names(store)
    assert owner.stdout is not None
    names = owner.stdout.readline().split()
    assert len(names) == 2
    try:
        with store.writer():
            pass
        assert sorted(os.listdir(store.tmp_dir)) == sorted(names), "a live owner's temp names were removed"
    finally:
        owner.kill()
        owner.wait()
    with store.writer():  # the owner is gone: its leftovers go at once
        pass
    assert os.listdir(store.tmp_dir) == []


def _fill(path: Path) -> None:
    """Write ``path`` until its file system is full (a size-limited tmpfs)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for size in (64 << 10, 512):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
    assert os.statvfs(path).f_bavail == 0


def test_rm_works_with_zero_bytes_free(tmp_path: Path) -> None:
    """Issue 8 item 14: on a full store, rm by tag, rm -f by ID and untagging all work; with no
    room at all for a write, the error says which step failed."""
    require_root()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        store = Store(small / "store")
        make_layout(tmp_path / "a", [BASE, {"a": os.urandom(256 << 10)}], tag="a")
        make_layout(tmp_path / "b", [BASE, {"b": os.urandom(256 << 10)}], tag="b")
        make_layout(tmp_path / "c", [BASE, {"c": os.urandom(256 << 10)}], tag="c")
        [a] = load(store, f"oci:{tmp_path / 'a'}")
        [b] = load(store, f"oci:{tmp_path / 'b'}", tags=["other/b:1"])
        [c] = load(store, f"oci:{tmp_path / 'c'}", tags=["c:2"])
        filler = small / "filler"
        _fill(filler)
        proc = run_layerfs("rm", "a:a", root=store.root, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[:2] == ["Untagged: a:a", f"Deleted: {a.id}"]
        _fill(filler)
        proc = run_layerfs("rm", "-f", b.id, root=store.root, check=False)
        assert proc.returncode == 0, proc.stderr
        assert f"Deleted: {b.id}" in proc.stdout.splitlines()
        _fill(filler)
        proc = run_layerfs("rm", "c:2", root=store.root, check=False)  # only untags: frees nothing
        assert (proc.returncode, proc.stdout) == (0, "Untagged: c:2\n"), proc.stderr
        assert [i.repo_tags for i in store.images()] == [("c:c",)]
        # No room at all (no reserve either): the error names the step.
        filler.unlink()
        run_layerfs("tag", "c:c", "c:3", root=store.root)
        assert (store.root / "reserve").is_file()  # a writer that succeeds keeps the reserve
        os.unlink(store.root / "reserve")
        _fill(filler)
        proc = run_layerfs("rm", "c:3", root=store.root, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip() == "Error: rm c:3: write repositories.json: No space left on device"
        assert sorted(store.get(c.id).repo_tags) == ["c:3", "c:c"]
        filler.unlink()
        assert os.listdir(store.tmp_dir) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
