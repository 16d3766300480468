"""podman runs containers on layerfs as its overlay ``mount_program``: a drop-in for fuse-overlayfs.

podman (Debian's package, with runc) gets a private store whose ``storage.conf`` names the venv's
``layerfs`` console script as the overlay driver's ``mount_program`` (the README's line).
containers-storage then runs ``layerfs -o lowerdir=l/A:l/B,upperdir=ID/diff,workdir=ID/work
ID/merged`` in its home directory for every mount of a container (``l/A`` are links to the layer
directories, which it fills with AUFS ``.wh.`` whiteouts when a mount program is set), and
unmounts with ``fusermount3 -u`` (else umount(2)).

- The image is built here (two layers, a whiteout and an opaque directory over busybox-static)
  and pulled from an OCI layout (``oci:DIR:TAG``): no network.
- ``podman run`` writes a file and reads it back; the container's root is a ``fuse.layerfs``
  mount; the changes are in the container's upper (``GraphDriver.Data.UpperDir``).
- ``podman diff`` (containers-storage mounts the container and its image through layerfs and
  compares them), ``podman mount`` / ``podman umount`` (the daemon exits when podman unmounts),
  ``podman image mount`` (read-only: ``lowerdir=`` alone), ``podman run --rm`` (podman asks for
  a ``volatile`` mount).
- After ``podman rm``, no layerfs mount and no layerfs daemon remain.

On these machines podman needs ``--cgroup-manager=cgroupfs`` and ``--runtime runc`` (crun refuses
hybrid cgroups) and ``--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`` (no CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _images import BUSYBOX, TarEntry, gzip_bytes, sha256, tar_bytes, write_layout
from conftest import require, require_fuse, require_root, require_tool

from layerfs import _proc

#: The applets the container's commands use.
APPLETS = ("sh", "cat", "echo", "ls", "grep", "rm")
PODMAN_TIMEOUT = 120


def _image_layout(work: Path) -> Path:
    """An OCI layout ``work/layout:test`` of two layers: busybox, ``/gone``, ``/dir/{a,b}``; then
    ``.wh.gone``, ``dir/.wh..wh..opq`` and ``dir/c``."""
    d, f, ln = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE
    base = [TarEntry("bin/", d, mode=0o755), TarEntry("bin/busybox", f, BUSYBOX.read_bytes(), mode=0o755),
            *(TarEntry(f"bin/{a}", ln, linkname="busybox") for a in APPLETS),
            TarEntry("etc/", d, mode=0o755), TarEntry("etc/passwd", f, b"root:x:0:0:root:/:/bin/sh\n"),
            TarEntry("gone", f, b"whited out above\n"),
            TarEntry("dir/", d, mode=0o755), TarEntry("dir/a", f, b"a\n"), TarEntry("dir/b", f, b"b\n")]
    top = [TarEntry(".wh.gone", f), TarEntry("dir/", d, mode=0o755), TarEntry("dir/.wh..wh..opq", f),
           TarEntry("dir/c", f, b"c\n")]
    layers = [(gzip_bytes(tar), sha256(tar)) for tar in (tar_bytes(base), tar_bytes(top))]
    write_layout(work / "layout", "test", layers)
    return work / "layout"


@dataclass
class Podman:
    """podman on a private store whose mount_program is layerfs."""

    root: Path          # graphroot
    env: dict[str, str]
    argv: list[str]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, env=self.env,
                              timeout=PODMAN_TIMEOUT)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def layerfs_mounts(self) -> list[dict[str, object]]:
        """``layerfs mounts`` of the runtime directory the mount program got."""
        out = subprocess.run([sys.executable, "-m", "layerfs", "mounts", "--format", "json"], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]


def _mounts_under(path: Path) -> list[_proc.MountEntry]:
    return [m for m in _proc.mounts() if m.mountpoint.startswith(str(path) + "/")]


def _mount_flags(path: Path) -> set[str]:
    """The per-mount options of the mount at ``path`` (mountinfo's sixth field)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(path):
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")


def _layerfs_processes(root: Path) -> list[int]:
    """Processes of the layerfs console script serving something under ``root``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"/layerfs") for a in cmdline) and any(str(root).encode() in a for a in cmdline):
            pids.append(int(name))
    return pids


def _wait_gone(what: str, condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} still there after {timeout:.0f} s", pytrace=False)
        time.sleep(0.05)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman with storage.conf's mount_program = the venv's layerfs; teardown removes every
    container and image and fails if a mount or a layerfs daemon is left.

    The store lives in a short private directory of /tmp, not in ``tmp_path``: with a graphroot
    as long as pytest's, conmon (2.1.6) never reports the container's exit, and ``podman run``
    waits 20 s and leaves the container mounted, whatever the mount program (fuse-overlayfs too).
    """
    require_root()
    require_fuse()
    require_tool("podman", "runc")
    layerfs = Path(sys.executable).parent / "layerfs"
    require(layerfs.is_file(), f"the console script {layerfs} (scripts/setup installs it)")
    home = Path(tempfile.mkdtemp(prefix="lfs-pm-", dir="/tmp"))
    root, runroot = home / "storage", home / "run"
    conf = home / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n\n'
                    f'[storage.options.overlay]\nmount_program = "{layerfs}"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "LAYERFS_RUNTIME_DIR": str(home / "layerfs-run")}
    argv = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc", "--events-backend=file",
            "--tmpdir", str(home / "libpod-tmp"), "--log-level=error"]
    p = Podman(root, env, argv)
    try:
        yield p
    finally:
        p("rm", "--all", "--force", "--time", "0", check=False)
        p("rmi", "--all", "--force", check=False)
        left = _mounts_under(home)
        daemons = _layerfs_processes(root)
        for m in sorted(left, key=lambda m: -len(m.mountpoint)):
            subprocess.run(["umount", "-l", m.mountpoint], capture_output=True)
        for pid in daemons:
            os.kill(pid, 9)
        shutil.rmtree(home, ignore_errors=True)
        assert not left and not daemons, f"left behind: mounts {[m.mountpoint for m in left]}, daemons {daemons}"


