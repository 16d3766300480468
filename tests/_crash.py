"""Crash points: kill a real ``layerfs`` process (SIGKILL) at one system call, then check the store.

Shared by tests/test_crash.py (a fixed subset, in CI) and scripts/crashtest (every point); the
strace details are in docs/testing.rst "Crash points".

How a point is made.  Each scenario is one command (pull, load, commit, push, rm of an image or a
container, tag, image prune, mount, umount) run against a fresh copy of one template store.  A
first run under ``strace -f`` records the system calls that change something (:data:`SYSCALLS`:
renames, unlinks, mkdirs, writes, fsyncs, flocks, chmods, xattrs, mounts, kills, forks ...),
counted per thread as strace counts them.  Every ``(syscall, N)`` seen is one kill point: the
run ``strace -f -e inject=SYSCALL:signal=KILL:when=N`` delivers SIGKILL to the first thread that
enters its Nth call of SYSCALL, before the call runs (a point "after" a call is the point of the
next one).  With ``-f`` the mount daemon is traced too, so some points kill the daemon instead of
(or as well as) the command.

What is checked after each kill (:meth:`World.run_point`):

1. at once, before any other command: the store holds no half-made part: every layer directory
   matches the tree digest recorded when it was published, every image has its config, layers
   and chains (``verify``'s checks; only dangling references and stale mount records, which the
   next writer drops, and a dead mount, which ``umount`` clears, may be left); the container
   ``keep``'s upper still holds the file written in it before;
2. the next command: a dead mount left behind is cleared by ``layerfs umount``; the killed command
   is run again and must succeed (an ``rm`` whose image is already gone may say so);
3. ``layerfs verify`` passes (exit 0, nothing printed); ``tmp/`` and ``mounts/`` are empty; no
   daemon and no mount is left; the other images are there, unchanged; the scenario's own result
   holds (the pulled image is tagged, the removed one is gone, ...); the upper file is intact.

API::

    with World.start(work) as world:          # registry, images, template store
        points = world.points("pull")         # [KillPoint], from a recorded run
        result = world.run_point(point)       # PointResult (raises AssertionError on a failed check)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from _registry_server import Registry, push
from conftest import daemons_of
from test_store import BASE, make_layout

from layerfs import Store, _proc
from layerfs._maint import verify as _verify

#: The system calls that change something (files, locks, mounts, processes): the kill points.
SYSCALLS = ("rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "mkdir", "mkdirat", "openat2",
            "write", "pwrite64", "fsync", "fdatasync", "flock", "fchmod", "fchmodat", "chmod", "fchown",
            "fchownat", "utimensat", "fsetxattr", "setxattr", "lsetxattr", "symlinkat", "linkat", "mknodat",
            "ftruncate", "fallocate", "mount", "umount2", "kill", "clone", "clone3", "execve")

#: The scenarios, in the order the table lists them.
SCENARIOS = ("pull", "load", "commit", "push", "rm", "rm-container", "tag", "prune", "mount", "mount-new",
             "umount")

#: The file written in the container ``keep`` before any kill: it must survive every one.
SURVIVOR = ("survivor.txt", "written before the crashes\n")

PY = sys.executable


@dataclasses.dataclass(frozen=True)
class KillPoint:
    """One kill point: SIGKILL at the ``n``th call of ``syscall`` by one thread of ``scenario``."""

    scenario: str
    syscall: str
    n: int
    #: the call as the recording run saw it (abridged), for the report
    seen: str

    @property
    def name(self) -> str:
        return f"{self.scenario}:{self.syscall}#{self.n}"


@dataclasses.dataclass(frozen=True)
class PointResult:
    """What happened at a point: ``killed`` False when the run never reached it."""

    point: KillPoint
    killed: bool
    #: which process died: "command", or "child" (the mount daemon, a helper such as du)
    victims: tuple[str, ...] = ()
    #: the call it died in, as strace logged it
    at: str = ""


def layerfs(root: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``root``; never raises on a failure."""
    return subprocess.run([PY, "-m", "layerfs", "--root", str(root), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# -- strace logs ------------------------------------------------------------------------------------

_LINE_RE = re.compile(r"^(\d+) +(?:(\w+)\((.*)|\+\+\+ (.*) \+\+\+)$")


def _parse(log: str) -> list[tuple[int, str, str]]:
    """``(pid, syscall, text)`` for every call entered (resumed halves skipped); ``syscall`` is
    ``+++`` for a process's end (``text``: how it ended)."""
    out = []
    for line in log.splitlines():
        m = _LINE_RE.match(line)
        if m is None:
            continue
        pid = int(m.group(1))
        if m.group(2) in SYSCALLS:  # (strace shows calls it has no name for, e.g. syscall_0x1d0)
            out.append((pid, m.group(2), m.group(3)))
        elif m.group(2):
            continue
        else:
            out.append((pid, "+++", m.group(4)))
    return out


def _main(entries: Sequence[tuple[int, str, str]]) -> int | None:
    """The traced command's pid: the one that ran ``execve`` first (attached processes run none)."""
    return next((pid for pid, call, _ in entries if call == "execve"), None)


def _abridge(text: str, root: Path) -> str:
    text = text.replace(str(root), "ROOT")
    text = re.sub(r"[0-9a-f]{64}", lambda m: m.group(0)[:8], text)
    text = re.sub(r"<unfinished \.\.\.>", "", text)
    return text[:110]


def _strace(log: Path, *extra: str) -> list[str]:
    return ["strace", "-f", "-q", "-I", "2", "-s", "48", "-o", str(log), "-e", f"trace={','.join(SYSCALLS)}",
            *extra, "--"]


def wait_traced(proc: subprocess.Popen[str], log: Path, timeout: float = 120) -> tuple[str, str]:
    """Wait for the traced command to end; then let strace go, detaching from a daemon the
    command left running (or one it attached to).  Whatever is left of strace's session then
    (all of it, the traced command too, when it did not end in time) is killed: a daemon
    has a session of its own."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("the traced command did not end")
            with contextlib.suppress(OSError):
                entries = _parse(log.read_text())
                main = _main(entries)
                if main is not None and any(p == main and c == "+++" for p, c, _ in entries):
                    proc.send_signal(signal.SIGTERM)  # strace detaches from the rest (a daemon)
                    break
            time.sleep(0.02)
        out, err = proc.communicate(timeout=60)
        return out, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=60)


# -- the world ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Scenario:
    """One command to kill: how to set up a point, the command, what "the next command" is and
    what must hold once it ran."""

    name: str
    argv: Callable[[World, Path], list[str]]
    #: run (untraced) before the command, e.g. mounting what umount unmounts
    before: Callable[[World, Path], None] | None = None
    #: processes to trace as well (the daemon that umount stops)
    attach: Callable[[World, Path], list[int]] | None = None
    #: the retry: must succeed, unless its error is one of these (an rm whose image is gone)
    retry: Callable[[World, Path], list[str]] | None = None
    retry_may_say: tuple[str, ...] = ()
    #: what must hold at the end (raises AssertionError)
    check: Callable[[World, Path], None] | None = None

    def __post_init__(self) -> None:
        # each command's end state is checked by more than verify: a retry or a check of its own
        if self.retry is None and self.check is None:
            raise TypeError(f"crash scenario {self.name}: give it a retry or a check")


@dataclasses.dataclass
class World:
    """A registry with the test images, a template store, and a work directory for the points."""

    work: Path
    registry: Registry
    template: Path
    env: dict[str, str]
    keep_id: str
    victim_id: str
    dangling_id: str
    rmme_id: str = ""
    counter: int = 0

    @classmethod
    @contextlib.contextmanager
    def start(cls, work: Path) -> Iterator[World]:
        """Build the images, start the registry, make the template store (see :func:`_template`)."""
        work.mkdir(parents=True, exist_ok=True)
        (work / "storage").mkdir(exist_ok=True)
        registry = Registry.start(work / "registry", work / "storage")
        try:
            env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(work / "run"))
            lay = work / "layouts"
            make_layout(lay / "keep", [BASE, {"keep/data": os.urandom(64 << 10), "keep/etc/conf": b"k=1\n"}],
                        tag="1")
            make_layout(lay / "victim", [BASE, {"victim/data": os.urandom(200 << 10)}], tag="1")
            make_layout(lay / "dangling", [BASE, {"dangling/x": b"x" * 5000}], tag="1")
            make_layout(lay / "rmme", [BASE, {"rmme/a": os.urandom(120 << 10)}, {"rmme/b": b"b" * 3000}], tag="1")
            make_layout(lay / "load", [BASE, {"load/a": os.urandom(100 << 10), "load/dir/b": b"b"},
                                       {"load/c": os.urandom(300 << 10)}], tag="1")
            make_layout(lay / "pull", [BASE, {"pull/a": os.urandom(150 << 10), "pull/l": b"l"},
                                       {"pull/b": os.urandom(250 << 10)}], tag="1")
            push(f"oci:{lay / 'pull'}:1", f"{registry.host}/crash/pull:1")
            world = cls(work, registry, work / "template", env, "", "", "")
            world._make_template(lay)
            yield world
        finally:
            registry.stop()
            for m in _proc.mounts():
                if m.mountpoint.startswith(str(work)):
                    subprocess.run(["umount", "-l", m.mountpoint], capture_output=True)

    def _make_template(self, lay: Path) -> None:
        """keep:1 with container ``keep`` (its upper holds :data:`SURVIVOR`), victim:1, an untagged
        image, and container ``spare`` (for rm of a container)."""
        root = self.template
        _ok(layerfs(root, "load", f"oci:{lay / 'keep'}:1", "--tag", "keep:1", env=self.env), "load keep")
        _ok(layerfs(root, "load", f"oci:{lay / 'victim'}:1", "--tag", "victim:1", env=self.env), "load victim")
        _ok(layerfs(root, "load", f"oci:{lay / 'dangling'}:1", "--tag", "moving:1", env=self.env), "load dangling")
        _ok(layerfs(root, "tag", "victim:1", "moving:1", env=self.env), "tag")  # the old one is dangling now
        _ok(layerfs(root, "load", f"oci:{lay / 'rmme'}:1", "--tag", "rmme:1", env=self.env), "load rmme")
        mnt = self.work / "template-mnt"
        mnt.mkdir()
        _ok(layerfs(root, "mount", "--name", "keep", "keep:1", str(mnt), env=self.env), "mount keep")
        try:
            (mnt / SURVIVOR[0]).write_text(SURVIVOR[1])
            (mnt / "keep" / "etc" / "conf").write_text("k=2\n")  # a copy-up
        finally:
            _ok(layerfs(root, "umount", str(mnt), env=self.env), "umount")
        _ok(layerfs(root, "mount", "--name", "spare", "victim:1", str(mnt), env=self.env), "mount spare")
        _ok(layerfs(root, "umount", str(mnt), env=self.env), "umount")
        store = Store(root)
        self.keep_id = store.get("keep:1").id
        self.victim_id = store.get("victim:1").id
        self.rmme_id = store.get("rmme:1").id
        ids = {i.id for i in store.images()}
        (self.dangling_id,) = ids - {self.keep_id, self.victim_id, self.rmme_id}

    # -- one point -----------------------------------------------------------------------------

    def fresh(self, label: str) -> Path:
        """A new point directory holding ``store`` (a copy of the template) and an empty ``mnt``."""
        self.counter += 1
        point = self.work / "points" / f"{self.counter:04d}-{label}"
        point.mkdir(parents=True)
        subprocess.run(["cp", "-a", str(self.template), str(point / "store")], check=True)
        (point / "mnt").mkdir()
        return point

    def points(self, scenario: str) -> list[KillPoint]:
        """Every ``(syscall, N)`` the command makes, from one recorded run, in the order first seen."""
        sc = SCENARIO_TABLE[scenario]
        point = self.fresh(f"{scenario}-record")
        if sc.before is not None:
            sc.before(self, point)
        try:
            log = point / "strace.log"
            _, err = wait_traced(self._traced(sc, point, log), log)
            entries = _parse(log.read_text())
            main = _main(entries)
            ends = {pid: text for pid, call, text in entries if call == "+++"}
            if ends.get(main) != "exited with 0":
                raise AssertionError(f"recording {scenario}: the command did not succeed: {ends.get(main)}: {err}")
            counts: dict[tuple[int, str], int] = {}
            seen: dict[tuple[str, int], str] = {}
            for pid, call, text in entries:
                if call == "+++":
                    continue
                n = counts[(pid, call)] = counts.get((pid, call), 0) + 1
                if (call, n) not in seen and not (call == "execve" and n == 1):
                    seen[(call, n)] = f"{call}({_abridge(text, point / 'store')}"
        finally:
            self._clean_point(point)
        return [KillPoint(scenario, call, n, text) for (call, n), text in seen.items()]

    def _traced(self, sc: Scenario, point: Path, log: Path, *inject: str) -> subprocess.Popen[str]:
        """Start the scenario's command under strace (and attach to the processes it names)."""
        attach = [a for pid in (sc.attach(self, point) if sc.attach else []) for a in ("-p", str(pid))]
        return subprocess.Popen([*_strace(log, *inject, *attach), PY, "-m", "layerfs", "--root", str(point / "store"),
                                 *sc.argv(self, point)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                                start_new_session=True)  # killed as a whole by wait_traced

    def run_point(self, kp: KillPoint) -> PointResult:
        """Kill the scenario's command at ``kp``, then run the checks of the module docstring."""
        sc = SCENARIO_TABLE[kp.scenario]
        point = self.fresh(f"{kp.scenario}-{kp.syscall}-{kp.n}")
        try:
            if sc.before is not None:
                sc.before(self, point)
            log = point / "strace.log"
            wait_traced(self._traced(sc, point, log, "-e", f"inject={kp.syscall}:signal=KILL:when={kp.n}"), log)
            entries = _parse(log.read_text())
            main = _main(entries)
            killed = [pid for pid, call, text in entries if call == "+++" and text == "killed by SIGKILL"]
            if not killed:
                self._clean_point(point)
                return PointResult(kp, False)
            last_calls = {}
            for pid, call, text in entries:
                if call != "+++":
                    last_calls[pid] = f"{call}({_abridge(text, point / 'store')}"
            victims = ("command",) if main in killed else ("child",)
            at = last_calls.get(killed[0], "")
            self._check_at_once(kp, point)
            self._next_command(sc, point)
            self._check_end(sc, point)
            self._clean_point(point)
            return PointResult(kp, True, victims, at)
        except BaseException:
            self._unmount(point)
            raise

    # -- the checks ------------------------------------------------------------------------------

    def _check_at_once(self, kp: KillPoint, point: Path) -> None:
        store = Store(point / "store")
        report = _verify.verify(store)
        bad = [p.line() for p in report.problems if not p.what.startswith(("reference ", "mount record ", "mount at "))]
        if bad:
            raise AssertionError(f"{kp.name}: right after the kill: {bad}")
        self._check_survivor(store)

    def _check_survivor(self, store: Store) -> None:
        from layerfs._store import containers as _containers

        c = _containers.get(store, "keep")
        if (c.upper / SURVIVOR[0]).read_text() != SURVIVOR[1]:
            raise AssertionError("the container's upper file changed")
        if (c.upper / "keep" / "etc" / "conf").read_text() != "k=2\n":
            raise AssertionError("the container's copied-up file changed")

    def _next_command(self, sc: Scenario, point: Path) -> None:
        root, mnt = point / "store", point / "mnt"
        if str(mnt) in _proc.mountpoints():  # a mount left behind, live or dead: umount clears it
            _ok(layerfs(root, "umount", str(mnt), env=self.env), "umount of what the kill left")
        if sc.retry is not None:
            proc = layerfs(root, *sc.retry(self, point), env=self.env)
            if proc.returncode != 0 and not any(s in proc.stderr for s in sc.retry_may_say):
                raise AssertionError(f"the retry failed ({proc.returncode}): {proc.stderr.strip()}")

    def _check_end(self, sc: Scenario, point: Path) -> None:
        root, mnt = point / "store", point / "mnt"
        proc = layerfs(root, "verify", "-q", env=self.env)
        if proc.returncode != 0 or proc.stdout:
            raise AssertionError(f"verify after the next command: {proc.stdout.strip()} {proc.stderr.strip()}")
        if sc.check is not None:
            sc.check(self, point)
        store = Store(root)
        left = os.listdir(root / "tmp")
        if left:
            raise AssertionError(f"tmp/ is not empty: {left}")
        records = [(root / "mounts" / n).read_text() for n in os.listdir(root / "mounts")]
        if records:
            raise AssertionError(f"mount records left: {records} (live: {store.mounts()})")
        if str(mnt) in _proc.mountpoints():
            raise AssertionError("a mount is left")
        if daemons_of(mnt):
            raise AssertionError(f"daemons left: {daemons_of(mnt)}")
        if store.get("keep:1").id != self.keep_id:
            raise AssertionError("keep:1 changed")
        self._check_survivor(store)

    def _unmount(self, point: Path) -> None:
        mnt = point / "mnt"
        for pid in daemons_of(mnt):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if str(mnt) in _proc.mountpoints():
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

    def _clean_point(self, point: Path) -> None:
        self._unmount(point)
        shutil.rmtree(point, ignore_errors=True)


# -- the scenarios ------------------------------------------------------------------------------------

def _images(point: Path) -> dict[str, str]:
    return {t: i.id for i in Store(point / "store").images() for t in i.repo_tags}


def _check_pull(w: World, point: Path) -> None:
    if f"{w.registry.host}/crash/pull:1" not in _images(point):
        raise AssertionError("the pulled image is not tagged")


def _check_load(w: World, point: Path) -> None:
    if "loaded:1" not in _images(point):
        raise AssertionError("the loaded image is not tagged")


def _check_commit(w: World, point: Path) -> None:
    store = Store(point / "store")
    image = store.get("committed:1")
    top = store.layer_dirs(image)[-1]
    if (top / SURVIVOR[0]).read_text() != SURVIVOR[1]:
        raise AssertionError("the committed layer lacks the container's file")


def _check_rm(w: World, point: Path) -> None:
    if w.rmme_id in {i.id for i in Store(point / "store").images()}:
        raise AssertionError("the removed image is still there")


def _check_rm_container(w: World, point: Path) -> None:
    from layerfs._store import containers as _containers

    if _containers.find(Store(point / "store"), "spare") is not None:
        raise AssertionError("the removed container is still there")


def _check_tag(w: World, point: Path) -> None:
    if _images(point).get("newtag:1") != w.keep_id:
        raise AssertionError("the tag is missing")


def _check_prune(w: World, point: Path) -> None:
    ids = {i.id for i in Store(point / "store").images()}
    if w.dangling_id in ids:
        raise AssertionError("the dangling image was not pruned")
    if not {w.keep_id, w.victim_id} <= ids:  # keep has a container; victim the container spare
        raise AssertionError("prune removed an image a container uses")


def _check_mounted_view(w: World, point: Path) -> None:
    """The container mounted again (by the retry) shows its files; umount."""
    root, mnt = point / "store", point / "mnt"
    if str(mnt) not in _proc.mountpoints():
        _ok(layerfs(root, "mount", "--name", "keep", "keep:1", str(mnt), env=w.env), "mount after the crash")
    try:
        if (mnt / SURVIVOR[0]).read_text() != SURVIVOR[1] or (mnt / "keep/etc/conf").read_text() != "k=2\n":
            raise AssertionError("the container's files do not show in the mount")
    finally:
        _ok(layerfs(root, "umount", str(mnt), env=w.env), "umount")


def _check_fresh(w: World, point: Path) -> None:
    """The new container exists, once, mounted by the retry: it takes a write; umount."""
    from layerfs._store import containers as _containers

    root, mnt = point / "store", point / "mnt"
    names = [c.name for c in _containers.containers(Store(root))]
    if sorted(names) != ["fresh", "keep", "spare"]:
        raise AssertionError(f"containers: {names}")
    try:
        (mnt / "new.txt").write_text("new\n")
        if (mnt / "victim" / "data").stat().st_size != 200 << 10:
            raise AssertionError("the new container's image does not show")
    finally:
        _ok(layerfs(root, "umount", str(mnt), env=w.env), "umount")
    if (_containers.get(Store(root), "fresh").upper / "new.txt").read_text() != "new\n":
        raise AssertionError("the new container's write did not reach its upper")


def _mount_keep(w: World, point: Path) -> None:
    _ok(layerfs(point / "store", "mount", "--name", "keep", "keep:1", str(point / "mnt"), env=w.env), "mount keep")


def _push_target(w: World, point: Path) -> str:
    return f"{w.registry.host}/crash/push-{point.name[:4]}:1"


SCENARIO_TABLE: dict[str, Scenario] = {s.name: s for s in [
    Scenario("pull", lambda w, p: ["pull", "-q", f"{w.registry.host}/crash/pull:1"],
             retry=lambda w, p: ["pull", "-q", f"{w.registry.host}/crash/pull:1"], check=_check_pull),
    Scenario("load", lambda w, p: ["load", "--tag", "loaded:1", f"oci:{w.work / 'layouts' / 'load'}:1"],
             retry=lambda w, p: ["load", "--tag", "loaded:1", f"oci:{w.work / 'layouts' / 'load'}:1"],
             check=_check_load),
    Scenario("commit", lambda w, p: ["commit", "keep", "committed:1"],
             retry=lambda w, p: ["commit", "keep", "committed:1"], check=_check_commit),
    Scenario("push", lambda w, p: ["push", "-q", "keep:1", _push_target(w, p)],
             retry=lambda w, p: ["push", "-q", "keep:1", _push_target(w, p)]),
    Scenario("rm", lambda w, p: ["rm", "rmme:1"], retry=lambda w, p: ["rm", w.rmme_id],
             retry_may_say=("No such image",), check=_check_rm),
    Scenario("rm-container", lambda w, p: ["rm", "spare"], retry=lambda w, p: ["rm", "spare"],
             retry_may_say=("No such image: spare",), check=_check_rm_container),
    Scenario("tag", lambda w, p: ["tag", "keep:1", "newtag:1"], retry=lambda w, p: ["tag", "keep:1", "newtag:1"],
             check=_check_tag),
    Scenario("prune", lambda w, p: ["image", "prune", "-af"], retry=lambda w, p: ["image", "prune", "-af"],
             check=_check_prune),
    Scenario("mount", lambda w, p: ["mount", "--name", "keep", "keep:1", str(p / "mnt")],
             retry=lambda w, p: ["mount", "--name", "keep", "keep:1", str(p / "mnt")], check=_check_mounted_view),
    Scenario("mount-new", lambda w, p: ["mount", "--name", "fresh", "victim:1", str(p / "mnt")],
             retry=lambda w, p: ["mount", "--name", "fresh", "victim:1", str(p / "mnt")], check=_check_fresh),
    Scenario("umount", lambda w, p: ["umount", str(p / "mnt")], before=_mount_keep,
             attach=lambda w, p: daemons_of(p / "mnt"),
             retry=lambda w, p: ["mount", "--name", "keep", "keep:1", str(p / "mnt")], check=_check_mounted_view),
]}


def subset(points: Sequence[KillPoint], n: int) -> list[KillPoint]:
    """A fixed choice of ``n`` points: the renames, unlinks, rmdirs, flocks, fsyncs, kills, forks and
    mounts first (where a store changes state), evenly spread, then the others."""
    key = ("rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "flock", "fsync", "kill", "clone",
           "clone3", "mount", "umount2")
    first = [p for p in points if p.syscall in key]
    rest = [p for p in points if p.syscall not in key]
    chosen: list[KillPoint] = []
    for pool in (first, rest):
        want = min(n - len(chosen), len(pool))
        if want <= 0:
            break
        step = len(pool) / want
        chosen += [pool[int(i * step)] for i in range(want)]
    return chosen


__all__ = ["KillPoint", "PointResult", "SCENARIOS", "SCENARIO_TABLE", "SYSCALLS", "World", "daemons_of", "subset"]
