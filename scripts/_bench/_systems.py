"""The systems compared, all on the same overlay-form layer dirs of one image.

- ``native``: the flattened tree from ``umoci unpack`` (the limit).  "Writable" is a scratch dir
  on the same filesystem, into which a workload copies what it needs, untimed (or timed, when the
  copy is the physical floor of the operation, as for copy-up).
- ``overlay``: ``mount -t overlay overlay -o lowerdir=L5:…:L1`` (topmost first).
- ``fuse-overlayfs``: ``fuse-overlayfs -o lowerdir=L5:…:L1 MNT``, default options.
- ``layerfs``: ``layerfs mount -o lowerdir=L5:…:L1 MNT``, on the very dirs the peers use.
- ``layerfs-image``: ``layerfs --root STORE mount REF MNT``, from layerfs's own store after a
  ``layerfs pull`` from the local registry (read-only workloads only).

Writable mounts get ``upperdir=``/``workdir=`` in a fresh dir each time.  A FUSE daemon is found by
PID (the process we started, or, when it daemonised, the process whose command line holds the mount
point), and both the mount and the daemon are registered with the janitor.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._image import Image
from ._util import BenchError, Janitor, debug, is_mounted, log, pid_alive, pids_with_arg, proc_start, stop_pid, unmount

LAYERFS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "layerfs"


@dataclass
class Mounted:
    """One mounted (or, for native, prepared) tree."""

    system: "System"
    root: Path                       # where a workload runs
    writable: bool
    mnt: Path | None = None          # the mount point (None for native)
    pid: int | None = None           # the FUSE daemon
    pid_start: int | None = None     # its start time (_util.proc_start): the pid may be reused later
    scratch: list[Path] = field(default_factory=list)   # dirs removed after unmount
    undo: list[Callable[[], None]] = field(default_factory=list)


class RunDir:
    """Fresh mount points and upper/work dirs under ``<cache>/run/<pid>/``."""

    def __init__(self, base: Path) -> None:
        self.path = base / str(os.getpid())
        self.path.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def new(self, prefix: str) -> Path:
        self._n += 1
        p = self.path / f"{prefix}-{self._n}"
        p.mkdir(parents=True)
        return p


class System:
    key = ""
    label = ""
    command = ""
    fuse = False
    #: why the system cannot run at all (None: it can)
    unavailable: str | None = None
    #: why writable mounts cannot run (None: they can)
    no_writable: str | None = None

    def __init__(self, image: Image, run: RunDir, janitor: Janitor) -> None:
        self.image, self.run, self.janitor = image, run, janitor

    # subclasses: _mount_cmd, or override mount()
    def _mount_cmd(self, mnt: Path, upper: Path | None, work: Path | None) -> list[str]:
        raise NotImplementedError

    def _opts(self, upper: Path | None, work: Path | None) -> str:
        o = f"lowerdir={self.image.lowerdir()}"
        if upper is not None:
            o += f",upperdir={upper},workdir={work}"
        return o

    def mount(self, writable: bool = False) -> Mounted:
        mnt = self.run.new(f"mnt-{self.key}")
        m = Mounted(self, mnt, writable, mnt=mnt, scratch=[mnt])
        upper = work = None
        if writable:
            rw = self.run.new(f"rw-{self.key}")
            upper, work = rw / "upper", rw / "work"
            upper.mkdir()
            work.mkdir()
            m.scratch.append(rw)
        self._start(m, self._mount_cmd(mnt, upper, work))
        return m

    def _start(self, m: Mounted, cmd: list[str]) -> None:
        """Run a mount command; returns when the mount point is mounted."""
        assert m.mnt is not None
        mnt = m.mnt
        pids: list[tuple[int, int | None]] = []  # (pid, start time): only that process is ever stopped

        def force() -> None:  # the janitor's way: unmount, then stop whatever daemon is left
            unmount(mnt)
            for pid, started in pids + ([(m.pid, m.pid_start)] if m.pid else []):
                if started is not None:  # None: gone before we looked, nothing of ours to stop
                    stop_pid(pid, started=started)

        m.undo.append(self.janitor.push(f"unmount {mnt}", force))
        if not self.fuse:
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                self.unmount(m)
                raise BenchError(f"{self.key}: {' '.join(cmd[:3])} …: {r.stderr.decode(errors='replace').strip()}")
            return
        logf = m.scratch[0].parent / (mnt.name + ".log")
        with open(logf, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        pids.append((proc.pid, proc_start(proc.pid)))
        deadline = time.monotonic() + 60
        while True:
            rc = proc.poll()
            if is_mounted(mnt):
                break
            if rc is not None:
                msg = logf.read_text(errors="replace").strip().splitlines()
                self.unmount(m)
                raise BenchError(f"{self.key}: mount failed (exit {rc}): {' | '.join(msg[-3:])}")
            if time.monotonic() > deadline:
                self.unmount(m)
                raise BenchError(f"{self.key}: not mounted after 60 s")
            time.sleep(0.001)
        if proc.poll() is None:
            m.pid = proc.pid  # a foreground daemon: the process we started
        else:
            found = pids_with_arg(str(mnt))  # it daemonised: find it by its mount point
            m.pid = found[0] if found else None
        m.pid_start = proc_start(m.pid) if m.pid else None
        debug(f"{self.key}: mounted {mnt} (daemon pid {m.pid})")
        if m.writable and os.statvfs(mnt).f_flag & os.ST_RDONLY:
            self.unmount(m)
            self.no_writable = "writable mounts (upperdir=) are not supported yet: it mounted read-only"
            raise BenchError(f"{self.key}: {self.no_writable}")

    def _umount_cmd(self, mnt: Path) -> list[str]:
        return ["fusermount3", "-u", str(mnt)] if self.fuse else ["umount", str(mnt)]

    def unmount(self, m: Mounted) -> None:
        """Unmount, wait for the daemon to exit (stop it after 10 s), remove the scratch dirs."""
        if m.mnt is not None and is_mounted(m.mnt):
            subprocess.run(self._umount_cmd(m.mnt), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            unmount(m.mnt)  # whatever is left, e.g. if the command failed
        if m.pid is not None:
            deadline = time.monotonic() + 10
            while pid_alive(m.pid) and time.monotonic() < deadline:
                try:
                    os.waitpid(m.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.02)
            if pid_alive(m.pid):
                log(f"{self.key}: daemon {m.pid} still running 10 s after unmount: stopping it")
                stop_pid(m.pid, started=m.pid_start)
        while m.undo:
            self.janitor.done(m.undo.pop())  # stops a daemon that never mounted too
        for d in m.scratch:
            shutil.rmtree(d, ignore_errors=True)
        logf = m.mnt.parent / (m.mnt.name + ".log") if m.mnt else None
        if logf is not None and logf.exists():
            logf.unlink()

    def requests(self, m: Mounted) -> dict[str, int] | None:
        """The daemon's requests per opcode so far (None: the system does not count them)."""
        return None

    def version(self) -> str:
        return ""


