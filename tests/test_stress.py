"""Many commands at once (issue 12): rounds of concurrent ``layerfs`` commands against one store.

Each round starts seven clients at the same moment (six in the first round, which has no pair
pulled before for client 7), each running its commands in order:

1. ``pull`` image A of this round's pair, 2. ``pull`` image B (A and B share two layers that the
   store lacks when the round starts: the previous round removed them);
3. ``rm -f`` the two images of the other pair (pulled the round before);
4. ``mount --read-only`` image K1, read it, ``umount``, twice;
5. ``mount --name w`` image K2 (a container), write ``round-N.txt``, ``commit w``, ``umount``;
6. ``tag`` K1, then ``image prune -af``;
7. ``mount --read-only`` the image A of the other pair (by ID), read it, ``umount``: while client 3
   removes it, so either the mount goes first and the rm is refused, or the rm goes first and the
   mount fails with "No such image", never a mount of layers that are gone.

After each round, with nothing running, the end state is checked against ``verify`` and against
what each command reported:

- every command succeeded: a pull, a mount or a commit never failed because an ``rm`` or a
  ``prune`` removed what it needed (only an ``rm`` of an image a prune had removed first may say
  "No such image", or that the image is being used by client 7's mount; and client 7's mount may
  fail "No such image" when the rm reported deleting the image);
- an image a pull or commit reported is there, tagged, unless an ``rm`` or a ``prune`` of the round
  reported deleting it; a commit's layer holds the file written in the container;
- each layer of the pair that the store lacked was fetched once from the registry (counted in the
  registry's access log, each fetch timed as it appears there), once more only where a command
  that reported deleting it ran between two of its fetches (a prune removed the first pull's image
  and the layer before the second pull held it): two pulls sharing a layer fetch it once;
- the container's upper holds the file of every round so far; ``verify`` passes; nothing is left
  in ``tmp/``, ``mounts/`` or the mount table.

CI runs :data:`ROUNDS` rounds; ``scripts/crashtest --stress N`` runs N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _registry_server import Registry, push
from conftest import require_fuse, require_root, require_tool
from test_store import BASE, make_layout

from layerfs import Store, _proc
from layerfs._store import containers as _containers

ROUNDS = 4


@dataclasses.dataclass
class Ran:
    """One command of a round: what it was and what it said."""

    client: int
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    #: when it started and ended (time.monotonic)
    started: float = 0.0
    ended: float = 0.0


@dataclasses.dataclass
class Pair:
    """Two images of the registry that share two layers: ``layers`` maps blob digest -> diff ID (a
    shared layer may come as two blobs: the same tar, gzipped at another time)."""

    refs: tuple[str, str]
    layers: dict[str, str]


@dataclasses.dataclass
class RoundResult:
    number: int
    ran: list[Ran]
    #: fetches of each layer (diff ID) of the pair the store lacked at the start, and of those the
    #: ones a deletion reported between them allows (see the module docstring)
    fetches: dict[str, int]
    allowed: dict[str, int]


class Stress:
    """A store, a registry with two pairs of images, and images K1 and K2 (see the module docstring)."""

    def __init__(self, work: Path, registry: Registry, pairs: list[Pair]) -> None:
        self.work = work
        self.root = work / "store"
        self.registry = registry
        self.pairs = pairs
        self.env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(work / "run"))
        self.results: list[RoundResult] = []
        #: reference -> the image ID its last pull reported
        self.pulled: dict[str, str] = {}
        #: the client commands running now (to kill them if a client hangs)
        self.running: set[subprocess.Popen[str]] = set()
        self._running_lock = threading.Lock()

    @classmethod
    @contextlib.contextmanager
    def start(cls, work: Path) -> Iterator[Stress]:
        work.mkdir(parents=True, exist_ok=True)
        (work / "storage").mkdir(exist_ok=True)
        registry = Registry.start(work / "registry", work / "storage", accesslog=True)
        try:
            lay = work / "layouts"
            pairs = []
            for p in (0, 1):
                shared = [BASE, {f"s{p}/one": os.urandom(120 << 10)}, {f"s{p}/two": os.urandom(80 << 10)}]
                refs, layers = [], {}
                for name in ("a", "b"):
                    image = make_layout(lay / f"{name}{p}", [*shared, {f"{name}{p}/own": os.urandom(60 << 10)}],
                                        tag="1")
                    ref = f"{registry.host}/stress/{name}{p}:1"
                    push(f"oci:{lay / f'{name}{p}'}:1", ref)
                    refs.append(ref)
                    manifest = _manifest_layers(lay / f"{name}{p}")
                    layers.update(zip(manifest, image["diff_ids"]))  # type: ignore[call-overload]
                pairs.append(Pair((refs[0], refs[1]), layers))
            for name in ("k1", "k2"):
                make_layout(lay / name, [BASE, {f"{name}/file": f"{name}\n".encode()}], tag="1")
            stress = cls(work, registry, pairs)
            stress._ok("load", "--tag", "k1:1", f"oci:{lay / 'k1'}:1")
            stress._ok("load", "--tag", "k2:1", f"oci:{lay / 'k2'}:1")
            for mnt, name in ((work / "m1", "k1c"), (work / "m2", "w")):
                mnt.mkdir()
                stress._ok("mount", "--name", name, f"{'k1' if name == 'k1c' else 'k2'}:1", str(mnt))
                stress._ok("umount", str(mnt))  # k1c keeps K1 from prune -a; w is the container written in
            yield stress
        finally:
            registry.stop()
            for m in _proc.mounts():
                if m.mountpoint.startswith(str(work)):
                    subprocess.run(["umount", "-l", m.mountpoint], capture_output=True)

    def _layerfs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "layerfs", "--root", str(self.root), *args],
                              capture_output=True, text=True, env=self.env, timeout=300)

    def _client_layerfs(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a client's command in a session of its own, killable by :meth:`kill_clients`."""
        proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(self.root), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                                start_new_session=True)
        with self._running_lock:
            self.running.add(proc)
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            with self._running_lock:
                self.running.discard(proc)
            if proc.poll() is None:
                _kill_group(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def kill_clients(self) -> None:
        """Kill the commands the clients run now."""
        with self._running_lock:
            running = list(self.running)
        for proc in running:
            _kill_group(proc)

    def _ok(self, *args: str) -> str:
        proc = self._layerfs(*args)
        assert proc.returncode == 0, f"layerfs {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    # -- a round -------------------------------------------------------------------------------

    def round(self, number: int) -> RoundResult:
        """Run one round (see the module docstring) and check it; returns what happened."""
        pair, other = self.pairs[number % 2], self.pairs[1 - number % 2]
        store = Store(self.root)
        missing = {diff for diff in pair.layers.values() if not store.has_layer(diff)}
        gets_before = len(self.registry.blob_gets())
        m1, m2, m3 = self.work / "m1", self.work / "m2", self.work / "m3"
        m3.mkdir(exist_ok=True)
        clients: list[list[list[str]]] = [
            [["pull", "-q", pair.refs[0]]],
            [["pull", "-q", pair.refs[1]]],
            [["rm", "-f", *other.refs]],
            [["mount", "--read-only", "k1:1", str(m1)], ["@read", str(m1 / "k1" / "file"), "k1\n"],
             ["umount", str(m1)]] * 2,
            [["mount", "--name", "w", "k2:1", str(m2)], ["@write", str(m2 / f"round-{number}.txt"), str(number)],
             ["commit", "w", f"committed:{number}"], ["umount", str(m2)]],
            [["tag", "k1:1", f"stress/t:{number}"], ["image", "prune", "-af"]],
        ]
        if self.pulled.get(other.refs[0]) in {i.id for i in store.images()}:  # what client 3 removes
            clients.append([["mount", "--read-only", self.pulled[other.refs[0]], str(m3)],
                            ["@read", str(m3 / "etc" / "os-release"), "ID=test\n"], ["umount", str(m3)]])
        ran: list[Ran] = []
        lock = threading.Lock()
        go = threading.Barrier(len(clients))

        def client(i: int, steps: list[list[str]]) -> None:
            go.wait()
            for argv in steps:
                started = time.monotonic()
                if argv[0] in ("@read", "@write"):
                    try:
                        if argv[0] == "@write":
                            Path(argv[1]).write_text(argv[2])
                        got = Path(argv[1]).read_text()
                        result = Ran(i, argv, 0 if got == argv[2] else 1, got, "")
                    except OSError as err:
                        result = Ran(i, argv, 1, "", str(err))
                else:
                    proc = self._client_layerfs(*argv)
                    result = Ran(i, argv, proc.returncode, proc.stdout, proc.stderr)
                result.started, result.ended = started, time.monotonic()
                with lock:
                    ran.append(result)
                if result.returncode != 0:
                    return  # a failure the check allows (below) ends the client

        # each blob fetch timed as it appears in the access log (written when the blob is sent)
        stamped: list[tuple[float, str]] = []
        stop = threading.Event()

        def watch() -> None:
            seen = gets_before
            while True:
                last = stop.is_set()
                gets = self.registry.blob_gets()
                now = time.monotonic()
                stamped.extend((now, d) for d in gets[seen:])
                seen = len(gets)
                if last:
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=client, args=(i, steps), daemon=True) for i, steps in enumerate(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 600
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        hung = [i for i, t in enumerate(threads) if t.is_alive()]
        if hung:
            self.kill_clients()
            for t in threads:
                t.join(timeout=30)
        stop.set()
        watcher.join(timeout=30)
        assert not hung, f"round {number}: clients {[i + 1 for i in hung]} still ran after 600 s (killed): {ran}"
        said = "\n".join(r.stdout for r in ran)
        deleted = set(re.findall(r"(?i)deleted: (sha256:[0-9a-f]{64})", said))
        result = RoundResult(number, ran, {}, {})
        for diff in missing:
            times = [t for t, d in stamped if d in pair.layers and pair.layers[d] == diff]
            deletions = [r for r in ran if f"deleted: {diff}" in r.stdout.lower()]
            allowed = 1
            for before, after in zip(times, times[1:]):
                # the layer was published after the fetch `before` ended, and fetched again from
                # `after` on: a deletion there ran across that time (each deletion excuses one)
                between = next((r for r in deletions if r.ended > before and r.started < after), None)
                if between is not None:
                    deletions.remove(between)
                    allowed += 1
            result.fetches[diff], result.allowed[diff] = len(times), allowed
        self.results.append(result)
        for r in ran:
            if r.argv[0] == "pull" and r.returncode == 0:
                self.pulled[r.argv[2]] = r.stdout.strip()
        self._check(result, deleted, sum(len(steps) for steps in clients))
        return result

    def _check(self, result: RoundResult, deleted: set[str], commands: int) -> None:
        number = result.number
        stopped = 0
        for r in result.ran:
            fine = r.returncode == 0 or (r.argv[0] == "rm" and r.stderr.strip() != "" and all(
                "No such image" in line or "image is being used by the mount" in line
                for line in r.stderr.splitlines()))
            if r.returncode != 0 and r.argv[0] == "mount" and r.argv[1] == "--read-only" and r.argv[2] in deleted:
                fine = "No such image" in r.stderr  # the rm went first: the mount fails, cleanly
                stopped += 2
            assert fine, f"round {number}: {r.argv} failed: {r.stderr.strip() or r.stdout.strip()}"
        assert len(result.ran) + stopped == commands, f"round {number}: a client stopped: {result.ran}"
        store = Store(self.root)
        ids = {i.id: i for i in store.images()}
        for r in result.ran:
            if r.argv[0] in ("pull", "commit"):
                image_id = r.stdout.strip()
                if image_id not in deleted:
                    assert image_id in ids, f"round {number}: {r.argv} reported {image_id}, which is gone"
                    want = r.argv[2] if r.argv[0] == "commit" else r.argv[2].rpartition("/")[2]
                    assert any(t.endswith(want) for t in ids[image_id].repo_tags), (r.argv, ids[image_id].repo_tags)
                if r.argv[0] == "commit" and image_id in ids:
                    top = store.layer_dirs(ids[image_id])[-1]
                    assert (top / f"round-{number}.txt").read_text() == str(number), f"round {number}: {r.argv}"
        for diff_id, count in result.fetches.items():
            allowed = result.allowed[diff_id]
            assert 1 <= count <= allowed, (f"round {number}: layer {diff_id} fetched {count} times, "
                                           f"{allowed - 1} deletions reported between its fetches")
        upper = _containers.get(store, "w").upper
        for i in range(number + 1):
            if any(r.number == i for r in self.results):
                assert (upper / f"round-{i}.txt").read_text() == str(i), f"round {i}'s file is lost"
        proc = self._layerfs("verify", "-q")
        assert proc.returncode == 0 and proc.stdout == "", f"round {number}: verify: {proc.stdout}{proc.stderr}"
        left = os.listdir(self.root / "tmp") + os.listdir(self.root / "mounts")
        assert left == [], f"round {number}: left in tmp/ or mounts/: {left}"
        mounted = [m.mountpoint for m in _proc.mounts() if m.mountpoint.startswith(str(self.work))]
        assert mounted == [], f"round {number}: still mounted: {mounted}"
        tags = {t for i in ids.values() for t in i.repo_tags}
        assert {"k1:1", "k2:1"} <= tags, f"round {number}: K1 or K2 lost its tag: {sorted(tags)}"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill a client command's session and reap it (a daemon it started has a session of its own:
    the teardown's unmount ends it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _manifest_layers(layout: Path) -> list[str]:
    """The layer blob digests of the one image of an OCI layout."""
    import json

    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_text())
    return [d["digest"] for d in manifest["layers"]]


