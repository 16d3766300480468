"""What docker users look for in the store (issue 10, "What they look for and do not find"):
``history``, ``system df``, ``images --filter`` / ``-a``, and ``--format`` Go templates on
``images``, ``inspect``, ``ps`` and ``history``, with docker's semantics.

The oracle is what the test wrote: each image is a layout built here with a known config
(history, labels, created times) and layers of known sizes, so the expected rows follow from it
by docker's rules (moby's ``ImageService.Images`` and ``ImageHistory``, docker/cli's formatter
contexts), not from layerfs.  Each test runs the real ``layerfs`` command and checks the output,
the exit status, and that a failing command leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _images import MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST, TarEntry, gzip_bytes, sha256, tar_bytes
from _oracles import blob_path
from conftest import require_fuse, require_root

from layerfs import _proc

REF_NAME = "org.opencontainers.image.ref.name"

#: Each layer: one file of this many bytes (what the store records as the layer's size).
LAYER_BYTES = {"base": 1000, "app1": 500, "app2": 300, "lone": 50}
LONG_RUN = "/bin/sh -c apt-get update && apt-get install -y curl ca-certificates"


@dataclasses.dataclass(frozen=True)
class Layer:
    blob: bytes
    diff_id: str
    size: int


def _layer(name: str) -> Layer:
    tar = tar_bytes([TarEntry(f"{name}/", tarfile.DIRTYPE, mode=0o755),
                     TarEntry(f"{name}/data", data=b"x" * LAYER_BYTES[name])])
    return Layer(gzip_bytes(tar), sha256(tar), LAYER_BYTES[name])


LAYERS = {name: _layer(name) for name in LAYER_BYTES}


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = sha256(data)
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_image(layout: Path, tag: str | None, layers: Sequence[str], config: dict[str, Any]) -> str:
    """Add an image to an OCI layout with ``config`` as given (history included); returns its ID.
    ``tag`` None: the index entry has no name, so that it loads untagged."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    cfg = {"architecture": "amd64", "os": "linux", **config,
           "rootfs": {"type": "layers", "diff_ids": [LAYERS[n].diff_id for n in layers]}}
    config_desc = {"mediaType": MEDIA_CONFIG, **_blob(layout, json.dumps(cfg).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc,
                "layers": [{"mediaType": MEDIA_LAYER_GZIP, **_blob(layout, LAYERS[n].blob)} for n in layers]}
    entry = {"mediaType": MEDIA_MANIFEST, **_blob(layout, json.dumps(manifest).encode())}
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"].append(entry)
    index_path.write_text(json.dumps(index))
    return str(config_desc["digest"])


@dataclasses.dataclass(frozen=True)
class Store:
    root: Path
    ids: dict[str, str]  # "app:1", "app:2", "other/tool:1", "untagged", "bad" -> image ID
    configs: dict[str, dict[str, Any]]


def layerfs(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI, in UTC (docker prints local times)."""
    return subprocess.run([sys.executable, "-m", "layerfs", "--root", str(root), *args], capture_output=True,
                          text=True, env={**os.environ, "TZ": "UTC"}, timeout=300, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def one_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


def listing(root: Path) -> list[str]:
    """What the store holds (to check that a failing command changed nothing)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "tmp" not in p.relative_to(root).parts)


APP1_HISTORY = [
    {"created": "2021-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:base in / "},
    {"created": "2021-01-02T00:00:00Z", "created_by": "/bin/sh -c #(nop)  ENV\tA=1", "empty_layer": True},
    {"created": "2021-01-03T00:00:00Z", "created_by": LONG_RUN, "comment": "built by the test"},
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store with app:1 (base + app1, 2021, label tier=web), app:2 (base + app2, 2022,
    tier=db), other/tool:1 (base, 2023), an untagged image (lone, 2020) and bad:1 (a history
    listing more layers than the image has, 2019)."""
    work = tmp_path_factory.mktemp("history-df")
    root = work / "store"
    configs = {
        "app:1": {"created": "2021-01-03T00:00:00Z", "history": APP1_HISTORY,
                  "config": {"Env": ["PATH=/bin", "A=<b>"], "Cmd": ["/bin/sh"], "Labels": {"tier": "web"}}},
        "app:2": {"created": "2022-01-01T00:00:00Z", "config": {"Labels": {"tier": "db", "extra": "1"}},
                  "history": [{"created": "2021-01-01T00:00:00Z", "created_by": "ADD base"},
                              {"created": "2022-01-01T00:00:00Z", "created_by": "ADD app2"}]},
        "other/tool:1": {"created": "2023-01-01T00:00:00Z", "history": [{"created_by": "ADD base"}]},
        "untagged": {"created": "2020-01-01T00:00:00Z", "history": [{"created_by": "ADD lone"}]},
        "bad:1": {"created": "2019-01-01T00:00:00Z",
                  "history": [{"created_by": "ADD base"}, {"created_by": "ADD more"}]},
    }
    layers = {"app:1": ["base", "app1"], "app:2": ["base", "app2"], "other/tool:1": ["base"], "untagged": ["lone"],
              "bad:1": ["base"]}
    ids = {}
    for name, config in configs.items():
        layout = work / name.replace("/", "_").replace(":", "_")
        ids[name] = write_image(layout, None if name == "untagged" else "t", layers[name], config)
        tags = [] if name == "untagged" else ["--tag", name]
        ok(layerfs("load", *tags, f"oci:{layout}", root=root))
    # Loading a named layout also names it after its directory: keep only the names above.
    for line in ok(layerfs("images", "--format", "{{.Repository}}:{{.Tag}}", root=root)).split():
        if line not in ids and line != "<none>:<none>":
            ok(layerfs("rm", line, root=root))
    return Store(root, ids, configs)


def short(image_id: str) -> str:
    return image_id[7:19]


# -- history ----------------------------------------------------------------------------------------


def test_history_rows_are_the_configs_history_newest_first(images: Store) -> None:
    """docker history: a row per history entry, newest first; the image's ID on the newest row,
    <missing> below; each entry that made a layer shows that layer's unpacked size, an
    empty_layer entry 0B; CREATED BY has tabs as spaces and is cut to 45 columns with …"""
    fmt = "{{.ID}}|{{.CreatedSince}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}"
    rows = [line.split("|") for line in ok(layerfs("history", "--format", fmt, "app:1", root=images.root)).splitlines()]
    assert [r[0] for r in rows] == [short(images.ids["app:1"]), "<missing>", "<missing>"]
    assert [r[1].endswith(" years ago") for r in rows] == [True] * 3
    assert [r[2] for r in rows] == [LONG_RUN[:44] + "…", "/bin/sh -c #(nop)  ENV A=1",
                                    "/bin/sh -c #(nop) ADD file:base in / "]
    assert [r[3] for r in rows] == ["500B", "0B", "1kB"]
    assert [r[4] for r in rows] == ["built by the test", "", ""]
    table = ok(layerfs("history", "app:1", root=images.root)).splitlines()
    header = table[0]
    assert header.split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert header.startswith("IMAGE          CREATED")  # a 12-digit ID and 3 spaces
    column = header.index("CREATED BY")
    assert [line[column:column + 10] for line in table[1:]] == [LONG_RUN[:10], "/bin/sh -c", "/bin/sh -c"]
    assert table[1].startswith(short(images.ids["app:1"]) + "   ") and table[2].startswith("<missing>   ")


def test_history_options(images: Store) -> None:
    """--no-trunc: the full ID and instruction; -q: the IDs alone; -H=false: RFC 3339 times and
    sizes in bytes; --format json: an object per row with docker's fields."""
    full = ok(layerfs("history", "--no-trunc", "--format", "{{.ID}} {{.CreatedBy}}", "app:1", root=images.root))
    assert full.splitlines()[0] == f"{images.ids['app:1']} {LONG_RUN}"
    assert ok(layerfs("history", "-q", "app:1", root=images.root)).split() == \
        [short(images.ids["app:1"]), "<missing>", "<missing>"]
    for flag in ("-H=false", "--human=false"):
        rows = ok(layerfs("history", flag, "--format", "{{.CreatedSince}} {{.Size}}", "app:1", root=images.root))
        assert rows.splitlines() == ["2021-01-03T00:00:00Z 500", "2021-01-02T00:00:00Z 0", "2021-01-01T00:00:00Z 1000"]
    assert ok(layerfs("history", "-H", "app:1", root=images.root)) == ok(layerfs("history", "app:1", root=images.root))
    lines = ok(layerfs("history", "--format", "json", "app:1", root=images.root)).splitlines()
    assert '"ID":"\\u003cmissing\\u003e"' in lines[1]
    rows = [json.loads(line) for line in lines]
    assert list(rows[0]) == ["Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size"]
    assert rows[0]["CreatedAt"] == "2021-01-03T00:00:00Z" and rows[0]["Size"] == "500B"
    no_time = ok(layerfs("history", "--format", "{{.CreatedSince}}|{{.CreatedBy}}", "other/tool:1", root=images.root))
    assert no_time == "|ADD base\n"  # no created time: no CREATED (docker's rule for times before 2000)


def test_history_errors_are_one_line(images: Store) -> None:
    before = listing(images.root)
    one_error(layerfs("history", "nosuch:1", root=images.root), "No such image: nosuch:1")
    one_error(layerfs("history", "bad:1", root=images.root), "history", "more layers")
    one_error(layerfs("history", "--format", "{{.ID | upper}}", "app:1", root=images.root), "template")
    assert listing(images.root) == before


# -- images --filter, -a, --format -------------------------------------------------------------------


def names(root: Path, *args: str) -> list[str]:
    return ok(layerfs("images", *args, "--format", "{{.Repository}}:{{.Tag}}", root=root)).split()


ALL = ["other/tool:1", "app:2", "app:1", "<none>:<none>", "bad:1"]  # newest first


@pytest.mark.parametrize("args, expected", [
    ([], ALL),
    (["-a"], ALL),  # no intermediate images in layerfs: -a shows the same
    (["app"], ["app:2", "app:1"]),
    (["docker.io/library/app:2"], ["app:2"]),
    (["--filter", "reference=app"], ["app:2", "app:1"]),
    (["--filter", "reference=app:1"], ["app:1"]),
    (["--filter", "reference=*/tool"], ["other/tool:1"]),
    (["--filter", "reference=*"], ["app:2", "app:1", "bad:1"]),  # * stops at /
    (["--filter", "reference=app:[2-9]", "--filter", "reference=bad"], ["app:2", "bad:1"]),
    (["--filter", "dangling=true"], ["<none>:<none>"]),
    (["--filter", "dangling=false"], ["other/tool:1", "app:2", "app:1", "bad:1"]),
    (["--filter", "before=app:2"], ["app:1", "<none>:<none>", "bad:1"]),
    (["--filter", "since=app:1"], ["other/tool:1", "app:2"]),
    (["--filter", "since=bad:1", "--filter", "before=app:2"], ["app:1", "<none>:<none>"]),
    (["--filter", "label=tier"], ["app:2", "app:1"]),
    (["--filter", "label=tier=db"], ["app:2"]),
    (["--filter", "label=tier", "--filter", "label=extra=1"], ["app:2"]),
    (["--filter", "reference=app", "--filter", "since=app:1"], ["app:2"]),
    (["--filter", "dangling=true", "--filter", "label=tier"], []),
])
def test_images_filters_as_docker(images: Store, args: list[str], expected: list[str]) -> None:
    """docker's rules (moby ImageService.Images): reference patterns are path.Match globs over
    the familiar name with and without its tag, any may match; dangling, before/since (strictly,
    by created time) and label (all must match) combine with AND."""
    assert names(images.root, *args) == expected


def test_images_filter_errors_are_one_line(images: Store) -> None:
    before = listing(images.root)
    one_error(layerfs("images", "--filter", "dangling", root=images.root), "expected name=value")
    one_error(layerfs("images", "--filter", "colour=red", root=images.root), "invalid filter 'colour'")
    one_error(layerfs("images", "--filter", "dangling=maybe", root=images.root), "dangling=maybe")
    one_error(layerfs("images", "--filter", "before=nosuch:1", root=images.root), "No such image: nosuch:1")
    one_error(layerfs("images", "--filter", "reference=[", root=images.root), "syntax error in pattern")
    assert listing(images.root) == before


def test_images_format_templates(images: Store) -> None:
    """{{.Repository}}:{{.Tag}}, {{.ID}}, {{json .}} (docker's fields, keys sorted, <none>
    escaped as Go escapes it), `json`, and `table TEMPLATE` with docker's column names; -q with
    a filter prints the IDs that pass it."""
    root = images.root
    app1 = short(images.ids["app:1"])
    assert ok(layerfs("images", "--format", "{{.ID}}", "app:1", root=root)) == f"{app1}\n"
    lines = ok(layerfs("images", "--format", "{{json .}}", "app:1", root=root)).splitlines()
    assert ok(layerfs("images", "--format", "json", "app:1", root=root)).splitlines() == lines
    assert '"Digest":"\\u003cnone\\u003e"' in lines[0]
    row = json.loads(lines[0])
    assert list(row) == ["Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository", "SharedSize",
                         "Size", "Tag", "UniqueSize", "VirtualSize"]
    assert (row["ID"], row["Repository"], row["Tag"], row["Size"]) == (app1, "app", "1", "1.5kB")
    assert row["CreatedAt"] == "2021-01-03 00:00:00 +0000 UTC"
    table = ok(layerfs("images", "--format", "table {{.ID}}\\t{{.Tag}}\\t{{.CreatedAt}}", "app", root=root))
    assert table.splitlines()[0] == "IMAGE ID       TAG       CREATED AT"
    assert table.splitlines()[2] == f"{app1}   1         2021-01-03 00:00:00 +0000 UTC"
    dangling = ok(layerfs("images", "-q", "--filter", "dangling=true", root=root)).split()
    assert dangling == [short(images.ids["untagged"])]
    default = ok(layerfs("images", root=root))
    assert ok(layerfs("images", "--format", "table", root=root)) == default
    assert default.splitlines()[0].startswith("REPOSITORY   TAG       IMAGE ID       CREATED ")
    assert default.splitlines()[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]


# -- inspect --format --------------------------------------------------------------------------------


def test_inspect_format_as_docker_inspect(images: Store) -> None:
    """docker inspect -f: the template per image ({{.Id}}, {{.Config.Env}} as Go prints a list,
    {{json .Config}} unescaped as docker's json function writes it); `json` the default output;
    a missing image is an error after the others are printed."""
    root = images.root
    out = ok(layerfs("inspect", "--format", "{{.Id}} {{.Config.Env}}", "app:1", "app:2", root=root))
    assert out.splitlines() == [f"{images.ids['app:1']} [PATH=/bin A=<b>]", f"{images.ids['app:2']} <no value>"]
    config = json.loads(ok(layerfs("inspect", "-f", "{{json .Config}}", "app:1", root=root)))
    assert config == images.configs["app:1"]["config"]
    assert '"A=<b>"' in ok(layerfs("inspect", "-f", "{{json .Config.Env}}", "app:1", root=root))
    assert ok(layerfs("inspect", "--format", "json", "app:1", root=root)) == ok(layerfs("inspect", "app:1", root=root))
    missing = layerfs("inspect", "-f", "{{.Id}}", "app:1", "nosuch:1", root=root)
    assert missing.returncode == 1 and missing.stdout == f"{images.ids['app:1']}\n"
    assert missing.stderr == "Error: No such image: nosuch:1\n"


# -- ps --format and system df (a real container) ----------------------------------------------------


@pytest.fixture
def container(images: Store, tmp_path: Path) -> Iterator[Path]:
    """Container ``c1`` of app:1 holding 4096 changed bytes, unmounted; removed after."""
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok(layerfs("mount", "--name", "c1", "app:1", str(mnt), root=images.root))
    try:
        (mnt / "new.bin").write_bytes(b"y" * 4096)
    finally:
        ok(layerfs("umount", str(mnt), root=images.root))
    try:
        yield mnt
    finally:
        for m in [m.mountpoint for m in _proc.mounts() if m.mountpoint.startswith(str(tmp_path))]:
            subprocess.run(["umount", "-l", m], capture_output=True)
        layerfs("rm", "c1", root=images.root)


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _size4(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    raise AssertionError(n)


def test_ps_format(images: Store, container: Path) -> None:
    root = images.root
    assert ok(layerfs("ps", "--format", "{{.Names}} {{.Image}} {{.MountedOn}}|", root=root)) == "c1 app:1 |\n"
    row = json.loads(ok(layerfs("ps", "--format", "json", root=root)))
    assert {"ID", "Names", "Image", "ImageID", "RunningFor", "CreatedAt", "MountedOn", "Size", "Upper"} <= set(row)
    assert row["ImageID"] == images.ids["app:1"] and row["RunningFor"].endswith(" ago")
    table = ok(layerfs("ps", "--format", "table {{.Names}}\\t{{.Image}}", root=root)).splitlines()
    assert table == ["NAMES     IMAGE", "c1        app:1"]
    assert ok(layerfs("container", "ls", "--format", "{{.Names}}", root=root)) == "c1\n"
    full = ok(layerfs("ps", "-q", "--no-trunc", root=root)).strip()
    assert len(row["ID"]) == 12 and len(full) > 12 and full.startswith(row["ID"])


def test_system_df(images: Store, container: Path) -> None:
    """TYPE TOTAL ACTIVE SIZE RECLAIMABLE: images (active: a container's; size: every layer once;
    reclaimable: layers no active image uses), containers (active: mounted; size: their uppers
    on disk), layers (unpacked plus blob); -v a row per image with its shared and unique size."""
    root = images.root
    upper = Path(json.loads(ok(layerfs("ps", "--format", "json", root=root)))["Upper"])
    sizes = LAYER_BYTES
    all_layers = sum(sizes.values())  # base, app1, app2, lone: every image's layers, once
    reclaimable = all_layers - sizes["base"] - sizes["app1"]
    blobs = sum(len(layer.blob) for layer in LAYERS.values())
    rows = {r["Type"]: r for r in map(json.loads, ok(layerfs("system", "df", "--format", "json",
                                                             root=root)).splitlines())}
    assert rows["Images"] == {"Type": "Images", "TotalCount": "5", "Active": "1", "Size": _size4(all_layers),
                              "Reclaimable": f"{_size4(reclaimable)} ({reclaimable * 100 // all_layers}%)"}
    assert rows["Containers"] == {"Type": "Containers", "TotalCount": "1", "Active": "0",
                                  "Size": _size4(_du(upper)), "Reclaimable": f"{_size4(_du(upper))} (100%)"}
    assert rows["Layers"] == {"Type": "Layers", "TotalCount": "4", "Active": "4", "Size": _size4(all_layers + blobs),
                              "Reclaimable": "0B (0%)"}
    table = ok(layerfs("system", "df", root=root)).splitlines()
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [line.split()[0] for line in table[1:]] == ["Images", "Containers", "Layers"]
    assert ok(layerfs("system", "df", "--format", "{{.Type}}={{.Active}}", root=root)).split() == \
        ["Images=1", "Containers=0", "Layers=4"]
    mnt = container
    ok(layerfs("mount", "--name", "c1", "app:1", str(mnt), root=root))
    try:
        mounted = {r["Type"]: r for r in map(json.loads, ok(layerfs("system", "df", "--format", "json",
                                                                    root=root)).splitlines())}
        assert mounted["Containers"]["Active"] == "1" and mounted["Containers"]["Reclaimable"] == "0B (0%)"
    finally:
        ok(layerfs("umount", str(mnt), root=root))
    verbose = ok(layerfs("system", "df", "-v", root=root))
    lines = verbose.splitlines()
    assert lines[0] == "Images space usage:" and "Containers space usage:" in lines and "Layers space usage:" in lines
    header = lines[2]
    assert header.split("   ")[0] == "REPOSITORY" and "SHARED SIZE" in header and "UNIQUE SIZE" in header
    image_lines = lines[3:lines.index("Containers space usage:") - 1]
    by_name = {(line.split()[0], line.split()[1]): line.split() for line in image_lines}
    # app:1: base is shared (app:2, other/tool:1, bad:1 list it), app1 is its own; one container
    assert by_name[("app", "1")][-4:] == [_size4(1500), _size4(1000), _size4(500), "1"]
    assert by_name[("<none>", "<none>")][-4:] == [_size4(50), "0B", _size4(50), "0"]
    assert by_name[("other/tool", "1")][-4:] == [_size4(1000), _size4(1000), "0B", "0"]
