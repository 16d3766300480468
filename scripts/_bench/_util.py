"""Commands, mounts and processes the harness owns, and the machine's noise counters.

Everything that the harness mounts or starts is registered with the :class:`Janitor`, which undoes
it in reverse order on exit, on an exception, and on SIGINT / SIGTERM / SIGHUP (turned into
``KeyboardInterrupt`` so that every ``finally`` runs).  Processes are stopped by PID only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

VERBOSE = False


def log(msg: str) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def debug(msg: str) -> None:
    if VERBOSE:
        log(msg)


class BenchError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def run(cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None, check: bool = True,
        capture: bool = False, env: dict[str, str] | None = None, timeout: float | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd``; with ``check``, a failure raises :class:`BenchError` naming the command."""
    argv = [os.fspath(c) for c in cmd]
    debug("$ " + " ".join(argv))
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, input=input,
                              stdout=subprocess.PIPE if capture else subprocess.DEVNULL if not VERBOSE else None,
                              stderr=subprocess.PIPE)
    except FileNotFoundError as err:
        raise BenchError(f"{argv[0]}: not found") from err
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"{' '.join(argv[:3])}: timed out after {timeout} s") from err
    if check and proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv[:4])}{' …' if len(argv) > 4 else ''}: exit {proc.returncode}: "
                         + " | ".join(tail))
    return proc


# -- mounts -----------------------------------------------------------------------------------------

def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount in our namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            out.append((_unescape(left.split()[4]), right.split()[0]))
    return out


def is_mounted(path: Path | str) -> bool:
    p = os.path.realpath(path)
    return any(mp == p for mp, _ in mounts())


def mounts_under(prefix: Path | str) -> list[str]:
    p = os.path.realpath(prefix).rstrip("/") + "/"
    return [mp for mp, _ in mounts() if (mp + "/").startswith(p)]


def unmount(path: Path | str, *, timeout: float = 20.0) -> None:
    """Unmount ``path`` (all mounts stacked on it); falls back to a lazy unmount when busy."""
    path = os.path.realpath(path)
    deadline = time.monotonic() + timeout
    while is_mounted(path):
        fstype = next((t for mp, t in reversed(mounts()) if mp == path), "")
        if fstype.startswith("fuse") and subprocess.run(["fusermount3", "-u", "-q", path],
                                                         stderr=subprocess.DEVNULL).returncode == 0:
            continue
        if subprocess.run(["umount", path], stderr=subprocess.DEVNULL).returncode == 0:
            continue
        if time.monotonic() > deadline:
            log(f"{path} is busy: lazy unmount")
            subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
            break
        time.sleep(0.2)


# -- processes --------------------------------------------------------------------------------------

def pids_with_arg(arg: str) -> list[int]:
    """PIDs of processes whose command line holds ``arg`` as one argument (e.g. a mount point)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv:
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not running
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_start(pid: int) -> int | None:
    """When process ``pid`` started (proc(5) stat field 22, in clock ticks since boot); None if
    there is none.  A pid and its start time name one process: pids are reused (pid_max is 32768
    on some machines, and a bench run starts tens of thousands of processes)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop_pid(pid: int, *, grace: float = 5.0, started: int | None = None) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps it if it is our child.

    ``started`` (:func:`proc_start` when the pid was learnt): stop it only if it is still that
    process, never another that got its pid since (such a kill once stopped the daemon of a new
    mount, which then unmounted itself, so the workload found the empty mount point: ENOENT)."""
    if started is not None and proc_start(pid) != started:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- the janitor ------------------------------------------------------------------------------------

class Janitor:
    """Undo stack for mounts, processes and other things the harness must not leave behind."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Register ``fn`` as the undo of ``what``; returns a handle for :meth:`done`."""
        self._undo.append((what, fn))
        return fn

    def done(self, fn: Callable[[], None], *, run_it: bool = True) -> None:
        """Run (unless ``run_it`` is false) and forget one registered undo."""
        for i in range(len(self._undo) - 1, -1, -1):
            if self._undo[i][1] is fn:
                del self._undo[i]
                break
        if run_it:
            fn()

    def mount(self, path: Path | str) -> Callable[[], None]:
        path = str(path)
        return self.push(f"unmount {path}", lambda: unmount(path))

    def pid(self, pid: int, what: str = "") -> Callable[[], None]:
        return self.push(f"stop {what or pid}", lambda: stop_pid(pid))

    def cleanup(self) -> None:
        """Undo everything, newest first; further signals cannot interrupt it."""
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
        try:
            while self._undo:
                what, fn = self._undo.pop()
                try:
                    fn()
                except Exception as err:  # keep undoing the rest
                    log(f"cleanup: {what}: {err}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C, so that every ``finally`` and the janitor run."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


# -- caches and noise -------------------------------------------------------------------------------

def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (guest-cold only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def drop_counters() -> tuple[int, int]:
    """``drop_pagecache`` and ``drop_slab`` of /proc/vmstat: they move when anyone drops caches."""
    vals = {"drop_pagecache": 0, "drop_slab": 0}
    with open("/proc/vmstat", encoding="ascii") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k in vals:
                vals[k] = int(v)
    return vals["drop_pagecache"], vals["drop_slab"]


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " / ".join(f.read().split()[:3])


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: …`` then ``t[0]`` is the wall time in seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
