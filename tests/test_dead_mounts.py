"""Dead mounts (issue 12): a mount whose daemon was killed, and the records a reboot leaves.

- A daemon killed (SIGKILL) leaves a dead mount: every access fails with ENOTCONN.  ``layerfs
  mounts`` lists it as dead; the store's record names it (``Store.dead_mounts``, ``verify`` says
  "dead" and what removes it) and keeps nothing in use; the clean-up of other writers leaves the
  record while the dead mount is there; ``mount`` there refuses with what to do; ``layerfs
  umount`` clears it; the container's upper keeps everything written before, also when the
  daemon died in the middle of a write, and the container mounts again.
- After a "reboot" (records whose process is gone and whose mount point is no longer mounted, and
  a record whose pid now belongs to another process), the next writer removes the records.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_fuse, require_root, run_layerfs
from test_store import BASE, make_layout

from layerfs import Store, _proc
from layerfs._store import containers as _containers

MINE = "written before the daemon died\n"


@dataclass
class Mounted:
    root: Path
    mnt: Path
    env: dict[str, str]

    def layerfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_layerfs(*args, root=self.root, env=self.env, check=check)

    def upper(self) -> Path:
        return _containers.get(Store(self.root), "c").upper

    def kill_daemon(self) -> int:
        (rec,) = Store(self.root).mounts()
        os.kill(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _proc.pid_alive(rec.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return rec.pid


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    """Container ``c`` of keep:1 mounted at ``mnt``, with a file written and a lower file changed."""
    require_root()
    require_fuse()
    make_layout(tmp_path / "keep", [BASE, {"keep/data": b"lower\n"}], tag="1")
    m = Mounted(tmp_path / "store", tmp_path / "mnt", {"LAYERFS_RUNTIME_DIR": str(tmp_path / "run")})
    m.mnt.mkdir()
    m.layerfs("load", "--tag", "keep:1", f"oci:{tmp_path / 'keep'}:1")
    m.layerfs("mount", "--name", "c", "keep:1", str(m.mnt))
    try:
        (m.mnt / "mine.txt").write_text(MINE)
        (m.mnt / "keep" / "data").write_text("changed\n")  # a copy-up
        yield m
    finally:
        for entry in _proc.mounts():
            if entry.mountpoint.startswith(str(tmp_path)):
                subprocess.run(["umount", "-l", entry.mountpoint], capture_output=True)


def _check_container(m: Mounted, *, copied_up: bool = True) -> None:
    """The upper holds what was written, and the container mounts again showing it."""
    assert (m.upper() / "mine.txt").read_text() == MINE
    m.layerfs("mount", "--name", "c", "keep:1", str(m.mnt))
    try:
        assert (m.mnt / "mine.txt").read_text() == MINE
        assert (m.mnt / "keep" / "data").read_text() == ("changed\n" if copied_up else "lower\n")
        (m.mnt / "again.txt").write_text("the container works\n")
    finally:
        m.layerfs("umount", str(m.mnt))
    assert os.listdir(m.upper().parent / "work" / "work") == []
    assert m.layerfs("verify", "-q").stdout == ""


def test_a_killed_daemon_leaves_a_dead_mount_that_umount_clears(mounted: Mounted) -> None:
    m = mounted
    pid = m.kill_daemon()
    with pytest.raises(OSError) as err:
        os.stat(m.mnt / "mine.txt")
    assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # (the latter: a request in flight)
    listed = [json.loads(line) for line in m.layerfs("mounts", "--format", "json").stdout.splitlines()]
    assert [(row["mountpoint"], row["alive"]) for row in listed] == [(str(m.mnt), False)]
    store = Store(m.root)
    assert store.mounts() == []  # nothing is in use any more
    assert [(d.mountpoint, d.pid) for d in store.dead_mounts()] == [(str(m.mnt), pid)]
    found = m.layerfs("verify", "-q", check=False)
    assert found.returncode == 1
    assert found.stdout.splitlines() == [f"mount at {m.mnt}: dead: its daemon (pid {pid}) is gone, every access "
                                         f"fails (not repaired: `layerfs umount {m.mnt}` removes it)"]
    m.layerfs("tag", "keep:1", "other:1")  # a writer's clean-up leaves the record of a dead mount
    assert len(store.dead_mounts()) == 1
    refused = m.layerfs("mount", "--name", "c", "keep:1", str(m.mnt), check=False)
    assert refused.returncode == 1 and "dead mount" in refused.stderr and "layerfs umount" in refused.stderr
    other_run = {"LAYERFS_RUNTIME_DIR": str(m.root.parent / "other-run")}  # no record of it: a statfs says
    refused = run_layerfs("mount", "--read-only", "keep:1", str(m.mnt), root=m.root, env=other_run, check=False)
    assert refused.returncode == 1 and "dead mount" in refused.stderr, refused.stderr
    m.layerfs("umount", str(m.mnt))
    assert str(m.mnt) not in _proc.mountpoints()
    assert store.dead_mounts() == [] and os.listdir(m.root / "mounts") == []
    _check_container(m)


def test_a_daemon_killed_in_the_middle_of_a_write(mounted: Mounted) -> None:
    m = mounted
    writer = subprocess.Popen([sys.executable, "-c", """
