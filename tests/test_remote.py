"""What skopeo and crane users look for (issue 10, "What they look for and do not find"): a
registry's image looked at without pulling it (``inspect docker://REF`` / ``inspect --remote``,
``manifest``, ``tags``), and ``--creds USER:PASS`` / ``--tls-verify=false`` where they type them.

skopeo itself is the oracle: every test runs skopeo on the same registry and compares what the
user sees, field by field or byte for byte.  Registries are Debian's ``docker-registry`` on
127.0.0.1 (one storage served anonymously and with Basic auth); nothing is mocked.  Each test
also checks that the commands that only look leave no store behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _images import MEDIA_MANIFEST, BuiltImage, TarEntry, gzip_bytes, sha256, tar_bytes, write_layout
from _oracles import blob_path
from _registry_server import Proxy, Registry, free_port, push, write_htpasswd
from conftest import require_root, require_tool

from layerfs._cli.main import go_bool_flags
from layerfs._oci.reference import parse as parse_reference
from layerfs._registry.client import RegistryClient

USER, PASSWORD = "alice", "wonderland"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture(scope="module", autouse=True)
def _needs_tools() -> None:
    require_root()
    require_tool("skopeo", "docker-registry", "htpasswd")


@dataclasses.dataclass
class Registries:
    """One storage served anonymously (``anon``) and with Basic auth (``basic``), holding
    ``public/tiny`` (tags ``1``, ``latest``: an OCI manifest; ``v2s2``: the same image under a
    docker manifest) and ``public/multi:1`` (an OCI index over linux/amd64 and linux/arm64)."""

    anon: Registry
    basic: Registry
    tiny: BuiltImage
    multi_index: str
    multi_children: dict[str, str]  # "linux/arm64" -> manifest digest


def _layer(name: str, data: bytes) -> tuple[bytes, str]:
    tar = tar_bytes([TarEntry("etc/", tarfile.DIRTYPE, mode=0o755), TarEntry(f"etc/{name}", data=data)])
    return gzip_bytes(tar), sha256(tar)


def _multi(layout: Path) -> tuple[str, dict[str, str]]:
    """An OCI index over two single-layer images (amd64, arm64) tagged ``multi`` in ``layout``."""
    children, entries = {}, []
    for arch in ("amd64", "arm64"):
        img = write_layout(layout, f"multi-{arch}", [_layer(f"arch-{arch}", arch.encode())],
                           config={"architecture": arch, "os": "linux", "created": "2021-02-03T04:05:06Z"})
        size = blob_path(layout, img.manifest_digest).stat().st_size
        children[f"linux/{arch}"] = img.manifest_digest
        entries.append({"mediaType": MEDIA_MANIFEST, "digest": img.manifest_digest, "size": size,
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digest = sha256(index)
    blob_path(layout, digest).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append({"mediaType": OCI_INDEX, "digest": digest, "size": len(index),
                             "annotations": {REF_NAME: "multi"}})
    (layout / "index.json").write_text(json.dumps(top))
    return digest, children


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    work = tmp_path_factory.mktemp("remote-registry")
    storage = work / "storage"
    storage.mkdir()
    started: list[Registry] = []
    try:
        anon = Registry.start(work, storage)
        started.append(anon)
        basic = Registry.start(work, storage, htpasswd=write_htpasswd(work / "htpasswd", {USER: PASSWORD}))
        started.append(basic)
        # Labels and Env with characters Go escapes, a created time with a fraction Go shortens.
        config = {"architecture": "amd64", "os": "linux", "created": "2020-09-13T12:26:40.500000000Z",
                  "docker_version": "20.10.7", "author": "Jane <jane@example.com>",
                  "config": {"Env": ["PATH=/usr/bin", "A=<b>&c"], "Cmd": ["/bin/sh"],
                             "Labels": {"z.last": "1", "a.first": "x<y"}, "ExposedPorts": {"80/tcp": {}},
                             "Hostname": "dropped by --config"}}
        tiny = write_layout(work / "tiny", "1", [_layer("one", b"1\n"), _layer("two", b"22\n")], config=config)
        for tag in ("1", "latest"):
            push(tiny.source, f"{anon.host}/public/tiny:{tag}")
        push(tiny.source, f"{anon.host}/public/tiny:v2s2", "--format", "v2s2")
        index, children = _multi(work / "multi")
        push(f"oci:{work / 'multi'}:multi", f"{anon.host}/public/multi:1", "--all", "--preserve-digests")
        yield Registries(anon, basic, tiny, index, children)
    finally:
        for server in reversed(started):
            server.stop()


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose credential files are empty places under ``tmp_path``."""
    return {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker"), "REGISTRY_AUTH_FILE": str(tmp_path / "none.json"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def layerfs(*args: str, root: Path, tmp_path: Path,
            stdin: int = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI with isolated credentials; output as bytes (manifests are compared byte for byte)."""
    return subprocess.run([sys.executable, "-m", "layerfs", "--root", str(root), *args], stdin=stdin,
                          capture_output=True, env=isolated_env(tmp_path), timeout=300, check=False)


def skopeo(*args: str, tmp_path: Path) -> bytes:
    return subprocess.run(["skopeo", *args], capture_output=True, check=True, env=isolated_env(tmp_path),
                          timeout=120).stdout


def ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def one_error(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """The single ``Error: ...`` line of a failed command, which must name ``words``."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


_LAYERS_DATA = re.compile(r'    "LayersData": \[\n.*?\n    \],\n', re.S)


# -- inspect docker://REF ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["public/tiny:1", "public/tiny:v2s2", "public/multi:1"])
def test_inspect_remote_prints_what_skopeo_prints(registries: Registries, tmp_path: Path, name: str) -> None:
    """Field by field and byte for byte what ``skopeo inspect`` prints (Name, Digest of what the
    reference names, RepoTags, Created as Go writes a time, Labels and Env with Go's escapes,
    ...), plus LayersData (newer skopeo's field, which this skopeo lacks): the layers of the
    manifest chosen for this host, as that manifest lists them.  No store is made."""
    root = tmp_path / "store"
    ref = f"{registries.anon.host}/{name}"
    expected = skopeo("inspect", "--tls-verify=false", f"docker://{ref}", tmp_path=tmp_path)
    out = ok(layerfs("inspect", f"docker://{ref}", root=root, tmp_path=tmp_path))
    assert ok(layerfs("inspect", "--remote", ref, root=root, tmp_path=tmp_path)) == out
    mine, theirs = json.loads(out), json.loads(expected)
    assert [k for k in mine if k != "LayersData"] == list(theirs)  # skopeo's order
    for key, value in theirs.items():
        assert mine[key] == value, key
    assert _LAYERS_DATA.sub("", out.decode()).encode() == expected
    manifest = json.loads(ok(layerfs("manifest", "--platform", "linux/amd64", ref, root=root, tmp_path=tmp_path)))
    assert mine["LayersData"] == [{"MIMEType": d["mediaType"], "Digest": d["digest"], "Size": d["size"],
                                   "Annotations": None} for d in manifest["layers"]]
    assert not root.exists()


def test_inspect_remote_of_another_platform(registries: Registries, tmp_path: Path) -> None:
    """--platform picks the image of another platform from an index, as skopeo's --override-arch."""
    ref = f"{registries.anon.host}/public/multi:1"
    expected = json.loads(skopeo("--override-arch", "arm64", "inspect", "--tls-verify=false", f"docker://{ref}",
                                 tmp_path=tmp_path))
    mine = json.loads(ok(layerfs("inspect", "--platform", "linux/arm64", f"docker://{ref}", root=tmp_path / "s",
                                 tmp_path=tmp_path)))
    assert mine["Architecture"] == expected["Architecture"] == "arm64"
    assert {k: v for k, v in mine.items() if k != "LayersData"} == expected
    assert mine["Digest"] == registries.multi_index  # the index's, as skopeo's


@pytest.mark.parametrize("name", ["public/tiny:1", "public/tiny:v2s2", "public/multi:1"])
def test_inspect_remote_config_and_raw_are_skopeos(registries: Registries, tmp_path: Path, name: str) -> None:
    """--config (the OCI Image type's fields, in its order: a docker config's others dropped),
    --config --raw (the config blob) and --raw (the manifest as served) equal skopeo's, byte for byte."""
    ref = f"{registries.anon.host}/{name}"
    root = tmp_path / "store"
    for flags in (["--config"], ["--config", "--raw"], ["--raw"]):
        expected = skopeo("inspect", "--tls-verify=false", *flags, f"docker://{ref}", tmp_path=tmp_path)
        assert ok(layerfs("inspect", "--remote", *flags, ref, root=root, tmp_path=tmp_path)) == expected, flags
    assert not root.exists()


def test_inspect_remote_format_and_no_tags(registries: Registries, tmp_path: Path) -> None:
    """--format is skopeo's Go template; json (and {{json .}}) the default output; -n lists no
    tags; --raw with --format is refused, as skopeo refuses it."""
    ref = f"docker://{registries.anon.host}/public/tiny:1"
    root = tmp_path / "store"
    template = "Name: {{.Name}} Digest: {{.Digest}} {{.Architecture}}"
    assert ok(layerfs("inspect", "--format", template, ref, root=root, tmp_path=tmp_path)) == \
        skopeo("inspect", "--tls-verify=false", "--format", template, ref, tmp_path=tmp_path)
    default = ok(layerfs("inspect", ref, root=root, tmp_path=tmp_path))
    for fmt in ("json", "{{json .}}"):
        assert ok(layerfs("inspect", "-f", fmt, ref, root=root, tmp_path=tmp_path)) == default
    assert json.loads(ok(layerfs("inspect", "-n", ref, root=root, tmp_path=tmp_path)))["RepoTags"] == []
    one_error(layerfs("inspect", "--raw", "--format", "{{.Name}}", ref, root=root, tmp_path=tmp_path), "--raw")
    one_error(layerfs("inspect", "--raw", "tiny:1", root=root, tmp_path=tmp_path), "--raw", "--remote")
    assert not root.exists()


def test_inspect_remote_errors_are_one_line(registries: Registries, tmp_path: Path) -> None:
    root = tmp_path / "store"
    host = registries.anon.host
    one_error(layerfs("inspect", f"docker://{host}/public/tiny:nope", root=root, tmp_path=tmp_path),
              f"inspect {host}/public/tiny:nope", "not found")
    one_error(layerfs("inspect", f"docker://{host}/Bad", root=root, tmp_path=tmp_path), "invalid reference format")
    one_error(layerfs("inspect", "--remote", "a", "b", root=root, tmp_path=tmp_path), "one image")
    one_error(layerfs("inspect", "--platform", "linux/s390x", f"docker://{host}/public/multi:1", root=root,
                      tmp_path=tmp_path), "linux/s390x")
    assert not root.exists()


# -- manifest ----------------------------------------------------------------------------------------


def test_manifest_prints_the_bytes_the_registry_serves(registries: Registries, tmp_path: Path) -> None:
    """crane manifest: the exact bytes (an index for a multi-platform tag), so that their sha256
    is the digest; --platform gives that platform's manifest; by digest too; no newline added."""
    root = tmp_path / "store"
    host = registries.anon.host
    for name in ("public/tiny:1", "public/tiny:v2s2", "public/multi:1"):
        served = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{host}/{name}", tmp_path=tmp_path)
        assert ok(layerfs("manifest", f"{host}/{name}", root=root, tmp_path=tmp_path)) == served, name
    index = ok(layerfs("manifest", f"docker://{host}/public/multi:1", root=root, tmp_path=tmp_path))
    assert sha256(index) == registries.multi_index and json.loads(index)["mediaType"] == OCI_INDEX
    arm = ok(layerfs("manifest", "--platform", "linux/arm64", f"{host}/public/multi:1", root=root, tmp_path=tmp_path))
    assert sha256(arm) == registries.multi_children["linux/arm64"]
    by_digest = ok(layerfs("manifest", f"{host}/public/multi@{registries.multi_children['linux/amd64']}", root=root,
                           tmp_path=tmp_path))
    assert sha256(by_digest) == registries.multi_children["linux/amd64"]
    assert ok(layerfs("manifest", "--platform", "linux/arm64", f"{host}/public/tiny:1", root=root,
                      tmp_path=tmp_path)) == ok(layerfs("manifest", f"{host}/public/tiny:1", root=root,
                                                        tmp_path=tmp_path))  # a manifest is itself, as crane
    one_error(layerfs("manifest", f"{host}/public/nothing:1", root=root, tmp_path=tmp_path),
              f"manifest {host}/public/nothing:1")
    assert not root.exists()


# -- tags ------------------------------------------------------------------------------------------


def test_tags_lists_what_skopeo_list_tags_lists(registries: Registries, tmp_path: Path) -> None:
    """A tag per line (crane ls), in the registry's order; --format json is skopeo list-tags's
    output byte for byte; a tagged reference and an unknown repository are one-line errors."""
    root = tmp_path / "store"
    repo = f"{registries.anon.host}/public/tiny"
    expected = skopeo("list-tags", "--tls-verify=false", f"docker://{repo}", tmp_path=tmp_path)
    assert ok(layerfs("tags", "--format", "json", f"docker://{repo}", root=root, tmp_path=tmp_path)) == expected
    lines = ok(layerfs("tags", repo, root=root, tmp_path=tmp_path)).decode().splitlines()
    assert lines == json.loads(expected)["Tags"] and sorted(lines) == ["1", "latest", "v2s2"]
    one_error(layerfs("tags", f"{repo}:1", root=root, tmp_path=tmp_path), "without a tag")
    one_error(layerfs("tags", f"{registries.anon.host}/public/none", root=root, tmp_path=tmp_path),
              f"tags {registries.anon.host}/public/none", "not found")
    assert not root.exists()


class Pager:
    """An HTTP relay to a registry that pages tag lists as distribution-spec "Listing Tags" says
    (``?n=N&last=T``, the next page in ``Link: <URL>; rel="next"``): Debian's registry (2.8)
    ignores ``n``.  It takes each page from the registry's whole list; everything else passes."""

    def __init__(self, target_port: int) -> None:
        outer = self
        self.pages = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                with urllib.request.urlopen(f"http://127.0.0.1:{target_port}{url.path}", timeout=30) as resp:
                    body = resp.read()
                headers = {}
                if url.path.endswith("/tags/list") and "n" in query:
                    doc = json.loads(body)
                    tags = doc["tags"]
                    start = tags.index(query["last"][0]) + 1 if "last" in query else 0
                    n = int(query["n"][0])
                    doc["tags"] = tags[start:start + n]
                    if start + n < len(tags):
                        last = urllib.parse.quote(tags[start + n - 1])
                        headers["Link"] = f'<{url.path}?n={n}&last={last}>; rel="next"'
                    body = json.dumps(doc).encode()
                    outer.pages += 1
                self.send_response(200)
                for key, value in {**headers, "Content-Type": "application/json",
                                   "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_tag_list_pages_are_followed(registries: Registries, tmp_path: Path) -> None:
    """A registry that pages its tag list (one tag a page, the next page in ``Link``) gives the
    whole list, in order, as one page does."""
    pager = Pager(registries.anon.port)
    try:
        ref = parse_reference(f"127.0.0.1:{pager.port}/public/tiny")
        with RegistryClient(read_config=False) as client:
            whole = client.list_tags(ref)
        assert pager.pages == 0
        with RegistryClient(read_config=False) as client:
            paged = client.list_tags(ref, page_size=1)
        assert paged == whole and len(whole) == 3 and pager.pages == 3
    finally:
        pager.stop()


# -- --creds and --tls-verify=false -------------------------------------------------------------------


def test_creds_reach_a_basic_auth_registry_and_are_not_saved(registries: Registries, tmp_path: Path) -> None:
    """--creds USER:PASS works for pull, inspect --remote, manifest, tags and push as skopeo's
    does, without `login`: nothing is written to the credential files; without them, or with a
    wrong password, the command fails in one line and the store is left as it was."""
    root = tmp_path / "store"
    host = registries.basic.host
    ref = f"{host}/public/tiny:1"
    creds = f"{USER}:{PASSWORD}"
    one_error(layerfs("tags", f"{host}/public/tiny", root=root, tmp_path=tmp_path), "login")
    one_error(layerfs("tags", "--creds", f"{USER}:wrong", f"{host}/public/tiny", root=root, tmp_path=tmp_path),
              "unauthorized")
    one_error(layerfs("pull", ref, root=root, tmp_path=tmp_path), f"pull {ref}")
    assert not (root / "images").exists() or os.listdir(root / "images") == []
    assert sorted(ok(layerfs("tags", "--creds", creds, f"{host}/public/tiny", root=root,
                             tmp_path=tmp_path)).decode().split()) == ["1", "latest", "v2s2"]
    assert json.loads(ok(layerfs("inspect", "--creds", creds, f"docker://{ref}", root=root,
                                 tmp_path=tmp_path)))["Digest"] == registries.tiny.manifest_digest
    assert sha256(ok(layerfs("manifest", "--creds", creds, ref, root=root, tmp_path=tmp_path))) == \
        registries.tiny.manifest_digest
    assert ok(layerfs("pull", "-q", "--creds", creds, ref, root=root, tmp_path=tmp_path)).decode().strip() == \
        registries.tiny.config_digest
    target = f"{host}/public/pushed:1"
    one_error(layerfs("push", ref, target, root=root, tmp_path=tmp_path), f"push {target}")
    digest = ok(layerfs("push", "-q", "--creds", creds, ref, target, root=root, tmp_path=tmp_path)).decode().strip()
    assert digest == sha256(skopeo("inspect", "--tls-verify=false", "--creds", creds, "--raw", f"docker://{target}",
                                   tmp_path=tmp_path))
    for path in (tmp_path / "docker" / "config.json", tmp_path / "none.json", tmp_path / "run", tmp_path / "xdg"):
        assert not path.exists(), path


def test_creds_without_a_password_and_no_terminal_is_refused(registries: Registries, tmp_path: Path) -> None:
    one_error(layerfs("tags", "--creds", USER, f"{registries.basic.host}/public/tiny", root=tmp_path / "s",
                      tmp_path=tmp_path), "--creds", "USER:PASSWORD")


def test_tls_verify_false_is_insecure_registry_for_that_host(registries: Registries, tmp_path: Path) -> None:
    """A plain-HTTP registry on another host (127.0.0.2): refused over HTTPS by default, reached
    with --tls-verify=false (skopeo's spelling of --insecure-registry HOST) by every command;
    a bare --tls-verify means true (Go's boolean flags), so the next word stays the reference."""
    proxy = Proxy.start("127.0.0.1", registries.anon.port, bind="127.0.0.2")
    try:
        root = tmp_path / "store"
        ref = f"{proxy.host}/public/tiny:1"
        one_error(layerfs("manifest", ref, root=root, tmp_path=tmp_path), "HTTPS")
        one_error(layerfs("manifest", "--tls-verify", ref, root=root, tmp_path=tmp_path), "HTTPS")
        assert sha256(ok(layerfs("manifest", "--tls-verify=false", ref, root=root, tmp_path=tmp_path))) == \
            registries.tiny.manifest_digest
        assert "1" in ok(layerfs("tags", "--tls-verify=false", f"{proxy.host}/public/tiny", root=root,
                                 tmp_path=tmp_path)).decode().split()
        assert json.loads(ok(layerfs("inspect", "--tls-verify=false", f"docker://{ref}", root=root,
                                     tmp_path=tmp_path)))["Name"] == f"{proxy.host}/public/tiny"
        one_error(layerfs("pull", ref, root=root, tmp_path=tmp_path), "--insecure-registry")
        assert ok(layerfs("pull", "-q", "--tls-verify=false", ref, root=root, tmp_path=tmp_path)).decode().strip() == \
            registries.tiny.config_digest
        target = f"{proxy.host}/public/tls:1"
        ok(layerfs("push", "-q", "--tls-verify=false", ref, target, root=root, tmp_path=tmp_path))
        assert hashlib.sha256(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registries.anon.host}"
                                     "/public/tls:1", tmp_path=tmp_path)).hexdigest() == \
            registries.tiny.manifest_digest[7:]
        bad = layerfs("pull", "--tls-verify=maybe", ref, root=root, tmp_path=tmp_path)
        assert bad.returncode == 2 and b"--tls-verify" in bad.stderr
    finally:
        proxy.stop()