class Native(System):
    key, label = "native", "plain dir"
    command = "the flattened rootfs of umoci unpack (writable: a scratch dir on the same fs)"

    def mount(self, writable: bool = False) -> Mounted:
        if not writable:
            return Mounted(self, self.image.flat, False)
        scratch = self.run.new("native-rw")
        return Mounted(self, scratch, True, scratch=[scratch])

    def unmount(self, m: Mounted) -> None:
        for d in m.scratch:
            shutil.rmtree(d, ignore_errors=True)


class KernelOverlay(System):
    key, label = "overlay", "kernel overlay"
    command = "mount -t overlay overlay -o lowerdir=L5:…:L1 MNT"

    def _mount_cmd(self, mnt: Path, upper: Path | None, work: Path | None) -> list[str]:
        return ["mount", "-t", "overlay", "overlay", "-o", self._opts(upper, work), str(mnt)]


class FuseOverlayfs(System):
    key, label, fuse = "fuse-overlayfs", "fuse-overlayfs", True
    command = "fuse-overlayfs -o lowerdir=L5:…:L1 MNT (default options)"

    def __init__(self, image: Image, run: RunDir, janitor: Janitor) -> None:
        super().__init__(image, run, janitor)
        if shutil.which("fuse-overlayfs") is None:
            self.unavailable = "fuse-overlayfs is not installed (Debian package fuse-overlayfs; scripts/setup)"

    def _mount_cmd(self, mnt: Path, upper: Path | None, work: Path | None) -> list[str]:
        return ["fuse-overlayfs", "-o", self._opts(upper, work), str(mnt)]

    def version(self) -> str:
        out = _version_of(["fuse-overlayfs", "--version"])
        i = out.find("fuse-overlayfs: version")
        return out[i + len("fuse-overlayfs: "):].split(" FUSE")[0] if i >= 0 else out


