"""``layerfs run`` and ``layerfs bundle``: commands in an image through a real OCI runtime (runc).

What a user relies on: the exit status is the command's; the image's Env, WorkingDir and User
apply (and -e, -w, -u override them, a user name resolved in the image's /etc/passwd); standard
input passes with -i; -t gives a terminal; the command is PID 1 of a new PID namespace with its
own /proc and hostname; --rm leaves nothing; without --rm the container keeps the changes (ps,
a second run with --name sees them); an unprivileged run either works through a user namespace
or fails with one line naming what is missing; ``bundle`` writes a config.json that follows the
image config, with a mounted rootfs runc can run by hand.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _images import BuiltImage, busybox_image, run  # noqa: F401 - a fixture
from conftest import require_fuse, require_root, require_tool, run_layerfs

from layerfs import _proc


@pytest.fixture(scope="module")
def run_image(busybox_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    """busybox with a config: Env, WorkingDir /home/app, User app (uid 1000, also in group wheel)."""
    require_root()
    require_tool("umoci", "runc")
    work = tmp_path_factory.mktemp("run-image")
    layout = work / "layout"
    shutil.copytree(Path(busybox_image.source.split(":")[1]), layout, symlinks=True)
    bundle = work / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
                                           "nobody:x:65534:65534::/:/bin/false\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nwheel:x:10:app\nnogroup:x:65534:\n")
    (rootfs / "home" / "app").mkdir(parents=True)
    os.chown(rootfs / "home" / "app", 1000, 1000)
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 image-hosts\n")
    run("umoci", "repack", "--image", f"{layout}:latest", bundle)
    run("umoci", "config", "--image", f"{layout}:latest", "--config.env", "FROM_IMAGE=yes",
        "--config.env", "PATH=/bin", "--config.workingdir", "/home/app", "--config.user", "app",
        "--config.cmd", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "echo default command")
    run("umoci", "gc", "--layout", layout)
    return f"oci:{layout}:latest"


@pytest.fixture
def root(tmp_path: Path, run_image: str) -> Iterator[Path]:
    require_fuse()
    store = tmp_path / "store"
    run_layerfs("load", "--tag", "app:1", run_image, root=store)
    yield store
    for m in [m.mountpoint for m in _proc.mounts() if m.mountpoint.startswith(str(tmp_path))]:
        subprocess.run(["umount", "-l", m], capture_output=True)


def _run(root: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return run_layerfs("run", *args, root=root, check=False, input=input)


def _containers(root: Path) -> list[str]:
    return run_layerfs("ps", "-q", root=root).stdout.split()


def test_exit_status_is_the_commands(root: Path) -> None:
    assert _run(root, "--rm", "app:1", "sh", "-c", "exit 7").returncode == 7
    assert _run(root, "--rm", "app:1", "true").returncode == 0
    missing = _run(root, "--rm", "app:1", "/no/such/program")
    assert missing.returncode != 0 and "/no/such/program" in missing.stderr


def test_image_config_applies_and_options_override(root: Path) -> None:
    default = _run(root, "--rm", "app:1")
    assert default.returncode == 0 and default.stdout == "default command\n"
    out = _run(root, "--rm", "app:1", "sh", "-c", "echo $FROM_IMAGE $EXTRA; pwd; id").stdout.splitlines()
    assert out[0] == "yes"
    assert out[1] == "/home/app"
    assert out[2].startswith("uid=1000(app) gid=1000(app)") and "10(wheel)" in out[2]
    out = _run(root, "--rm", "-e", "EXTRA=1", "-e", "FROM_IMAGE=no", "-w", "/etc", "-u", "nobody",
               "app:1", "sh", "-c", "echo $FROM_IMAGE $EXTRA; pwd; id -u").stdout.splitlines()
    assert out == ["no 1", "/etc", "65534"]
    bad = _run(root, "--rm", "-u", "nosuchuser", "app:1", "true")
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "Error: unable to find user nosuchuser: no matching entries in passwd file"


def test_pid_1_hostname_and_its_own_proc(root: Path) -> None:
    out = _run(root, "--rm", "--hostname", "box", "-u", "0", "app:1", "sh", "-c",
               "echo $$; cat /proc/sys/kernel/hostname; ls /proc | grep -c '^[0-9]'").stdout.split()
    assert out[0] == "1" and out[1] == "box"
    assert int(out[2]) <= 3  # the shell, ls and grep: none of the host's processes
    default_host = _run(root, "--rm", "app:1", "cat", "/proc/sys/kernel/hostname").stdout.strip()
    assert len(default_host) == 12 and all(c in "0123456789abcdef" for c in default_host)


def test_stdin_passes_with_i_only(root: Path) -> None:
    assert _run(root, "--rm", "-i", "app:1", "cat", input=b"through\n").stdout == "through\n"
    assert _run(root, "--rm", "app:1", "cat", input=b"not through\n").stdout == ""


def test_a_terminal_with_t(root: Path) -> None:
    """-t: the command's stdin and stdout are a terminal (through a pty the test holds)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "layerfs", "--root", str(root), "run", "--rm", "-t",
                                  "app:1", "sh", "-c", "tty; test -t 0 && test -t 1 && echo both-tty"])
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"/dev/pts/" in out and b"both-tty" in out