def test_every_command_has_a_teaching_help(tmp_path: Path) -> None:
    """Each new command and option is in its --help, with examples."""
    for command, words in ((["inspect"], ["--remote", "docker://", "--config", "--raw", "--format", "examples:"]),
                           (["manifest"], ["--platform", "crane manifest", "examples:"]),
                           (["tags"], ["skopeo list-tags", "--format", "examples:"]),
                           (["pull"], ["--creds", "--tls-verify"]), (["push"], ["--creds", "--tls-verify"])):
        text = ok(layerfs(*command, "--help", root=tmp_path / "s", tmp_path=tmp_path)).decode()
        for word in words:
            assert word in text, (command, word)


@pytest.mark.parametrize("argv, expected", [
    (["pull", "--tls-verify", "r"], ["pull", "--tls-verify=true", "r"]),
    (["--root", "s", "tags", "--tls-verify=false", "r"], ["--root", "s", "tags", "--tls-verify=false", "r"]),
    (["--debug", "history", "-H", "img"], ["--debug", "history", "-H=true", "img"]),
    (["run", "img", "ls", "-H", "--tls-verify"], ["run", "img", "ls", "-H", "--tls-verify"]),  # the command's own
    (["inspect", "--", "--tls-verify"], ["inspect", "--", "--tls-verify"]),
])
def test_go_boolean_flags_never_take_the_next_word(argv: list[str], expected: list[str]) -> None:
    """Go's boolean flags (skopeo's --tls-verify, docker history's -H) alone mean true; only the
    commands that have them are rewritten, so a command run in a container keeps its words."""
    assert go_bool_flags(argv) == expected