def test_many_commands_at_once(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    require_tool("docker-registry", "skopeo")
    with Stress.start(tmp_path / "stress") as stress:
        started = time.monotonic()
        for number in range(ROUNDS):
            stress.round(number)
        shared_fetched_once = sum(1 for r in stress.results for d, n in r.fetches.items() if n == 1)
        assert shared_fetched_once >= ROUNDS  # at least the shared layers of every pair came once
        assert time.monotonic() - started < 300



def test_an_image_removed_while_it_is_looked_up_is_no_such_image(tmp_path: Path) -> None:
    """Found by the stress test (client 7): ``mount ID`` while an ``rm`` of that ID ran said
    "Error: No such file or directory: .../images/<id>.json".  The rm is made to happen between
    finding the ID and reading its record."""
    from layerfs import ImageNotFound
    from layerfs._transfer.load import load

    make_layout(tmp_path / "app", [BASE], tag="1")

    class Racing(Store):
        def _resolve(self, name: str) -> str:
            image_id = super()._resolve(name)
            with Store(self.root).writer() as w:
                w.remove(image_id)  # another command's rm, at the worst moment
            return image_id

    (image,) = load(Store(tmp_path / "store"), f"oci:{tmp_path / 'app'}")
    with pytest.raises(ImageNotFound, match=f"No such image: {image.id}"):
        Racing(tmp_path / "store").get(image.id)