@functools.cache
def layerfs_has(exe: Path, *args: str) -> str | None:
    """None if ``EXE ARGS --help`` works, else why not (one line)."""
    if not exe.exists():
        return f"{exe} is missing (run scripts/setup)"
    r = subprocess.run([str(exe), *args, "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"`layerfs {' '.join(args)}` is not available yet ({last[:80]})"
    return None


def code_version(exe: Path) -> str:
    """The commit of the checkout that ``exe`` (``<checkout>/.venv/bin/layerfs``) runs, and whether
    its layerfs/ or csrc/ has uncommitted changes: the code a figure was measured on."""
    checkout = exe.resolve().parents[2] if exe.name == "layerfs" else exe
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{checkout} (not a git checkout)"
    d = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--", "layerfs", "csrc", "setup.py"],
                       capture_output=True, text=True)
    n = len(d.stdout.splitlines())
    return f"{checkout} at {r.stdout.strip()}" + (f" + {n} uncommitted file(s) in layerfs/, csrc/" if n else "")


class Layerfs(System):
    """``layerfs mount -o lowerdir=…`` on the peers' layer dirs."""

    key, label, fuse = "layerfs", "layerfs (lowerdir=)", True
    command = "layerfs mount -o lowerdir=L5:…:L1 MNT (the peers' layer dirs)"
    exe = LAYERFS

    def __init__(self, image: Image, run: RunDir, janitor: Janitor) -> None:
        super().__init__(image, run, janitor)
        self.unavailable = layerfs_has(self.exe, "mount")

    def _mount_cmd(self, mnt: Path, upper: Path | None, work: Path | None) -> list[str]:
        opts = self._opts(upper, work)
        if upper is not None:
            opts += ",metacopy=on"  # layerfs's own default for root's containers: chmod copies no data
        return [str(self.exe), "mount", "-o", opts, str(mnt)]

    def mount(self, writable: bool = False) -> Mounted:
        try:
            return super().mount(writable)
        except BenchError as err:
            if writable and self.no_writable is None:  # read-only mounts work: it is the feature
                self.no_writable = f"writable mounts are not available ({str(err).split(': ', 1)[-1][:120]})"
            raise

    def _umount_cmd(self, mnt: Path) -> list[str]:
        if layerfs_has(self.exe, "umount") is None:
            return [str(self.exe), "umount", str(mnt)]
        return ["fusermount3", "-u", str(mnt)]

    def requests(self, m: Mounted) -> dict[str, int] | None:
        return layerfs_requests(m)

    def version(self) -> str:
        return code_version(self.exe)


class LayerfsWritable(Layerfs):
    """``layerfs mount -o lowerdir=…,upperdir=…,workdir=…`` (an empty upper) for the read
    workloads and the mount time: reads on a writable mount, against the read-only one."""

    key, label = "layerfs-rw", "layerfs (writable)"
    command = "layerfs mount -o lowerdir=L5:…:L1,upperdir=U,workdir=W MNT (reads on a writable mount)"

    def __init__(self, image: Image, run: RunDir, janitor: Janitor) -> None:
        super().__init__(image, run, janitor)
        self.no_writable = "write workloads run in the layerfs (lowerdir=) column, on writable mounts"

    def mount(self, writable: bool = False) -> Mounted:
        return super().mount(writable=True)


class LayerfsImage(Layerfs):
    """``layerfs --root STORE mount REF MNT`` after ``layerfs pull`` (read-only)."""

    key, label = "layerfs-image", "layerfs (image)"
    command = "layerfs --root STORE mount REF MNT, after layerfs pull REF from the local registry"

    def __init__(self, image: Image, run: RunDir, janitor: Janitor) -> None:
        super().__init__(image, run, janitor)
        self.no_writable = "read-only workloads only (writable runs use `layerfs mount -o lowerdir=`)"
        if self.unavailable is None:
            self.unavailable = layerfs_has(self.exe, "pull")
        self.ref = ""
        self.store = run.path / "layerfs-store"

    def prepare(self, registry_address: str) -> None:
        """Pull the image into a store of this run (untimed; the pull workload times pulls)."""
        self.ref = f"{registry_address}/{self.image.repo}:{self.image.tag}"
        log(f"layerfs-image: layerfs pull {self.ref}")
        r = subprocess.run([str(self.exe), "--root", str(self.store), "pull", "-q", self.ref],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            self.unavailable = f"`layerfs pull` failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:120]}"

    def _mount_cmd(self, mnt: Path, upper: Path | None, work: Path | None) -> list[str]:
        return [str(self.exe), "--root", str(self.store), "mount", self.ref, str(mnt)]


class LayerfsBaseline(Layerfs):
    """``layerfs mount -o lowerdir=…`` of another checkout (``--baseline``): before / after."""

    key, label = "layerfs-baseline", "layerfs baseline"
    command = "BASELINE/.venv/bin/layerfs mount -o lowerdir=L5:…:L1 MNT (--baseline)"
    exe = Path("/nonexistent")


def baseline_exe(path: Path) -> Path:
    """``--baseline`` takes a checkout (with its .venv) or a layerfs executable."""
    path = path.resolve()
    return path / ".venv" / "bin" / "layerfs" if path.is_dir() else path


def layerfs_requests(m: Mounted) -> dict[str, int] | None:
    """Requests per opcode served so far by the layerfs daemon of ``m``.

    Reads the daemon's own statistics (layerfs/_mount/daemon.py documents how); returns None when this
    layerfs has no way to report them.
    """
    if m.mnt is None:
        return None
    try:
        from layerfs._mount import daemon as _mount  # type: ignore[attr-defined]
    except ImportError:
        return None
    reader = getattr(_mount, "read_statistics", None) or getattr(_mount, "statistics", None)
    if reader is None:
        return None
    try:
        stats = reader(m.mnt)
    except Exception as err:  # a report, not a reason to stop the bench
        debug(f"layerfs statistics: {err}")
        return None
    ops = getattr(stats, "requests", stats)
    if isinstance(ops, dict):
        return {str(k): int(v) for k, v in ops.items()}
    return None


SYSTEMS: dict[str, type[System]] = {c.key: c for c in (Native, KernelOverlay, FuseOverlayfs, Layerfs,
                                                                LayerfsWritable, LayerfsImage,
                                                       LayerfsBaseline)}


def _version_of(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return " ".join((r.stdout + r.stderr).split())