def test_t_without_a_terminal_says_so(root: Path) -> None:
    """-t from a pipe: docker's one line (runc said only "open /dev/tty: no such device or
    address"), and no container is made."""
    for flags in (["-t"], ["-it"]):
        proc = _run(root, "--rm", *flags, "app:1", "true", input=b"")
        assert proc.returncode == 1
        assert proc.stderr == "Error: the input device is not a TTY (run from a terminal, or without -t)\n"
    assert _containers(root) == []


def test_network_none_has_only_loopback(root: Path) -> None:
    out = _run(root, "--rm", "--network", "none", "-u", "0", "app:1", "cat", "/proc/net/dev").stdout
    interfaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert interfaces == ["lo"]
    host = _run(root, "--rm", "-u", "0", "app:1", "cat", "/etc/hosts").stdout
    assert host == Path("/etc/hosts").read_text()  # the host's, bound over the image's


def test_changes_stay_in_the_container_unless_rm(root: Path) -> None:
    assert _run(root, "--name", "keep", "-u", "0", "app:1", "sh", "-c", "echo kept > /data").returncode == 0
    assert len(_containers(root)) == 1
    assert _run(root, "--name", "keep", "app:1", "cat", "/data").stdout == "kept\n"
    assert _run(root, "--rm", "-u", "0", "app:1", "sh", "-c", "echo gone > /data").returncode == 0
    assert len(_containers(root)) == 1
    assert [m for m in _proc.mounts() if "bundles" in m.mountpoint] == []
    run_layerfs("rm", "keep", root=root)
    assert _containers(root) == []


