"""The first hour of a docker, podman or skopeo user (issue 10, "What got in the way").

Each test runs the real ``layerfs`` command as a user would (a pipe, a file, a terminal: a real
pseudo-terminal of a chosen width) and checks what the user sees: the output, the exit status,
and what is left in the store.  docker's own behaviour is the guide where the issue names it;
each test says which docker rule it holds layerfs to.

Images are tiny layouts written in Python (``_images.write_layout``) and turned into archives by
skopeo and tar; registry tests run Debian's ``docker-registry`` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gzip
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tarfile
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from _images import (
    MEDIA_MANIFEST,
    BuiltImage,
    TarEntry,
    gzip_bytes,
    sha256,
    tar_bytes,
    write_layout,
)
from _oracles import blob_path
from _registry_server import Proxy, Registry, push, write_htpasswd
from conftest import require_fuse, require_root, require_tool, run_layerfs

REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


USER, PASSWORD = "alice", "wonderland"


@pytest.fixture(scope="module", autouse=True)
def _needs_tools() -> None:
    require_root()
    require_tool("skopeo", "tar")


@dataclasses.dataclass
class Registries:
    """One storage served anonymously (``anon``) and with htpasswd Basic auth (``basic``), holding
    ``public/tiny:1``, ``public/tiny:latest`` and ``library/alpine:latest`` (the tiny image, as an
    OCI manifest) and ``public/tiny:v2s2`` (the same image under a docker v2s2 manifest); and
    ``public/big:1``, three layers of 6 MiB of random bytes (slow enough to interrupt)."""

    anon: Registry
    basic: Registry
    image: BuiltImage
    big: BuiltImage


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    require_tool("docker-registry", "htpasswd")
    work = tmp_path_factory.mktemp("first-hour-registry")
    storage = work / "storage"
    storage.mkdir()
    started: list[Registry] = []
    try:
        anon = Registry.start(work, storage)
        started.append(anon)
        basic = Registry.start(work, storage, htpasswd=write_htpasswd(work / "htpasswd", {USER: PASSWORD}))
        started.append(basic)
        image = tiny_layout(work / "layout", "1", layers=2)
        for name in ("public/tiny:1", "public/tiny:latest", "library/alpine:latest"):
            push(image.source, f"{anon.host}/{name}")
        push(image.source, f"{anon.host}/public/tiny:v2s2", "--format", "v2s2")  # another manifest
        big = write_layout(work / "big", "1", [random_layer(i, BIG_LAYER) for i in range(3)])
        push(big.source, f"{anon.host}/public/big:1")
        yield Registries(anon, basic, image, big)
    finally:
        for server in reversed(started):
            server.stop()


# -- helpers --------------------------------------------------------------------------------------


def layer(name: str, data: bytes) -> tuple[bytes, str]:
    """A gzip layer holding ``etc/<name>``, with its diff ID."""
    tar = tar_bytes([TarEntry("etc/", tarfile.DIRTYPE, mode=0o755), TarEntry(f"etc/{name}", data=data)])
    return gzip_bytes(tar), sha256(tar)


def tiny_layout(path: Path, tag: str = "latest", *, layers: int = 1, arch: str = "amd64") -> BuiltImage:
    """An OCI layout with one small image of ``layers`` layers."""
    config = {"architecture": arch, "os": "linux", "created": "2020-09-13T12:26:40Z",
              "config": {"Cmd": ["/bin/sh"]}}
    return write_layout(path, tag, [layer(f"file{i}-{arch}", f"{arch} {i}\n".encode() * (i + 1))
                                    for i in range(layers)], config=config)


#: The size of each layer of the big image (random bytes: gzip keeps the size).
BIG_LAYER = 6 << 20


def random_layer(seed: int, size: int) -> tuple[bytes, str]:
    tar = tar_bytes([TarEntry(f"data{seed}/", tarfile.DIRTYPE, mode=0o755),
                     TarEntry(f"data{seed}/random.bin", data=os.urandom(size))])
    return gzip_bytes(tar), sha256(tar)


def skopeo(src: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", src, dest], check=True, capture_output=True)


def tar_dir(directory: Path, archive: Path) -> Path:
    """``directory``'s content as a tar (gzip if ``archive`` ends in .gz), as ``tar -C DIR -c .``."""
    subprocess.run(["tar", "-C", str(directory), "-c", "-f", str(archive.with_suffix("") if archive.suffix == ".gz"
                                                                      else archive), "."], check=True)
    if archive.suffix == ".gz":
        plain = archive.with_suffix("")
        archive.write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    return archive