RUN = ["--network", "none", "--pull", "never", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
SCRIPT = """
echo written > /hello
cat /hello
echo more >> /dir/c
rm /dir/a 2>/dev/null || echo "no /dir/a"
echo root: $(ls /)
echo dir: $(ls /dir)
grep ' / / ' /proc/self/mountinfo
"""


def test_podman_runs_a_container_on_layerfs(podman: Podman, tmp_path: Path) -> None:
    layout = _image_layout(tmp_path / "image")
    podman("pull", f"oci:{layout}:test")
    image = json.loads(podman("images", "--format", "json").stdout)[0]["Id"]

    out = podman("run", *RUN, "--name", "c1", image, "sh", "-c", SCRIPT).stdout.splitlines()
    assert out[:2] == ["written", "no /dir/a"], out
    root_names = set(out[2].removeprefix("root: ").split())
    assert {"bin", "dir", "etc", "hello"} <= root_names and "gone" not in root_names, out
    assert out[3] == "dir: c", "the opaque dir of the top layer hides /dir/a and /dir/b"
    assert out[4].split(" - ")[1].split()[0] == "fuse.layerfs", f"the container's root: {out[4]}"

    _wait_gone("the mount of the exited container", podman.layerfs_mounts)
    # the changes are in the container's upper
    upper = Path(podman("inspect", "c1", "--format", "{{.GraphDriver.Data.UpperDir}}").stdout.strip())
    assert upper.is_relative_to(podman.root)
    assert (upper / "hello").read_bytes() == b"written\n" and (upper / "dir" / "c").read_bytes() == b"c\nmore\n"
    diff = set(podman("diff", "c1").stdout.splitlines())
    assert {"A /hello", "C /dir/c"} <= diff and not any(line.endswith("/gone") for line in diff), diff

    # podman's mount and umount: the daemon exits when podman unmounts
    merged = Path(podman("mount", "c1").stdout.strip())
    assert (merged / "hello").read_bytes() == b"written\n"
    [served] = [m for m in podman.layerfs_mounts() if m["mountpoint"] == str(merged)]
    assert str(served["upper"]) == str(upper)
    podman("umount", "c1")
    _wait_gone(f"the daemon of {merged}", lambda: _proc.pid_alive(int(served["pid"])))  # type: ignore[call-overload]
    assert str(merged) not in _proc.mountpoints() and podman.layerfs_mounts() == []

    # an image mount: read-only, `-o lowerdir=ID/diff:l/...` (the image's top layer first)
    merged = Path(podman("image", "mount", image).stdout.strip())
    assert (merged / "dir" / "c").read_bytes() == b"c\n" and not (merged / "gone").exists()
    [served] = podman.layerfs_mounts()
    assert served["upper"] is None and "ro" in _mount_flags(merged)
    podman("image", "umount", image)
    _wait_gone(f"the daemon of {merged}", lambda: _proc.pid_alive(int(served["pid"])))  # type: ignore[call-overload]

    # --rm: podman asks for a volatile mount, and removes the container at the end
    printed = podman("run", *RUN, "--rm", image, "sh", "-c", "echo x > /x && cat /x /dir/c").stdout
    assert printed == "x\nc\n"

    podman("rm", "c1")
    assert podman("ps", "--all", "--quiet").stdout.strip() == ""
    _wait_gone("layerfs daemons", lambda: _layerfs_processes(podman.root))
    assert [m.mountpoint for m in _mounts_under(podman.root) if m.fstype == "fuse.layerfs"] == []
    assert podman.layerfs_mounts() == []