def test_unprivileged_run_works_or_says_what_is_missing(run_image: str, tmp_path: Path) -> None:
    """As nobody, with a store of its own: a user namespace maps it to root inside (and the image's
    own user, uid 1000, which has no mapping there, is refused in one line), or, where this machine
    refuses user namespaces to users, the one error line names what is missing."""
    require_tool("setpriv", "unshare")
    base = Path(f"/tmp/layerfs-run-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        shutil.copytree(Path(run_image.split(":")[1]), base / "layout", symlinks=True)
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        env = dict(os.environ, HOME=str(base), XDG_RUNTIME_DIR=str(base), LAYERFS_RUNTIME_DIR=str(base / "run"))

        def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                   "-m", "layerfs", "--root", str(base / "store"), *args],
                                  capture_output=True, text=True, env=env, timeout=300, cwd=base)

        loaded = as_nobody("load", "--tag", "app:1", f"oci:{base}/layout:latest")
        assert loaded.returncode == 0, loaded.stderr
        userns = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "--user",
                                 "true"], capture_output=True).returncode == 0
        proc = as_nobody("run", "--rm", "-u", "0", "app:1", "sh", "-c", "id -u; echo $$")
        if userns:
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.split() == ["0", "1"]
            # the image's own user (uid 1000) has no mapping without /etc/subuid ranges: one line
            refused = as_nobody("run", "--rm", "app:1", "id")
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 1 and len(lines) == 1 and "uid 1000" in lines[0] and "-u 0" in lines[0]
        else:
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode != 0 and len(lines) == 1 and "user namespace" in lines[0], proc.stderr
            # the error is right, but the run itself went untested: under CI that is a failure
            assert not os.environ.get("CI"), "CI is set and unprivileged user namespaces are missing"
        assert as_nobody("ps", "-q").stdout == ""
    finally:
        for m in [m.mountpoint for m in _proc.mounts() if m.mountpoint.startswith(str(base))]:
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_bundle_follows_the_image_config_and_runs_by_hand(root: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bb"
    run_layerfs("bundle", "--name", "byhand", "-e", "X=1", "app:1", str(bundle), root=root)
    config = json.loads((bundle / "config.json").read_text())
    image = json.loads(run_layerfs("inspect", "app:1", root=root).stdout)[0]["Config"]
    proc = config["process"]
    assert proc["args"] == image["Cmd"]
    assert proc["cwd"] == image["WorkingDir"]
    assert {"FROM_IMAGE=yes", "PATH=/bin", "X=1"} <= set(proc["env"])
    assert proc["user"]["uid"] == 1000 and proc["user"]["additionalGids"] == [10]
    assert config["root"]["path"] == str(bundle / "rootfs")
    assert {n["type"] for n in config["linux"]["namespaces"]} >= {"pid", "mount", "uts", "ipc"}
    assert os.path.realpath(bundle / "rootfs") in _proc.mountpoints()
    r = subprocess.run(["runc", "run", "-b", str(bundle), "byhand-test"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120)
    subprocess.run(["runc", "delete", "-f", "byhand-test"], capture_output=True)
    assert r.returncode == 0 and r.stdout == "default command\n", r.stderr
    run_layerfs("umount", str(bundle / "rootfs"), root=root)


def test_export_equals_the_merged_view(root: Path, tmp_path: Path) -> None:
    """`export` of a container (with its changes) and of an image, extracted by GNU tar, equals
    the mount's tree entry by entry."""
    from _trees import assert_same_tree, snapshot

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_layerfs("mount", "--name", "ex", "app:1", str(mnt), root=root)
    (mnt / "added").write_text("added\n")
    os.unlink(mnt / "etc" / "group")
    os.setxattr(mnt / "added", "user.note", b"kept")
    view = snapshot(mnt)
    for source, expect in (("ex", view), ("app:1", None)):
        out = tmp_path / f"{source.replace(':', '_')}.tar"
        run_layerfs("export", "-o", str(out), source, root=root)
        extracted = tmp_path / f"x-{source.replace(':', '_')}"
        extracted.mkdir()
        subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(out), "-C",
                        str(extracted)], check=True)
        if expect is None:
            ro = tmp_path / "ro"
            ro.mkdir()
            run_layerfs("mount", "--read-only", "app:1", str(ro), root=root)
            try:
                expect = snapshot(ro)
            finally:
                run_layerfs("umount", str(ro), root=root)
        assert_same_tree(snapshot(extracted), expect, names=("export", "mount"))
    run_layerfs("umount", str(mnt), root=root)
    assert run_layerfs("export", "nosuch", root=root, check=False).stderr.strip() == "Error: No such image: nosuch"