import os, sys
with open(sys.argv[1], "wb") as f:
    while True:
        f.write(os.urandom(1 << 16))
        f.flush()
""", str(m.mnt / "big.bin")], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (m.upper() / "big.bin").exists() or (m.upper() / "big.bin").stat().st_size < 1 << 20:
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr
            time.sleep(0.01)
        m.kill_daemon()
        _, err = writer.communicate(timeout=30)
        assert writer.returncode != 0 and ("Transport endpoint is not connected" in err or "Errno" in err), err
    finally:
        writer.kill()
        writer.wait()
    m.layerfs("umount", str(m.mnt))
    assert (m.upper() / "big.bin").stat().st_size >= 1 << 20  # what reached the upper is there
    _check_container(m)


@pytest.mark.parametrize("writer", ["tag", "mount", "load and rm"])
def test_after_a_reboot_the_next_writer_removes_the_records(mounted: Mounted, tmp_path: Path, writer: str) -> None:
    m = mounted
    m.kill_daemon()
    subprocess.run(["umount", "-l", str(m.mnt)], check=True)  # the machine went down: no mount, no process
    # a record whose pid now names another process (this one): its start time is not the recorded one
    reused = m.root / "mounts" / ("e" * 32 + ".json")
    reused.write_text(json.dumps({"image_id": Store(m.root).get("keep:1").id, "mountpoint": str(tmp_path / "gone"),
                                  "pid": os.getpid(), "since": "2020-01-01T00:00:00Z", "start": 1}))
    assert len(os.listdir(m.root / "mounts")) == 2
    found = m.layerfs("verify", "-q", check=False)
    assert found.returncode == 1 and found.stdout.count("its process is gone (stale)") == 2, found.stdout
    if writer == "tag":
        m.layerfs("tag", "keep:1", "other:1")
    elif writer == "mount":
        other = tmp_path / "other"
        other.mkdir()
        m.layerfs("mount", "--read-only", "keep:1", str(other))
        assert len(os.listdir(m.root / "mounts")) == 1  # its own
        m.layerfs("umount", str(other))
    else:
        m.layerfs("load", "--tag", "keep:2", f"oci:{tmp_path / 'keep'}:1")
        m.layerfs("rm", "keep:2")
    assert os.listdir(m.root / "mounts") == []
    _check_container(m)


def test_a_mount_killed_while_its_daemon_mounts_leaves_nothing(tmp_path: Path) -> None:
    """The mount command killed after handing the mount to its daemon but before the daemon
    reported ready (strace holds the daemon's mount(2) for a second meanwhile): the daemon, finding
    no one to report to, unmounts and unregisters, so no mount (live or dead) and no record stays."""
    require_root()
    require_fuse()
    from conftest import require_tool

    require_tool("strace")
    make_layout(tmp_path / "keep", [BASE, {"keep/data": b"lower\n"}], tag="1")
    m = Mounted(tmp_path / "store", tmp_path / "mnt", {"LAYERFS_RUNTIME_DIR": str(tmp_path / "run")})
    m.mnt.mkdir()
    m.layerfs("load", "--tag", "keep:1", f"oci:{tmp_path / 'keep'}:1")
    log = tmp_path / "strace.log"
    proc = subprocess.Popen(["strace", "-f", "-q", "-o", str(log), "-e", "trace=execve,mount",
                             "-e", "inject=mount:delay_enter=1000000", "--", sys.executable, "-m", "layerfs",
                             "--root", str(m.root), "mount", "--name", "c", "keep:1", str(m.mnt)],
                            env=dict(os.environ, **m.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while "mount(" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        command = int(next(line.split()[0] for line in log.read_text().splitlines() if "execve(" in line))
        os.kill(command, signal.SIGKILL)  # the daemon is inside its delayed mount(2) now
        proc.communicate(timeout=60)  # strace ends with the daemon
        assert str(m.mnt) not in _proc.mountpoints(), "the daemon left its mount"
        assert os.listdir(m.root / "mounts") == [], "the daemon left its record"
    finally:
        proc.kill()
        proc.wait()
        # the daemon too (a test that failed early leaves it: the pid that called mount(2), if it
        # still runs with the command's arguments), then wait for it to be gone
        from conftest import daemons_of

        traced = {int(line.split()[0]) for line in (log.read_text() if log.exists() else "").splitlines()
                  if "mount(" in line and line.split()[0].isdigit()}
        daemons = traced & set(daemons_of(m.mnt))
        for pid in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_proc.pid_alive(pid) for pid in daemons) and time.monotonic() < deadline:
            time.sleep(0.01)
        if str(m.mnt) in _proc.mountpoints():
            subprocess.run(["umount", "-l", str(m.mnt)], capture_output=True)
    (m.upper() / "mine.txt").write_text(MINE)  # the container is there (made before the daemon)
    _check_container(m, copied_up=False)


def test_mount_on_a_live_mount_whose_daemon_hangs_fails_at_once(mounted: Mounted) -> None:
    """A live mount whose daemon answers nothing (stopped): ``mount`` there must not ask the
    daemon anything (statfs would wait for it forever), it refuses at once with one line."""
    m = mounted
    (rec,) = Store(m.root).mounts()
    os.kill(rec.pid, signal.SIGSTOP)
    try:
        # with its record, and from another runtime directory (no record: a statfs given up on)
        for env in (m.env, {"LAYERFS_RUNTIME_DIR": str(m.root.parent / "other-run")}):
            refused = subprocess.run([sys.executable, "-m", "layerfs", "--root", str(m.root), "mount", "--read-only",
                                      "keep:1", str(m.mnt)], capture_output=True, text=True,
                                     env=dict(os.environ, **env), timeout=20)  # TimeoutExpired: it hung
            assert refused.returncode == 1
            assert refused.stderr == f"Error: mount point {m.mnt}: is already a mount point (unmount it first)\n"
    finally:
        os.kill(rec.pid, signal.SIGCONT)
    m.layerfs("umount", str(m.mnt))


def test_dead_mounts_are_layerfs_mounts_named_by_their_real_path(mounted: Mounted, tmp_path: Path) -> None:
    """A record naming its mount point through a symlink (the store takes the path it is given)
    is found in the mount table, which names the real path; a record whose mount point is another
    file system's FUSE mount is no dead layerfs mount."""
    from conftest import require_tool

    require_tool("fuse-overlayfs")
    m = mounted
    pid = m.kill_daemon()
    store = Store(m.root)
    (record,) = (m.root / "mounts").iterdir()
    data = json.loads(record.read_text())
    (tmp_path / "link").symlink_to(tmp_path)
    linked = str(tmp_path / "link" / m.mnt.name)
    record.unlink()
    store._mount_record_path(linked).write_text(json.dumps({**data, "mountpoint": linked}))
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={tmp_path / 'keep'}", str(other)], check=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    store._mount_record_path(str(other)).write_text(json.dumps({**data, "mountpoint": str(other), "pid": gone.pid}))
    assert [(d.mountpoint, d.pid) for d in store.dead_mounts()] == [(linked, pid)]
    subprocess.run(["umount", str(other)], check=True)
    m.layerfs("umount", str(m.mnt))


def test_umount_without_the_runtime_record_waits_for_the_daemon_the_store_names(mounted: Mounted) -> None:
    """A mount whose command was killed before it wrote the runtime record (crash point
    mount:flock) is still served, and registered in the store: ``umount`` waits for that daemon
    to exit and unregister, as with a record.  Before: it returned at once, and a check right
    after (verify, the next command) found the daemon and its store record still there.  The
    daemon is held stopped while umount runs, so that "at once" shows."""
    m = mounted
    (rec,) = Store(m.root).mounts()
    runtime = [p for p in (Path(m.env["LAYERFS_RUNTIME_DIR"])).rglob("mount.json")]
    assert len(runtime) == 1
    runtime[0].unlink()
    os.kill(rec.pid, signal.SIGSTOP)
    try:
        umount = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(m.root), "umount", str(m.mnt)],
                                  env=dict(os.environ, **m.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        time.sleep(1.0)
        returned_early = umount.poll() is not None
    finally:
        os.kill(rec.pid, signal.SIGCONT)
    out, err = umount.communicate(timeout=60)
    assert umount.returncode == 0, err
    assert not returned_early, "umount returned while the daemon still ran"
    assert not _proc.pid_alive(rec.pid) and Store(m.root).mounts() == []
    _check_container(m)