def layerfs(*args: str, root: Path, stdin: object = subprocess.DEVNULL,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``stdin`` (a file object, DEVNULL, or None for a closed stdin)."""
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "layerfs", "--root", str(root), *args]
    if stdin is None:  # `layerfs ... <&-`: the process starts with fd 0 closed
        cmd = ["sh", "-c", 'exec "$@" <&-', "sh", *cmd]
        stdin = subprocess.DEVNULL
    return subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, env=full_env,  # type: ignore[call-overload]
                          timeout=300, check=False)


def in_terminal(args: Sequence[str], *, root: Path, columns: int = 80, stdin_tty: bool = True,
                env: dict[str, str] | None = None, timeout: float = 120,
                answers: dict[str, bytes] | None = None) -> tuple[int, str]:
    """Run the CLI on a real pseudo-terminal ``columns`` wide (stdout and stderr; stdin too unless
    ``stdin_tty`` is false), typing ``answers[prompt]`` once each prompt shows; returns (exit
    status, everything it wrote)."""
    pending = dict(answers or {})
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), *args],
                            stdin=slave if stdin_tty else subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed
                    break
                if not chunk:
                    break
                out += chunk
                for prompt in [p for p in pending if p.encode() in out]:
                    os.write(master, pending.pop(prompt))
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, out.decode(errors="replace")


def store_files(root: Path) -> set[str]:
    """Every file of a store but the lock and the reserve."""
    out = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            rel = str((Path(dirpath) / name).relative_to(root))
            if rel not in ("lock", "reserve"):
                out.add(rel)
    return out


# -- load -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | BuiltImage]:
    """One tiny image as: a layout (ref name ``latest``), a docker archive naming it tiny:edge, an
    untagged docker archive, and a gzip OCI archive whose only name is the bare tag ``latest``."""
    work = tmp_path_factory.mktemp("tiny")
    image = tiny_layout(work / "layout")
    skopeo(f"oci:{work / 'layout'}:latest", f"docker-archive:{work / 'tiny.docker.tar'}:tiny:edge")
    skopeo(f"oci:{work / 'layout'}:latest", f"docker-archive:{work / 'untagged.docker.tar'}")
    return {"image": image, "layout": work / "layout", "docker": work / "tiny.docker.tar",
            "untagged": work / "untagged.docker.tar",
            "oci_gz": tar_dir(work / "layout", work / "tiny.oci.tar.gz")}


def test_load_prints_what_the_archive_names(tiny: dict[str, Path], tmp_path: Path) -> None:
    """docker load: `Loaded image: NAME` for the archive's names only (not the other tags the
    image has in the store), and no `Loaded image ID:` line for a named image."""
    root = tmp_path / "store"
    image_id = tiny["image"].config_digest  # type: ignore[attr-defined]
    layerfs("load", "-q", str(tiny["untagged"]), root=root)
    run_layerfs("tag", image_id, "somethingelse:1", root=root)
    proc = layerfs("load", str(tiny["docker"]), root=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Loaded image: tiny:edge"]
    assert proc.stderr == ""


def test_load_of_an_untagged_image_prints_its_id(tiny: dict[str, Path], tmp_path: Path) -> None:
    proc = layerfs("load", str(tiny["untagged"]), root=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"Loaded image ID: {tiny['image'].config_digest}"]  # type: ignore[attr-defined]


def test_load_reads_stdin_and_input_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    """`cat x.tar | layerfs load` and `layerfs load -i x.tar`, plain and gzip, as docker load."""
    for i, path in enumerate([tiny["docker"], tiny["oci_gz"]]):
        with open(path, "rb") as f:
            piped = layerfs("load", root=tmp_path / f"piped{i}", stdin=f)
        assert piped.returncode == 0, piped.stderr
        from_file = layerfs("load", "-i", str(path), root=tmp_path / f"file{i}")
        assert from_file.returncode == 0, from_file.stderr
        assert piped.stdout == from_file.stdout
        assert piped.stdout.startswith("Loaded image")
        assert os.listdir(tmp_path / f"piped{i}" / "tmp") == []  # the spooled copy is gone
    both = layerfs("load", "-i", str(tiny["docker"]), str(tiny["docker"]), root=tmp_path / "x")
    assert both.returncode == 1 and both.stderr.startswith("Error: ")


def test_load_from_a_terminal_refuses(tmp_path: Path) -> None:
    """docker load with no -i and stdin a terminal: "requested load from stdin, but stdin is empty"."""
    status, out = in_terminal(["load"], root=tmp_path / "store")
    assert status == 1
    assert out.strip() == "Error: requested load from stdin, but stdin is empty"


@pytest.mark.parametrize("transport, which, found", [
    ("oci-archive", "docker", "is a docker archive"),
    ("docker-archive", "oci_gz", "is an OCI archive"),
    ("oci", "docker", "is a docker archive"),
])
def test_load_refuses_a_wrong_transport(tiny: dict[str, Path], tmp_path: Path, transport: str, which: str,
                                        found: str) -> None:
    root = tmp_path / "store"
    proc = layerfs("load", f"{transport}:{tiny[which]}", root=root)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert found in line and f"load it as {'docker-archive' if which == 'docker' else 'oci-archive'}:" in line, line
    assert not (root / "images").exists() or not os.listdir(root / "images")


def test_an_archive_is_not_named_after_its_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    """An OCI archive whose entry has only the bare tag `latest` loads untagged (docker's), not as
    the repository `tiny.oci.tar.gz`; a layout directory still names it (podman's oci:)."""
    root = tmp_path / "store"
    proc = layerfs("load", str(tiny["oci_gz"]), root=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"Loaded image ID: {tiny['image'].config_digest}"]  # type: ignore[attr-defined]
    rows = run_layerfs("images", root=root).stdout.splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["<none>", "<none>"]]
    named = layerfs("load", f"oci:{tiny['layout']}:latest", root=root)
    assert named.stdout.splitlines() == ["Loaded image: layout:latest"]


def multi_layout(path: Path) -> dict[str, str]:
    """An OCI layout whose entry `multi` is an index of amd64 and arm64 images (also there as
    `multi-amd64` and `multi-arm64`); returns platform -> config digest."""
    configs, entries = {}, []
    for arch in ("amd64", "arm64"):
        img = tiny_layout(path, f"multi-{arch}", arch=arch)
        configs[f"linux/{arch}"] = img.config_digest
        size = blob_path(path, img.manifest_digest).stat().st_size
        entries.append({"mediaType": MEDIA_MANIFEST, "digest": img.manifest_digest, "size": size,
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    blob_path(path, sha256(index)).write_bytes(index)
    top = json.loads((path / "index.json").read_text())
    top["manifests"].append({"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index),
                             "annotations": {REF_NAME: "multi"}})
    (path / "index.json").write_text(json.dumps(top))
    return configs


def test_load_platform_of_a_multi_platform_layout(tmp_path: Path) -> None:
    configs = multi_layout(tmp_path / "multi")
    root = tmp_path / "store"
    arm = layerfs("load", "-q", "--platform", "linux/arm64", f"oci:{tmp_path / 'multi'}:multi", root=root)
    assert arm.returncode == 0, arm.stderr
    assert arm.stdout.split() == [configs["linux/arm64"]]
    host = layerfs("load", "-q", f"oci:{tmp_path / 'multi'}:multi", root=root)
    assert host.stdout.split() == [configs["linux/amd64"]]
    bad = layerfs("load", "--platform", "linux/s390x", f"oci:{tmp_path / 'multi'}:multi", root=root)
    assert bad.returncode == 1
    [line] = bad.stderr.splitlines()
    assert "linux/s390x" in line and "linux/amd64" in line and "linux/arm64" in line, line
    single = layerfs("load", "--platform", "linux/arm64", f"oci:{tmp_path / 'multi'}:multi-amd64", root=root)
    assert single.returncode == 1 and "does not match the specified platform" in single.stderr, single.stderr


# -- progress ---------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def screen_lines(out: str) -> list[str]:
    """What a terminal output is made of: the text between line ends, carriage returns and
    cursor moves (each one a whole line the display wrote)."""
    return [part for part in re.split(r"\r\n|\n|\r|\x1b\[[0-9;]*[A-Za-z]", out) if part]


LOAD_LINE = re.compile(r"[0-9a-f]{12}: (Loading layer( .*)?|Loaded|Already exists)|Loaded image: .*")


def test_load_to_a_file_writes_whole_lines_only(tmp_path: Path) -> None:
    """`layerfs load x > file 2>&1`, ten times, an image of eight layers read by parallel threads:
    docker load shows no progress when stdout is not a terminal, so the file holds the result."""
    tiny_layout(tmp_path / "layout", "1", layers=8)
    for i in range(10):
        with open(tmp_path / f"out{i}", "w") as out:
            proc = subprocess.run([sys.executable, "-m", "layerfs", "--root", str(tmp_path / f"store{i}"), "load",
                                   f"oci:{tmp_path / 'layout'}:1"], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=120, check=False)
        assert proc.returncode == 0
        assert (tmp_path / f"out{i}").read_text().splitlines() == ["Loaded image: layout:1"]


def test_load_progress_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal load shows a line per layer on stdout (docker load), each written whole,
    none wider than the terminal."""
    tiny_layout(tmp_path / "layout", "1", layers=8)
    status, out = in_terminal(["load", f"oci:{tmp_path / 'layout'}:1"], root=tmp_path / "store", columns=50)
    assert status == 0, out
    lines = screen_lines(out)
    assert "Loaded image: layout:1" in lines
    assert len({line[:12] for line in lines if LOAD_LINE.fullmatch(line) and ": Load" in line}) == 8, out
    for line in lines:
        assert LOAD_LINE.fullmatch(line), repr(line)
        assert len(line) < 50, repr(line)



@pytest.mark.parametrize("columns", [50, 120])
def test_pull_progress_fits_the_terminal(registries: Registries, tmp_path: Path, columns: int) -> None:
    """docker's rules: the bar only on a terminal wider than 110 columns; no layer line (those the
    display rewrites in place) wider than the terminal.  Digest and Status lines are printed
    once, after them, whole, as docker prints them."""
    status, out = in_terminal(["pull", f"{registries.anon.host}/public/tiny:1"], root=tmp_path / "store",
                              columns=columns)
    assert status == 0, out
    lines = screen_lines(out)
    downloading = [line for line in lines if ": Downloading" in line]
    assert downloading, out
    layer_lines = [line for line in lines if re.match(r"[0-9a-f]{12}: ", line)]
    assert all(len(line) < columns for line in layer_lines), [line for line in layer_lines if len(line) >= columns]
    assert all(("[" in line) == (columns > 110) for line in downloading), downloading


# -- one line, never a traceback ----------------------------------------------------------------------


@pytest.mark.parametrize("stdin, args", [
    (None, []),                                         # `layerfs login HOST <&-`
    (None, ["-u", USER]),
    ("pipe", ["-u", USER]),                             # `echo secret | layerfs login HOST -u alice`
    ("pipe", []),
], ids=["closed", "closed with -u", "pipe with -u", "pipe"])
def test_login_without_a_terminal_refuses(tmp_path: Path, stdin: str | None, args: list[str]) -> None:
    """docker login: "Cannot perform an interactive login from a non TTY device" unless
    --password-stdin; nothing is read from the pipe, nothing written."""
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    if stdin == "pipe":
        (tmp_path / "secret").write_text("secret\n")
        with open(tmp_path / "secret") as f:
            proc = layerfs("login", "127.0.0.1:1", *args, root=tmp_path / "store", stdin=f, env=env)
    else:
        proc = layerfs("login", "127.0.0.1:1", *args, root=tmp_path / "store", stdin=None, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: Cannot perform an interactive login from a non TTY device"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "docker").exists()


def test_login_password_stdin_closed(tmp_path: Path) -> None:
    proc = layerfs("login", "127.0.0.1:1", "-u", USER, "--password-stdin", root=tmp_path / "store", stdin=None)
    assert (proc.returncode, proc.stderr) == (1, "Error: --password-stdin: standard input is closed\n")


def test_login_on_a_terminal_prompts(registries: Registries, tmp_path: Path) -> None:
    """With a terminal, login asks for what is missing, and the password is not echoed."""
    status, out = in_terminal(["login", registries.basic.host], root=tmp_path / "store",
                              env={"DOCKER_CONFIG": str(tmp_path / "docker")}, timeout=60,
                              answers={"Username: ": f"{USER}\r".encode(), "Password: ": f"{PASSWORD}\r".encode()})
    assert status == 0, out
    assert "Login Succeeded" in out and PASSWORD not in out
    assert registries.basic.host in json.loads((tmp_path / "docker" / "config.json").read_text())["auths"]


def corrupt_repositories(root: Path) -> Path:
    path = root / "repositories.json"
    path.write_text('{"Repositories": {"tiny": ')
    return path


def test_a_corrupt_repositories_json_is_named_with_its_repair(registries: Registries, tmp_path: Path) -> None:
    root = tmp_path / "store"
    ref = f"{registries.anon.host}/public/tiny:1"
    run_layerfs("pull", "-q", ref, root=root)
    path = corrupt_repositories(root)
    for args in (["images"], ["pull", ref], ["inspect", ref], ["tag", ref, "x:1"]):
        proc = layerfs(*args, root=root)
        assert proc.returncode == 1, args
        [line] = proc.stderr.splitlines()
        assert line.startswith("Error: ") and f"{path}: is corrupt: not valid JSON" in line, line
        assert "remove it" in line and "layerfs tag ID NAME" in line, line
        assert "Traceback" not in proc.stderr
    path.unlink()  # the repair the message gives: the image stays, by ID
    rows = run_layerfs("images", root=root).stdout.splitlines()[1:]
    assert [row.split()[:3] for row in rows] == [["<none>", "<none>", registries.image.config_digest[7:19]]]


def test_output_into_a_closed_pipe_ends_quietly(registries: Registries, tmp_path: Path) -> None:
    """`layerfs images | head -1`: killed by SIGPIPE and silent, as `seq 1 1000000 | head -1`
    (coreutils) and docker (a Go program writing to a broken stdout) end; the shell says 141."""
    root = tmp_path / "store"
    run_layerfs("pull", "-q", f"{registries.anon.host}/public/tiny:1", root=root)
    for args in (["images"], ["inspect", f"{registries.anon.host}/public/tiny:1"], ["--help"],
                 ["pull", f"{registries.anon.host}/public/tiny:1"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before anything is written
        proc = subprocess.run([sys.executable, "-m", "layerfs", "--root", str(root), *args], stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120, check=False)
        os.close(write_end)
        assert proc.returncode in (-signal.SIGPIPE, 0), (args, proc.returncode, proc.stderr)
        assert proc.stderr == b"", (args, proc.stderr)
    shell = subprocess.run(["bash", "-c", '"$@" | true; echo "${PIPESTATUS[0]}"', "sh", sys.executable, "-m",
                            "layerfs", "--root", str(root), "images"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert shell.stdout.strip() in ("0", "141") and shell.stderr == "", shell


def test_version(tmp_path: Path) -> None:
    from importlib import metadata

    proc = layerfs("--version", root=tmp_path / "store")
    assert (proc.returncode, proc.stdout) == (0, f"layerfs version {metadata.version('layerfs')}\n")


def test_debug_levels(registries: Registries, tmp_path: Path) -> None:
    """--debug: layerfs's own lines (one per registry request); the HTTP library's only with two."""
    ref = f"{registries.anon.host}/public/tiny:1"
    once = layerfs("--debug", "pull", "-q", ref, root=tmp_path / "one")
    assert once.returncode == 0, once.stderr
    lines = once.stderr.splitlines()
    assert any(line.startswith("DEBUG layerfs._registry.client: HEAD http://") for line in lines), lines
    assert all(line.startswith("DEBUG layerfs.") for line in lines), lines
    twice = layerfs("--debug", "--debug", "pull", "-q", ref, root=tmp_path / "two")
    assert twice.returncode == 0, twice.stderr
    assert any(line.startswith(("DEBUG httpcore", "DEBUG httpx")) for line in twice.stderr.splitlines())


def test_max_concurrent_downloads_zero_is_refused(tmp_path: Path) -> None:
    proc = layerfs("pull", "--max-concurrent-downloads", "0", "alpine", root=tmp_path / "store")
    assert proc.returncode == 2 and "--max-concurrent-downloads" in proc.stderr.splitlines()[-1]


# -- pull's words -----------------------------------------------------------------------------------


def test_pull_header_names_the_path_and_the_default_tag(registries: Registries, tmp_path: Path) -> None:
    """docker pull alpine: "Using default tag: latest", "latest: Pulling from library/alpine"."""
    host = registries.anon.host
    proc = layerfs("pull", f"{host}/library/alpine", root=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["Using default tag: latest", "latest: Pulling from library/alpine"], lines
    assert lines[-1] == f"{host}/library/alpine:latest"
    tagged = layerfs("pull", f"{host}/public/tiny:1", root=tmp_path / "store").stdout.splitlines()
    assert tagged[0] == "1: Pulling from public/tiny"


def test_plain_http_registry_on_another_host_names_insecure_registry(registries: Registries,
                                                                     tmp_path: Path) -> None:
    """A registry on another host (127.0.0.2, not a local name) that speaks plain HTTP: the error
    says which option reaches it, and that option does."""
    proxy = Proxy.start("127.0.0.1", registries.anon.port, bind="127.0.0.2")
    try:
        ref = f"{proxy.host}/public/tiny:1"
        proc = layerfs("pull", ref, root=tmp_path / "store")
        assert proc.returncode == 1
        [line] = proc.stderr.splitlines()
        assert "server gave HTTP response to HTTPS client" in line, line
        assert f"--insecure-registry {proxy.host}" in line, line
        ok = layerfs("pull", "-q", "--insecure-registry", proxy.host, ref, root=tmp_path / "store")
        assert (ok.returncode, ok.stdout) == (0, registries.image.config_digest + "\n"), ok.stderr
    finally:
        proxy.stop()


# -- images, rm, inspect ----------------------------------------------------------------------------


def manifest_digest(host: str, name: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{name}"],
                         capture_output=True, check=True).stdout
    return sha256(out)


def test_images_digests_a_row_per_tag_and_digest(registries: Registries, tmp_path: Path) -> None:
    """One image pulled as tiny:1 (an OCI manifest) and tiny:v2s2 (a docker manifest): docker's
    `images --digests` shows each tag with each digest of its repository."""
    root, host = tmp_path / "store", registries.anon.host
    for tag in ("1", "v2s2"):
        run_layerfs("pull", "-q", f"{host}/public/tiny:{tag}", root=root)
    oci, v2s2 = manifest_digest(host, "public/tiny:1"), manifest_digest(host, "public/tiny:v2s2")
    assert oci != v2s2
    table = run_layerfs("images", "--digests", root=root).stdout.splitlines()
    rows = sorted(tuple(line.split()[:3]) for line in table[1:])
    repo = f"{host}/public/tiny"
    assert rows == sorted((repo, tag, d) for tag in ("1", "v2s2") for d in (oci, v2s2))
    plain = run_layerfs("images", root=root).stdout.splitlines()[1:]
    assert sorted(tuple(line.split()[:2]) for line in plain) == [(repo, "1"), (repo, "v2s2")]
    rows_json = [json.loads(line) for line in run_layerfs("images", "--digests", "--format", "json",
                                                          root=root).stdout.splitlines()]
    assert sorted((r["Tag"], r["Digest"]) for r in rows_json) == sorted((t, d) for t in ("1", "v2s2")
                                                                        for d in (oci, v2s2))


def test_the_helps_rm_example_removes_multi_tagged_images(tmp_path: Path) -> None:
    """`images -q | xargs layerfs rm -f`, run as the help writes it: an image tagged in two
    repositories goes too (docker rmi needs -f for it, and says so without)."""
    root = tmp_path / "store"
    tiny_layout(tmp_path / "a", "1")
    tiny_layout(tmp_path / "b", "1", layers=2, arch="arm64")
    run_layerfs("load", f"oci:{tmp_path / 'a'}:1", root=root)
    run_layerfs("load", f"oci:{tmp_path / 'b'}:1", root=root)
    run_layerfs("tag", "a:1", "other/a:2", root=root)
    image_id = run_layerfs("images", "-q", "a", root=root).stdout.strip()
    refused = layerfs("rm", image_id, root=root)
    assert refused.returncode == 1
    assert "(must be forced) - image is referenced in multiple repositories" in refused.stderr
    help_text = run_layerfs("images", "--help", root=root).stdout
    [example] = [line.strip() for line in help_text.splitlines() if "images -q | xargs" in line]
    command = example.split("  ")[0]
    assert command == "layerfs images -q | xargs layerfs rm -f"
    layerfs_cmd = f"{sys.executable} -m layerfs --root {root}"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command.replace("layerfs", layerfs_cmd)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert run_layerfs("images", "-q", root=root).stdout == ""
    assert os.listdir(root / "layers") == []


def test_inspect_lower_dir_names_each_directory_once(tmp_path: Path) -> None:
    """Two empty layers share a diff ID: LowerDir keeps the topmost, and the kernel overlay mounts
    it (it refuses a list naming one directory twice)."""
    empty = tar_bytes([])
    layers = [layer("a", b"a\n"), (gzip_bytes(empty), sha256(empty)), layer("b", b"b\n"),
              (gzip_bytes(empty), sha256(empty))]
    write_layout(tmp_path / "layout", "1", layers)
    root = tmp_path / "store"
    run_layerfs("load", f"oci:{tmp_path / 'layout'}:1", root=root)
    [doc] = json.loads(run_layerfs("inspect", "layout:1", root=root).stdout)
    lower = doc["GraphDriver"]["Data"]["LowerDir"].split(":")
    dirs = [str(Path(layer["Path"])) for layer in doc["Layers"]]
    assert lower == [dirs[3], dirs[2], dirs[0]]  # top first; dirs[1] is dirs[3]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={':'.join(lower)}", str(mnt)],
                   check=True, capture_output=True)
    try:
        assert sorted(os.listdir(mnt / "etc")) == ["a", "b"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- mount ------------------------------------------------------------------------------------------


class CliMounts:
    """The CLI with its own runtime directory (the mounts of other tests stay out of `layerfs
    mounts`); teardown unmounts whatever is left under ``tmp_path`` and kills its daemons."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "store"
        self.env = {"LAYERFS_RUNTIME_DIR": str(tmp_path / "run")}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return layerfs(*args, root=self.root, env=self.env)

    def mountpoint(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir()
        return path

    def listing(self) -> list[dict[str, object]]:
        out = self("mounts", "--format", "json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def teardown(self) -> None:
        with open("/proc/self/mountinfo") as f:
            left = [line.split()[4] for line in f if line.split()[4].startswith(str(self.tmp))]
        for mnt in reversed(left):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, check=False)
        for rec in (self.tmp / "run").glob("*/mount.json"):
            pid = int(json.loads(rec.read_text()).get("pid", 0))
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        assert not left, f"left mounted: {left}"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CliMounts]:
    require_fuse()
    mounts = CliMounts(tmp_path)
    yield mounts
    mounts.teardown()


def test_mount_of_a_missing_image_says_so_and_shows_the_pull(registries: Registries, cli: CliMounts) -> None:
    """docker run: "Unable to find image 'X' locally" on stderr, then the pull's progress there."""
    ref = f"{registries.anon.host}/public/tiny:1"
    mnt = cli.mountpoint("mnt")
    proc = cli("mount", "--read-only", ref, str(mnt))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[:2] == [f"Unable to find image '{ref}' locally", "1: Pulling from public/tiny"], lines
    assert sum(line.endswith(": Pull complete") for line in lines) == 2, lines
    assert lines[-1] == f"Status: Downloaded newer image for {ref}", lines
    assert sorted(os.listdir(mnt / "etc")) == ["file0-amd64", "file1-amd64"]
    assert cli("umount", str(mnt)).returncode == 0


def test_mount_of_an_unknown_name_says_which_local_names_are_close(registries: Registries, tiny: dict[str, Path],
                                                                   cli: CliMounts) -> None:
    assert cli("load", str(tiny["docker"])).returncode == 0  # tiny:edge
    ref = f"{registries.anon.host}/public/tiny:edge"  # the registry has no such tag
    proc = cli("mount", "--read-only", ref, str(cli.mountpoint("mnt")))
    assert proc.returncode == 1
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"Error: pull {ref}: manifest for {ref} not found"), last
    assert last.endswith("; the store has images with close names: tiny:edge"), last
    far = cli("mount", "--read-only", f"{registries.anon.host}/public/nothing-like-it:9",
              str(cli.mountpoint("mnt2")))
    assert far.returncode == 1 and "close names" not in far.stderr


def test_an_image_with_no_layers_mounts_as_an_empty_root(cli: CliMounts) -> None:
    """FROM scratch + LABEL: no layers.  Read-only it is an empty root; writable, a root to write in."""
    config = {"architecture": "amd64", "os": "linux", "created": "2020-09-13T12:26:40Z",
              "config": {"Labels": {"only": "a label"}}}
    write_layout(cli.tmp / "layout", "1", [], config=config)
    assert cli("load", f"oci:{cli.tmp / 'layout'}:1").returncode == 0
    ro = cli.mountpoint("ro")
    proc = cli("mount", "--read-only", "layout:1", str(ro))
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(ro) == [] and os.stat(ro).st_mode & 0o777 == 0o755
    with pytest.raises(OSError):
        (ro / "x").write_text("x")
    rw = cli.mountpoint("rw")
    proc = cli("mount", "--name", "scratch", "layout:1", str(rw))
    assert proc.returncode == 0, proc.stderr
    (rw / "made").write_text("here\n")
    assert os.listdir(rw) == ["made"]
    assert cli("umount", str(ro), str(rw)).returncode == 0
    assert cli("rm", "scratch").returncode == 0


def test_mounts_aligns_and_lists_dead_mounts_and_umount_takes_several(tiny: dict[str, Path],
                                                                       cli: CliMounts) -> None:
    assert cli("load", str(tiny["docker"])).returncode == 0
    short = cli.mountpoint("a")
    long = cli.mountpoint("a-mount-point-with-a-name-much-longer-than-thirty-two-columns")
    for mnt in (short, long):
        proc = cli("mount", "--read-only", "tiny:edge", str(mnt))
        assert proc.returncode == 0, proc.stderr
    [dead] = [m for m in cli.listing() if m["mountpoint"] == str(short)]
    os.kill(int(dead["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{dead['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    by_mnt = {m["mountpoint"]: m["alive"] for m in cli.listing()}
    assert by_mnt == {str(short): False, str(long): True}
    table = cli("mounts").stdout.splitlines()
    header = table[0]
    starts = [header.index(col) for col in ("SOURCE", "CONTAINER", "PID", "SINCE", "STATUS")]
    for row in table[1:]:
        for start in starts:
            assert row[start - 1] == " " and row[start] != " ", (table, start)
    assert sorted(row.split()[-1] for row in table[1:]) == ["dead", "serving"]
    templated = cli("mounts", "--format", "{{.Mountpoint}} {{.Status}} {{.Pid}}").stdout.splitlines()
    assert sorted(templated) == sorted(f"{m['mountpoint']} {'serving' if m['alive'] else 'dead'} {m['pid']}"
                                       for m in cli.listing())
    assert cli("mounts", "--format", "table {{.Status}}").stdout.splitlines()[0] == "STATUS"
    proc = cli("umount", str(short), str(cli.tmp / "not-mounted"), str(long))
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith("Error: ") and "not-mounted: not mounted" in line, line
    assert cli.listing() == []
    assert not any(str(cli.tmp) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_mount_usage_names_one_image_and_one_mount_point(cli: CliMounts) -> None:
    """The usage promised `[IMAGE] MOUNTPOINT [[IMAGE] MOUNTPOINT ...]` and took one pair."""
    usage = cli("mount", "--help").stdout.split("\n\n")[0]
    assert usage == ("usage: layerfs mount [OPTIONS] IMAGE MOUNTPOINT\n"
                     "       layerfs mount -o lowerdir=DIR:DIR[,upperdir=DIR,workdir=DIR] [OPTIONS] MOUNTPOINT"), usage
    a, b = cli.mountpoint("a"), cli.mountpoint("b")
    proc = cli("mount", "tiny:edge", str(a), "tiny:edge", str(b))
    assert (proc.returncode, proc.stderr) == (1, f"Error: mount tiny:edge {a} tiny:edge {b}: takes one IMAGE and "
                                                 f"one MOUNTPOINT (or -o lowerdir=A:B MOUNTPOINT), 4 given\n")
    assert cli.listing() == []


def test_mount_refuses_what_it_would_ignore(cli: CliMounts) -> None:
    """A person's `-o rw` without an upper, and an IMAGE beside `-o lowerdir=`, were dropped
    silently; a missing lower directory is named as missing.  What mount(8) passes (its `rw` and
    source on every mount) is still taken, and gives the kernel overlay's read-only mount."""
    lower = cli.tmp / "lower"
    lower.mkdir()
    (lower / "f").write_text("f\n")
    mnt = cli.mountpoint("mnt")
    refused = {
        ("-o", f"rw,lowerdir={lower}", str(mnt)):
            "Error: -o rw: a -o lowerdir= mount without upperdir= and workdir= is read-only, as the kernel "
            "overlay's: give them for a writable mount",
        ("-o", f"lowerdir={lower}", "tiny:edge", str(mnt)):
            "Error: mount tiny:edge: -o lowerdir= mounts its directories, not an image: give -o lowerdir= or "
            "IMAGE, not both",
        ("-o", f"lowerdir={cli.tmp / 'nonexist'}:{lower}", str(mnt)):
            f"Error: lowerdir {cli.tmp / 'nonexist'}: No such file or directory",
        ("--read-only", "-o", "rw", "tiny:edge", str(mnt)): "Error: --read-only and -o rw: one or the other",
    }
    for args, error in refused.items():
        proc = cli("mount", *args)
        assert (proc.returncode, proc.stderr) == (1, error + "\n"), args
        assert cli.listing() == [] and os.listdir(mnt) == []
    # mount.fuse3 runs `layerfs SOURCE MOUNTPOINT -o rw,...` for every mount(8) and fstab mount
    proc = cli("none", str(mnt), "-o", f"rw,lowerdir={lower},nosuid,nodev")
    assert proc.returncode == 0, proc.stderr
    try:
        assert os.listdir(mnt) == ["f"]
        with pytest.raises(OSError) as err:
            (mnt / "g").write_text("g")
        assert err.value.errno == errno.EROFS  # as `mount -t overlay -o rw,lowerdir=...` gives
    finally:
        assert cli("umount", str(mnt)).returncode == 0


# -- credential helpers -----------------------------------------------------------------------------

#: A credential helper speaking docker-credential-helpers' protocol, keeping its secrets in the
#: JSON file $FAKE_HELPER_DB and logging each action to $FAKE_HELPER_LOG.
FAKE_HELPER = """\
import json, os, sys
db, action = os.environ["FAKE_HELPER_DB"], sys.argv[1]
data = json.load(open(db)) if os.path.exists(db) else {}
with open(os.environ["FAKE_HELPER_LOG"], "a") as log:
    log.write(action + "\\n")
if action == "store":
    cred = json.load(sys.stdin)
    data[cred["ServerURL"]] = {"Username": cred["Username"], "Secret": cred["Secret"]}
elif action in ("get", "erase"):
    url = sys.stdin.read().strip()
    if url not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    if action == "get":
        print(json.dumps({"ServerURL": url, **data[url]}))
    else:
        del data[url]
elif action == "list":
    print(json.dumps({url: c["Username"] for url, c in data.items()}))
else:
    print("unknown action")
    sys.exit(1)
json.dump(data, open(db, "w"))
"""


@dataclasses.dataclass
class Helper:
    env: dict[str, str]
    db: Path
    log: Path
    config: Path

    def actions(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def secrets(self) -> dict[str, dict[str, str]]:
        return json.loads(self.db.read_text()) if self.db.exists() else {}


@pytest.fixture
def helper(tmp_path: Path) -> Helper:
    """``docker-credential-fake`` on PATH, and a docker config dir for the test to fill."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker-credential-fake"
    program.write_text(f"#!{sys.executable}\n{FAKE_HELPER}")
    program.chmod(0o755)
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_CONFIG": str(config.parent),
           "FAKE_HELPER_DB": str(tmp_path / "secrets.json"), "FAKE_HELPER_LOG": str(tmp_path / "helper.log"),
           "REGISTRY_AUTH_FILE": str(tmp_path / "none.json"), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "XDG_RUNTIME_DIR": str(tmp_path / "xdg-run")}
    return Helper(env, tmp_path / "secrets.json", tmp_path / "helper.log", config)


@pytest.mark.parametrize("how", ["credsStore", "credHelpers"])
def test_login_pull_logout_through_a_credential_helper(registries: Registries, helper: Helper, tmp_path: Path,
                                                       how: str) -> None:
    """docker's way with a helper: login stores the secret with it and leaves only an empty auths
    entry in config.json; pull gets it from the helper; logout erases it there."""
    host = registries.basic.host
    helper.config.write_text(json.dumps({"credsStore": "fake"} if how == "credsStore"
                                        else {"credHelpers": {host: "fake"}, "auths": {}}))
    root = tmp_path / "store"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    with open(tmp_path / "pw") as pw:
        login = layerfs("login", host, "-u", USER, "--password-stdin", root=root, stdin=pw, env=helper.env)
    assert login.returncode == 0, login.stderr
    assert helper.secrets() == {host: {"Username": USER, "Secret": PASSWORD}}
    config = json.loads(helper.config.read_text())
    assert config["auths"] == {host: {}}
    assert PASSWORD not in helper.config.read_text()
    pull = layerfs("pull", "-q", f"{host}/public/tiny:1", root=root, env=helper.env)
    assert (pull.returncode, pull.stdout) == (0, registries.image.config_digest + "\n"), pull.stderr
    assert "get" in helper.actions()
    logout = layerfs("logout", host, root=root, env=helper.env)
    assert logout.returncode == 0 and logout.stdout == f"Removing login credentials for {host}\n"
    assert helper.secrets() == {}
    assert json.loads(helper.config.read_text())["auths"] == {}
    denied = layerfs("pull", "-q", f"{host}/public/tiny:latest", root=root, env=helper.env)
    assert denied.returncode == 1 and "layerfs login" in denied.stderr, denied.stderr
    assert helper.actions() == ["store", "get", "erase", "get"]


def test_a_missing_credential_helper_is_named(registries: Registries, helper: Helper, tmp_path: Path) -> None:
    helper.config.write_text(json.dumps({"credsStore": "nosuch"}))
    proc = layerfs("pull", f"{registries.basic.host}/public/tiny:1", root=tmp_path / "store", env=helper.env)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert "docker-credential-nosuch: not found in $PATH" in line, line


# -- interrupted pulls --------------------------------------------------------------------------------


def blob_size(image: BuiltImage, i: int) -> int:
    return blob_path(image.layout, image.layer_digests[i]).stat().st_size


def published(root: Path, diff_id: str) -> bool:
    return (root / "layers" / diff_id[7:] / "layer.json").is_file()


def check_big(root: Path, big: BuiltImage) -> None:
    """The pulled big image: its ID, and each layer's file equal to what was pushed."""
    from layerfs import Store

    store = Store(root)
    image = store.get(big.config_digest)
    for i, layer_dir in enumerate(store.layer_dirs(image)):
        with tarfile.open(blob_path(big.layout, big.layer_digests[i])) as tar:
            member = tar.extractfile(f"data{i}/random.bin")
            assert member is not None
            assert (layer_dir / f"data{i}/random.bin").read_bytes() == member.read()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill -9"])
def test_an_interrupted_pull_keeps_completed_layers_and_the_next_costs_the_rest(registries: Registries,
                                                                               tmp_path: Path, sig: int) -> None:
    """Ctrl-C (or kill -9) while the second of three layers downloads, one at a time at 4 MB/s:
    the first layer stays (docker keeps completed layers), so does the part of the second, across
    a clean-up by another command; the next pull fetches only the rest, with a Range request."""
    big, root = registries.big, tmp_path / "store"
    slow = Proxy.start("127.0.0.1", registries.anon.port, rate=4 << 20)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), "pull",
                                 "--max-concurrent-downloads", "1", f"{slow.host}/public/big:1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        first = big.diff_ids[0]
        while not (published(root, first) and slow.bytes_down > blob_size(big, 0) + (2 << 20)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the pull never got to its second layer"
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        slow.stop()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == "Error: interrupted", err
    else:
        assert proc.returncode == -signal.SIGKILL
    partial = root / "tmp" / f"resume-blob-{big.layer_digests[1][7:]}"
    kept = partial.stat().st_size
    assert 0 < kept < blob_size(big, 1)
    assert published(root, first) and not os.listdir(root / "images")
    tiny_layout(tmp_path / "other", "1")
    run_layerfs("load", f"oci:{tmp_path / 'other'}:1", root=root)  # a writer: its clean-up keeps them
    assert published(root, first) and partial.stat().st_size == kept
    counting = Proxy.start("127.0.0.1", registries.anon.port)
    try:
        again = layerfs("--debug", "pull", "-q", f"{counting.host}/public/big:1", root=root)
        assert again.returncode == 0, again.stderr
        fetched = counting.bytes_down
    finally:
        counting.stop()
    rest = blob_size(big, 1) - kept + blob_size(big, 2)
    assert rest < fetched < rest + (256 << 10), (fetched, rest)
    assert f"/blobs/{big.layer_digests[1]} (bytes={kept}-): 206" in again.stderr, again.stderr
    check_big(root, big)
    assert not [p for p in os.listdir(root / "tmp") if p.startswith("resume-")]


def test_kept_bytes_expire_and_wrong_ones_are_fetched_again(registries: Registries, tmp_path: Path) -> None:
    """A kept partial blob older than a day goes at the next clean-up; one whose bytes are wrong
    (a disk that lost them) costs a fresh download, not a failed pull."""
    from layerfs._store.store import RESUME_SECONDS

    big, root = registries.big, tmp_path / "store"
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    wrong = tmp / f"resume-blob-{big.layer_digests[0][7:]}"
    wrong.write_bytes(os.urandom(1 << 20))
    old = tmp / f"resume-blob-{big.layer_digests[2][7:]}"
    old.write_bytes(blob_path(big.layout, big.layer_digests[2]).read_bytes()[:1 << 20])
    os.utime(old, (time.time() - RESUME_SECONDS - 60,) * 2)
    tiny_layout(tmp_path / "other", "1")
    run_layerfs("load", f"oci:{tmp_path / 'other'}:1", root=root)
    assert wrong.exists() and not old.exists()
    proc = layerfs("pull", "-q", f"{registries.anon.host}/public/big:1", root=root)
    assert proc.returncode == 0, proc.stderr
    check_big(root, big)
    assert not wrong.exists()