def test_a_container_mounted_with_an_id_mapping_is_not_exported_or_run_through_it(root: Path, tmp_path: Path) -> None:
    """A container mounted with ``-o uidmapping=`` shows its owners mapped: ``export`` through
    that mount would write the shown owners into the tar, and root's ``run`` would give runc a
    rootfs whose root is not root's.  Both refuse in one line naming the mount.  Before: both
    went through the mapped mount (the tar held uid 1000 for root's files)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_layerfs("mount", "--name", "mapped", "-o", "uidmapping=0:1000:1,gidmapping=0:1000:1", "app:1", str(mnt),
                root=root)
    try:
        assert os.stat(mnt / "bin").st_uid == 1000  # the mapping is in force
        exported = run_layerfs("export", "-o", str(tmp_path / "x.tar"), "mapped", root=root, check=False)
        ran = _run(root, "--name", "mapped", "app:1", "true")
    finally:
        run_layerfs("umount", str(mnt), root=root)
    assert exported.returncode != 0 and not (tmp_path / "x.tar").exists()
    assert exported.stderr.count("\n") == 1 and "uidmapping=0:1000:1" in exported.stderr, exported.stderr
    assert ran.returncode != 0 and ran.stderr.count("\n") == 1 and "with -o uidmapping=0:1000:1" in ran.stderr, \
        ran.stderr


def test_signals_reach_the_command(root: Path) -> None:
    """SIGTERM and SIGINT sent to ``layerfs run`` reach the command (PID 1 of the container, which
    gets only the signals it handles); the exit status is then the command's."""
    for sig, status in ((signal.SIGTERM, 3), (signal.SIGINT, 4)):
        proc = subprocess.Popen([sys.executable, "-m", "layerfs", "--root", str(root), "run", "--rm", "-u", "0",
                                 "app:1", "sh", "-c", "trap 'echo got TERM; exit 3' TERM; trap 'echo got INT; exit 4' "
                                 "INT; echo ready; while :; do sleep 0.1; done"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert (proc.returncode, out) == (status, f"got {sig.name[3:]}\n"), err
    assert _containers(root) == []


def test_read_only_runtime_choice_and_the_default_mounts(root: Path) -> None:
    """--read-only: the root file system refuses writes (docker's --read-only), /dev/shm still
    takes them; the default mount set: /proc, /dev a tmpfs with /dev/pts and /dev/shm, /sys
    read-only; --runtime picks the runtime, and one that does not exist is named in one line."""
    ro = _run(root, "--rm", "--read-only", "-u", "0", "app:1", "sh", "-c",
              "touch /x 2>&1; echo shm > /dev/shm/ok && cat /dev/shm/ok")
    assert ro.returncode == 0 and "Read-only file system" in ro.stdout and ro.stdout.endswith("shm\n"), ro
    mounts = _run(root, "--rm", "--runtime", "runc", "-u", "0", "app:1", "cat", "/proc/mounts")
    assert mounts.returncode == 0, mounts.stderr
    table = {f[1]: (f[2], f[3].split(",")) for f in (line.split() for line in mounts.stdout.splitlines())}
    assert table["/proc"][0] == "proc" and table["/dev"][0] == "tmpfs"
    assert table["/dev/pts"][0] == "devpts" and table["/dev/shm"][0] == "tmpfs"
    assert table["/sys"][0] == "sysfs" and "ro" in table["/sys"][1]
    assert "rw" in table["/"][1]
    missing = _run(root, "--rm", "--runtime", "/no/such/runtime", "app:1", "true")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "/no/such/runtime" in missing.stderr
    assert _containers(root) == []


def test_rm_removes_the_upper_on_disk(root: Path) -> None:
    """--rm: the container's record and its upper directory (what it wrote) are gone afterwards;
    without it both stay, and the upper holds what was written."""
    def uppers() -> set[Path]:
        return set((root / "containers").glob("*/upper")) if (root / "containers").exists() else set()

    assert _run(root, "--rm", "-u", "0", "app:1", "sh", "-c", "echo gone > /data").returncode == 0
    assert uppers() == set() and _containers(root) == []
    assert _run(root, "--name", "kept", "-u", "0", "app:1", "sh", "-c", "echo kept > /data").returncode == 0
    (upper,) = uppers()
    assert (upper / "data").read_text() == "kept\n"
    run_layerfs("rm", "kept", root=root)
    assert uppers() == set()
