"""Mounting a layer stack as a merged read-only FUSE tree: the daemon and its lifecycle.

Public API::

    handle = mount(store, "busybox:latest", "rootfs/")          # an image of the store
    handle = mount(store, ["/l3", "/l2", "/l1"], "mnt/")        # plain dirs, TOP FIRST (lowerdir=)
    handle.statistics()                                          # requests per opcode, from the daemon
    umount("rootfs/")                                            # unmount here, wait for the daemon

How a mount runs:

1. The caller checks the mount point (missing, not a directory, already mounted, not empty, a
   dead mount: :class:`MountError` with one clear line) and, for an image, records the mount in
   the store under its own pid (``Store.register_mount``: from now on ``rm`` refuses the image;
   an ``rm`` that went first makes the mount fail, "No such image").  Then it makes sure the
   merged index exists: for an image it is kept in ``store.state_dir("merged")/<top chain ID
   hex>.idx`` and built only the first time (``_ensure_index``; written through
   ``Store.put_state``, whose leased temporary name a writer's clean-up leaves alone), by the C
   walk of ``csrc/mergebuild.c`` (~90-150 ms for the 25k-entry bench image, two or three system
   calls per entry).  ``lowerdir=`` dirs are not content-addressed, so nothing can be kept for
   them: the C engine merges them lazily, reading only the layers' roots at mount and each
   directory when a request first needs it (``csrc/merge.h``, ``lfs_lazy_open``; the
   ``dir_merge`` count of ``mount-stats``); the pyfuse3 engine builds the whole index into the
   mount's runtime dir.

   Where a ``layerfs -o lowerdir=... MNT`` goes (a mount program's start; medians on 2 noisy
   cores, compiled bytecode): interpreter 12 ms; imports ~25 ms (``layerfs._cli.main`` with
   argparse and logging ~15; ``_cli.mount`` and ``_mount`` with typing, pathlib and json ~10;
   not the store nor the argument parser); the index (image: a 64-byte header check, <1 ms;
   ``lowerdir=``: the roots of the layers, <1 ms, where the whole walk took 100-160 ms); fork to
   ready ~8 ms; no interpreter teardown (``_cli.main._exit_now``): 45 ms in all.  The records of
   this path are ``typing.NamedTuple``s, not dataclasses: making a frozen dataclass runs
   ``exec`` on generated code (~1 ms each here, 14 of them), and importing ``dataclasses``
   imports ``inspect`` and ``ast`` (~5 ms); together they were 54 ms -> 45 ms of this start.
   trio, pyfuse3, httpx and tarfile are never imported on the C-engine path (``_serve_pyfuse3``
   imports them), nor ``subprocess`` (``umount`` only).
2. It forks the daemon (no new interpreter: a remount of a known image takes milliseconds) and
   hands it the store's record (``Store.hand_over_mount``); only then does the daemon go on (a
   command that dies before leaves a child that exits without mounting).  The daemon starts a
   session (``setsid``), sends its stdio to ``daemon.log`` in the runtime dir, maps the index,
   mounts (the C session, or ``pyfuse3.init``; ``fusermount3`` for non-root users), raises the
   read-ahead (``_cache``), and writes ``ok`` to a pipe; on failure it writes the error line
   instead.  The caller returns once it reads ``ok``.  Any failure after the fork (the record,
   the daemon's error, a signal) stops the daemon and removes its mount and the record: a failed
   ``mount`` leaves nothing behind.  ``foreground=True`` runs the same daemon in the caller.
3. The daemon serves requests (``_handlers``) until the kernel ends the session (``umount``,
   ``fusermount3 -u``), or SIGTERM / SIGINT / SIGHUP arrive: then ``pyfuse3.terminate()``, and
   always ``pyfuse3.close(unmount=True)`` (docs/fuse.rst "Errors and termination": a mount copied
   into another namespace would otherwise keep the daemon waiting forever).  It unregisters the
   mount on the way out.

Unmounting (:func:`umount`) removes this mount namespace's mount, and refuses a mount that is not
layerfs's.  A copy of the mount in another namespace (a container, ``unshare --mount``) keeps
the FUSE connection open, and the daemon serves it until the kernel closes the connection with
the last copy; umount then returns at once and says so, and never stops a daemon that still
serves a mount.  The device (``major:minor``) noted in ``mount.json`` names the connection.

Runtime records: every mount has a directory ``<runtime>/<sha256(mount point)[:16]>/`` holding
``mount.json`` (mount point, pid, source, image ID, since), ``daemon.log``, ``stats.json`` and,
for ``lowerdir=`` mounts, ``index.idx``.  ``<runtime>`` is ``$LAYERFS_RUNTIME_DIR``, else
``/run/layerfs`` for root, else ``$XDG_RUNTIME_DIR/layerfs``, else a private directory of the
user's (:func:`runtime_root`); always mode 0700 and checked to be the user's.

Statistics: SIGUSR1 makes the daemon write ``stats.json`` (temp + rename; ``seq`` counts the
signals); :func:`statistics` sends it and waits for the new file.  The daemon removes its runtime
directory when it exits.  ``layerfs mount-stats MNT`` prints it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .. import _proc
from .._errors import LayerfsError, MountError
from . import cache as _cache
from . import idmap as _idmap
from . import merge as _merge
from . import upper as _upper

if TYPE_CHECKING:  # the store is imported where an image mount uses it: a lowerdir= mount needs none of it
    from .._store.containers import Container
    from .._store.store import Image, Store

log = logging.getLogger(__name__)

#: How long a mount may take to become ready, and an unmount to see its daemon exit.
READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 10.0
#: How long a stopping daemon lets requests in progress finish before it aborts its connection.
STOP_GRACE = 5.0

#: The engines that can serve a read-only mount: "c" (csrc/session.c, the default: see
#: _serve_native for the measurements) and "pyfuse3" (_handlers on trio, the base of the writable
#: upper to come).  $LAYERFS_ENGINE overrides the default.
ENGINES = ("c", "pyfuse3")
DEFAULT_ENGINE = os.environ.get("LAYERFS_ENGINE", "c")


class MountStatistics(NamedTuple):
    """What a running daemon reports (see the module docstring for how it is read)."""

    mountpoint: str
    pid: int
    seq: int
    requests: dict[str, int]
    errors: dict[str, int]
    open_files: int
    index_nodes: int
    layers: int
    index_seconds: float
    mount_seconds: float

    @property
    def total(self) -> int:
        """All requests answered so far."""
        return sum(self.requests.values())


class MountHandle(NamedTuple):
    """A running mount: where, served by which daemon, of what."""

    mountpoint: Path
    pid: int
    source: str
    image_id: str | None
    runtime_dir: Path

    def statistics(self, timeout: float = 5.0) -> MountStatistics:
        return statistics(self.mountpoint, timeout=timeout)

    def umount(self, timeout: float = EXIT_TIMEOUT) -> Unmounted:
        return umount(self.mountpoint, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Runtime records

def runtime_root(*, create: bool = False) -> Path:
    """Where mount records live, checked to be the user's alone.

    ``$LAYERFS_RUNTIME_DIR``; else ``/run/layerfs`` for root; else ``$XDG_RUNTIME_DIR/layerfs``;
    else ``/run/user/<uid>/layerfs`` when that directory is the user's; else
    ``$XDG_CACHE_HOME/layerfs/run`` (``~/.cache/layerfs/run``): never a predictable name in a
    directory others can write, such as ``/tmp``.

    Args:
        create: make it (mode 0700, parents too) if missing; an existing one of ours with looser
            permissions is set to 0700.
    Returns:
        The directory (it may not exist when ``create`` is false: then no mount is recorded).
    Raises:
        MountError: it is a symbolic link or not a directory, or another user owns it (someone
            made it first: it is refused, never used).
    """
    env = os.environ.get("LAYERFS_RUNTIME_DIR")
    uid = os.geteuid()
    if env:
        root = Path(env)
    elif uid == 0:
        root = Path("/run/layerfs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        root = Path(os.environ["XDG_RUNTIME_DIR"]) / "layerfs"
    elif _owned_dir(Path(f"/run/user/{uid}"), uid):
        root = Path(f"/run/user/{uid}/layerfs")
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(cache) / "layerfs" / "run"
    if create:
        root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return root
    if stat.S_ISLNK(st.st_mode):
        raise MountError(f"runtime directory {root}: is a symbolic link: refusing it")
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"runtime directory {root}: is not a directory")
    if st.st_uid != uid:
        raise MountError(f"runtime directory {root}: owned by uid {st.st_uid}, not by you (uid {uid}): "
                         f"refusing it (set LAYERFS_RUNTIME_DIR or XDG_RUNTIME_DIR to a directory of yours)")
    if create and st.st_mode & 0o077:
        os.chmod(root, 0o700)
    return root


def _owned_dir(path: Path, uid: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022


def runtime_dir(mountpoint: str | os.PathLike[str], *, create: bool = False) -> Path:
    """The runtime directory of the mount at ``mountpoint`` (absolute, symlinks resolved).

    Args:
        create: make it (mode 0700) and the runtime root if missing.
    """
    try:  # CPython's own SHA-256 (3.11): hashlib loads OpenSSL first, ~3 ms of a mount program's start
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    key: str = sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]
    root = runtime_root(create=create)
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(root / key, 0o700)
    return root / key


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class MountInfo(NamedTuple):
    """A layerfs mount, as ``layerfs mounts`` lists it."""

    mountpoint: str
    pid: int
    source: str
    image_id: str | None
    since: str
    #: writable mounts: the upper directory, and the container it belongs to (if any)
    upper: str | None = None
    container: str | None = None
    #: False for a dead mount: still in the mount table, but its daemon is gone (every access
    #: fails with ENOTCONN, "Transport endpoint is not connected"); `layerfs umount` removes it
    alive: bool = True
    #: its ID mapping, as ``-o`` options (``uidmapping=...``); empty: the owners on disk
    idmap: tuple[str, ...] = ()


def mounts() -> list[MountInfo]:
    """The layerfs mounts of this user in this mount namespace, dead ones too (their daemon is
    gone but the mount is still there).  Records of mounts that are gone, with their daemon, are
    removed."""
    root = runtime_root()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    live = _proc.mountpoints()
    out = []
    for name in names:
        rec = _read_json(root / name / "mount.json")
        if rec is None:
            continue
        mnt, pid = str(rec.get("mountpoint")), int(rec.get("pid", 0))  # type: ignore[call-overload]
        alive = _proc.pid_alive(pid)
        entry = live.get(mnt)
        if entry is None or not (alive or _is_layerfs(entry)):
            if not alive:
                _remove_runtime(root / name)
            continue  # served in another mount namespace only, or gone
        image_id = rec.get("image_id")
        upper, container, idmap = rec.get("upper"), rec.get("container"), rec.get("idmap")
        out.append(MountInfo(mnt, pid, str(rec.get("source")), str(image_id) if image_id else None,
                             str(rec.get("since")), str(upper) if upper else None,
                             str(container) if container else None, alive,
                             tuple(str(o) for o in idmap) if isinstance(idmap, list) else ()))
    return out


def _remove_runtime(path: Path) -> None:
    with contextlib.suppress(OSError):
        for child in path.iterdir():
            with contextlib.suppress(OSError):
                child.unlink()
        path.rmdir()


# ---------------------------------------------------------------------------------------------
# Checks

def check_mountpoint(mountpoint: str | os.PathLike[str]) -> Path:
    """Return the absolute mount point, or raise MountError saying why it cannot be used.

    A path that is already a mount point is never asked anything its daemon would have to answer
    (a live daemon that hangs would hold this call forever): whether it is dead comes from the
    record of the layerfs daemon serving it, and only a layerfs mount without a record here is
    probed with a statfs bounded by :data:`PROBE_TIMEOUT`.

    Raises:
        MountError: missing, not a directory, a dead FUSE mount, already a mount point, not empty.
    """
    path = Path(os.path.abspath(mountpoint))
    dead = MountError(f"mount point {path}: is a dead mount (transport endpoint is not connected): run "
                      f"`layerfs umount {path}` first")
    busy = MountError(f"mount point {path}: is already a mount point (unmount it first)")
    table = _proc.mountpoints()
    # A mount point is never a symlink: its parent resolved, it is named as the table names it,
    # without a stat of the mount itself.
    entry = table.get(os.path.join(os.path.realpath(path.parent), path.name))
    if entry is not None:
        raise dead if _is_dead(entry) else busy
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mount point {path}: does not exist") from None
    except OSError as err:
        if err.errno in (errno.ENOTCONN, errno.ECONNABORTED):  # a FUSE mount whose daemon is gone
            raise dead from None
        raise MountError(f"mount point {path}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {path}: is not a directory")
    real = os.path.realpath(path)
    entry = table.get(real)
    if entry is not None:  # named through a symlink
        raise dead if _is_dead(entry) else busy
    try:
        with os.scandir(path) as it:
            if next(it, None) is not None:
                raise MountError(f"mount point {path}: is not empty")
    except PermissionError:
        raise MountError(f"mount point {path}: permission denied") from None
    return Path(real)


#: How long :func:`check_mountpoint` waits for the daemon of a layerfs mount it has no record of.
PROBE_TIMEOUT = 2.0


def _is_dead(entry: _proc.MountEntry) -> bool:
    """Whether a mount is a layerfs mount whose daemon is gone, without waiting for its daemon.

    Its record (:func:`mounts`) says so when there is one; a layerfs mount without one here (another
    runtime directory) is asked for its statfs in a thread, given up on after PROBE_TIMEOUT (a
    daemon that does not answer is alive but hung, not dead).  Another file system's mount counts
    as alive: ``layerfs umount`` could not remove it.
    """
    if not _is_layerfs(entry):
        return False
    for info in mounts():
        if info.mountpoint == entry.mountpoint:
            return not info.alive
    import threading

    failed: list[int | None] = []

    def probe() -> None:
        try:
            os.statvfs(entry.mountpoint)  # the kernel may answer stat from its cache; statfs asks the daemon
            failed.append(None)
        except OSError as err:
            failed.append(err.errno)

    thread = threading.Thread(target=probe, name=f"statfs {entry.mountpoint}", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT)
    return bool(failed) and failed[0] in (errno.ENOTCONN, errno.ECONNABORTED)


# ---------------------------------------------------------------------------------------------
# Sources

class _Stack(NamedTuple):
    layer_dirs: list[Path]  # base first
    index_path: Path | None  # None: merged lazily by the C engine (a lowerdir= stack)
    key: str
    source: str
    image: Image | None
    upper: _upper.Upper | None = None
    container: Container | None = None
    idmap: _idmap.IdMapping = _idmap.IdMapping()


def _image_stack(store: Store, name: str, rundir: Path) -> _Stack:
    image = store.get(name)
    top = image.top_chain_id
    if top is None:
        # No layers (FROM scratch + LABEL): an empty root, as docker runs it.  Its one lower is
        # the store's empty directory, its index named after the image ID (Store.state_dir).
        empty = store.state_dir("empty")
        os.chmod(empty, 0o755)  # the mount's root: as a container's root is
        return _Stack([empty], store.state_dir("merged") / f"{image.id.partition(':')[2]}.idx", f"empty:{image.id}",
                      name, image)
    index_path = store.state_dir("merged") / f"{top.partition(':')[2] or top}.idx"
    return _Stack(store.layer_dirs(image), index_path, _merge.stored_key(top), name, image)


def _lowerdir_stack(lowerdirs_top_first: Sequence[str | os.PathLike[str]], rundir: Path, *, lazy: bool) -> _Stack:
    dirs = [Path(os.path.abspath(d)) for d in lowerdirs_top_first]
    for d in dirs:
        if not d.is_dir():
            raise MountError(f"lowerdir {d}: is not a directory")
    base_first = dirs[::-1]
    return _Stack(base_first, None if lazy else rundir / "index.idx", "lowerdir=" + ":".join(map(str, dirs)),
                  "lowerdir=" + ":".join(map(str, dirs)), None)


def split_escaped(value: str, sep: str, *, quotes: bool = False) -> list[str]:
    r"""Split ``value`` on ``sep`` where it is not escaped with a backslash (overlay's ``\,``,
    ``\:``) nor, with ``quotes``, inside double quotes (an SELinux ``context="...,..."``).  The
    parts keep their escapes (:func:`unescape` removes them)."""
    out, cur, quoted, i = [], [], False, 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i:i + 2])
            i += 2
            continue
        if quotes and ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unescape(value: str) -> str:
    """``\\X`` stands for X (overlay's escapes in a path of ``lowerdir=``, ``upperdir=``, ...)."""
    return re.sub(r"\\(.)", r"\1", value)


def parse_lowerdir(value: str) -> list[str]:
    """Split a ``lowerdir=`` value (``A:B:C``, top first; ``\\:`` escapes a colon,
    docs/overlay.rst "Layers and lookup")."""
    return [unescape(p) for p in split_escaped(value, ":") if p]


# ---------------------------------------------------------------------------------------------
# Mount

def mount(store: Store | None, source: str | Sequence[str | os.PathLike[str]],
          mountpoint: str | os.PathLike[str], *, foreground: bool = False, debug: bool = False,
          engine: str = DEFAULT_ENGINE, suid: bool = False, dev: bool = False,
          upper: _upper.Upper | None = None, container: Container | None = None,
          allow_other: bool = False, idmap: _idmap.IdMapping | None = None) -> MountHandle:
    """Mount an image of the store or a stack of plain dirs at ``mountpoint``.

    Args:
        store: the store holding the image (may be None for plain dirs).
        source: an image name, ID or digest; or lower dirs **top first**, as ``lowerdir=`` takes them.
        mountpoint: an existing, empty directory that is not a mount point.
        foreground: serve from this process and return only after the mount ends.
        debug: log every failed request (daemon log) at debug level.
        engine: "c" or "pyfuse3" (see :data:`ENGINES`).
        suid, dev: honour setuid bits and device nodes (root only; ``nosuid,nodev`` otherwise:
            see ``_cache.mount_options``).
        allow_other: let other users in (always so for root; a user needs ``user_allow_other`` in
            /etc/fuse.conf, else MountError says so: ``_cache.mount_options``).
        upper: the checked upper and work directories of a writable mount (``_mount.upper.check``);
            None for a read-only mount.  Only the C engine writes.
        container: the container (``_store.containers``) this writable mount of an image belongs
            to: its upper and work, recorded with the mount; removed after the mount ends when it
            was made with ``--rm``.
        idmap: the owners the mount shows for those on disk, and back (``-o uidmapping=``,
            ``gidmapping=``: ``_mount.idmap``); None: as they are.  The C engine only.

    Returns:
        The running mount (in the foreground case, the mount that was).

    Raises:
        MountError: a bad mount point, or a daemon that failed to start (its error line).
        ImageNotFound: the image is not in the store (the CLI pulls it first).
        OSError: a layer or the index cannot be read or written.
    """
    if engine not in ENGINES:
        raise MountError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    if upper is not None and engine != "c":
        raise MountError(f"the {engine} engine serves read-only mounts only (writable mounts: --engine c)")
    if idmap and engine != "c":
        raise MountError(f"the {engine} engine shows the owners on disk only (ID mappings: --engine c)")
    started = time.perf_counter()
    mnt = check_mountpoint(mountpoint)
    rundir = runtime_dir(mnt)
    if isinstance(source, str):
        if store is None:
            raise MountError(f"image {source}: no store given")
        stack = _image_stack(store, source, rundir)
    else:
        stack = _lowerdir_stack(source, rundir, lazy=engine == "c")
    if container is not None:
        if upper is None:
            upper = _upper.check(container.upper, container.work)
        stack = stack._replace(container=container)
    if upper is not None:
        stack = stack._replace(upper=upper)
    if idmap:
        stack = stack._replace(idmap=idmap)
    _check_outside(mnt, stack)
    options = _cache.mount_options(fsname=f"layerfs:{stack.source}"[:200].replace(",", "_"), suid=suid, dev=dev,
                                   allow_other=allow_other)
    if upper is not None:
        options.discard("ro")
    what = f"mount {stack.source} on {mnt}"
    # The image is in use from here on: a concurrent rm either went first (then this fails: No
    # such image) or finds the record and refuses.  No daemon exists before the record does.
    with _failing(what):
        _register(store, stack, mnt, os.getpid())
    try:
        with _failing(what):
            runtime_dir(mnt, create=True)
            t0 = time.perf_counter()
            built = _ensure_index(store, stack)
            if built is not None:
                log.info("merged index of %s: %d nodes from %d layers in %.3f s", stack.source, built.nodes,
                         built.layers, built.seconds)
            index_seconds = time.perf_counter() - t0
            record: dict[str, object] = {
                "mountpoint": str(mnt), "source": stack.source,
                "image_id": stack.image.id if stack.image else None,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                "index": str(stack.index_path) if stack.index_path else None,
                "layers": [str(d) for d in stack.layer_dirs],
                "upper": str(stack.upper.upper) if stack.upper else None,
                "work": str(stack.upper.work) if stack.upper else None,
                "container": stack.container.name if stack.container else None,
                "idmap": stack.idmap.options()}
            if foreground:
                record["pid"] = os.getpid()
                try:
                    _daemon(stack, mnt, rundir, record, None, started, index_seconds, debug, engine, options)
                finally:
                    _unregister(store, mnt, os.getpid(), stack)
                return MountHandle(mnt, os.getpid(), stack.source, stack.image.id if stack.image else None, rundir)
            pid = _start_daemon(store, stack, mnt, rundir, record, started, index_seconds, debug, engine,
                                options)
    except BaseException:
        _unregister(store, mnt, os.getpid())  # unless handed over to a daemon (that one is gone too)
        if not (rundir / "mount.json").exists():
            _remove_runtime(rundir)
        raise
    return MountHandle(mnt, pid, stack.source, stack.image.id if stack.image else None, rundir)


def _check_outside(mnt: Path, stack: _Stack) -> None:
    """Refuse a mount point inside one of the mount's own directories.

    The engine reads its layers, upper and work directories while it serves (a ``lowerdir=``
    stack is merged a directory at a time: ``csrc/merge.h``), so a mount point inside one would
    have it read through its own mount: wrong entries (the mount's root for the directory under
    it) and a request waiting on the merge that sent it.  The kernel overlay never sees its own
    mount below its layers; nor may layerfs.

    Raises:
        MountError: naming the mount point and the directory it is in.
    """
    real = os.path.realpath(mnt)
    dirs = [("lowerdir", d) for d in stack.layer_dirs]
    if stack.upper is not None:
        dirs += [("upperdir", stack.upper.upper), ("workdir", stack.upper.work)]
    for what, d in dirs:
        base = os.path.realpath(d)
        if os.path.commonpath([real, base]) == base:
            raise MountError(f"mount point {mnt}: inside the {what} {d} (the mount would read itself)")


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Give an error of the mount one line naming it: ``mount SOURCE on MNT: <cause>``."""
    try:
        yield
    except LayerfsError as err:
        raise err.with_context(what) from err
    except OSError as err:
        raise MountError(f"{what}: {err.strerror or err}") from err


def _start_daemon(store: Store | None, stack: _Stack, mnt: Path, rundir: Path, record: dict[str, object],
                  started: float, index_seconds: float, debug: bool, engine: str, options: set[str]) -> int:
    """Fork the daemon, hand it the mount record, let it mount, wait until it is ready.

    The child waits on a pipe until the record of the mount names it (so that no daemon serves an
    image the store does not count as in use, even if this command dies meanwhile: the child
    then reads EOF and exits without mounting).  On any failure here (the record, the daemon's
    error, a signal) the daemon is stopped and its mount, if it made one, removed.

    Returns:
        The daemon's pid.
    Raises:
        MountError: the daemon reported an error (its line) or did not get ready.
        OSError, LayerfsError: handing over the record failed.
    """
    rfd, wfd = os.pipe2(os.O_CLOEXEC)  # the daemon's "ok" or error line
    go_r, go_w = os.pipe2(os.O_CLOEXEC)  # the command's go-ahead, once the record names the daemon
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            os.close(rfd)
            os.close(go_w)
            if os.read(go_r, 1) != b"g":
                os._exit(1)  # the command failed or died before handing the mount over
            os.close(go_r)
            os.setsid()
            # Nothing the caller held open (a pipe it writes to, a lock) may outlive it in us.
            os.closerange(3, wfd)
            os.closerange(wfd + 1, os.sysconf("SC_OPEN_MAX"))
            _detach_stdio(rundir / "daemon.log", debug)
            record["pid"] = os.getpid()
            code = _daemon(stack, mnt, rundir, record, wfd, started, index_seconds, debug, engine, options)
            _unregister(store, mnt, os.getpid(), stack)
        except BaseException as err:  # noqa: B036 - the child must never return into the caller
            with contextlib.suppress(BaseException):
                log.exception("daemon failed")
                _unregister(store, mnt, os.getpid())  # the command may be gone: it would not do it
                os.write(wfd, f"error: {err}\n".encode())
        finally:
            os._exit(code)
    os.close(wfd)
    os.close(go_r)
    try:
        try:
            if store is not None and stack.image is not None:
                store.hand_over_mount(str(mnt), os.getpid(), pid)
            os.write(go_w, b"g")
        finally:
            os.close(go_w)
        fd, rfd = rfd, -1
        reply = _read_ready(fd, pid)  # closes fd
        if reply != "ok":
            raise MountError(reply)
        _note_device(rundir, mnt)
    except BaseException:
        if rfd >= 0:
            os.close(rfd)
        _stop_daemon(pid, mnt)
        _unregister(store, mnt, pid)
        raise
    return pid


def _note_device(rundir: Path, mnt: Path) -> None:
    """Add the mount's device (``major:minor``, which names its FUSE connection) to ``mount.json``,
    so that :func:`umount` can tell later whether the daemon still serves another namespace."""
    rec = _read_json(rundir / "mount.json")
    entry = _proc.mountpoints().get(str(mnt))
    if rec is None or entry is None or not _is_layerfs(entry):
        raise MountError("the daemon reported ready, but nothing is mounted")
    _write_json(rundir / "mount.json", {**rec, "device": entry.device})


def _stop_daemon(pid: int, mnt: Path) -> None:
    """Stop a daemon this command just started and must not leave behind; remove its mount.

    SIGTERM asks it to unmount and exit; one that does not within :data:`EXIT_TIMEOUT` is killed,
    and a mount it leaves (dead, then) is detached.
    """
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + EXIT_TIMEOUT
    while _proc.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if _proc.pid_alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    entry = _proc.mountpoints().get(str(mnt))
    if entry is not None and _is_layerfs(entry):
        import subprocess

        argv = ["umount", "-l", str(mnt)] if os.geteuid() == 0 else ["fusermount3", "-uz", str(mnt)]
        subprocess.run(argv, capture_output=True, check=False)


def _is_layerfs(entry: _proc.MountEntry) -> bool:
    """Whether a mount is one of layerfs's (its type, as ``_cache.mount_options`` sets it)."""
    return entry.fstype == "fuse.layerfs"


def _ensure_index(store: Store | None, stack: _Stack) -> _merge.MergeStatistics | None:
    """Build the merged index of the stack unless the saved one is current; None if it was.

    An image's index goes into the store through :meth:`Store.put_state` (a leased temporary
    name, so that a writer cleaning up meanwhile leaves it alone); a ``lowerdir=`` index into the
    mount's own runtime directory.
    """
    if stack.index_path is None or _merge.is_current(stack.index_path, stack.key):
        return None
    data, stats = _merge.build(stack.layer_dirs, key=stack.key)
    if store is not None and stack.image is not None:
        store.put_state(stack.index_path.parent.name, stack.index_path.name, data)
    else:
        _merge.write_atomic(stack.index_path, data)
    return stats


def _register(store: Store | None, stack: _Stack, mnt: Path, pid: int) -> None:
    """Record an image mount in the store (the image is in use while ``pid`` lives)."""
    if store is not None and stack.image is not None:
        store.register_mount(stack.image.id, str(mnt), pid, stack.container.id if stack.container else None)


def _unregister(store: Store | None, mnt: Path, pid: int, stack: _Stack | None = None) -> None:
    """Remove the store's record of the mount at ``mnt`` if it names ``pid``; then, for the last
    mount of a container made with ``--rm``, the container (the daemon does it as it ends)."""
    if store is not None:
        with contextlib.suppress(OSError):
            store.unregister_mount(str(mnt), pid)
        c = stack.container if stack is not None else None
        if c is not None and c.remove_on_umount:
            from .._store import containers as _containers

            try:
                _containers.remove(store, c.id)
                log.info("container %s removed (--rm)", c.name)
            except (OSError, LayerfsError) as err:
                log.warning("container %s (--rm) not removed: %s", c.name, err)


def _read_ready(rfd: int, pid: int) -> str:
    """Wait for the daemon's first line: ``ok``, or an error; EOF means it died."""
    import select

    buf = b""
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                return f"the daemon was not ready after {READY_TIMEOUT:.0f} s"
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 4096)
            if not chunk:
                return buf.decode(errors="replace").strip() or "the daemon exited before it was ready"
            buf += chunk
    finally:
        os.close(rfd)
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    return "ok" if line == "ok" else line.removeprefix("error: ")


def _detach_stdio(log_path: Path, debug: bool) -> None:
    """stdin from /dev/null, stdout and stderr to the daemon log; logging to stderr."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(logfd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _daemon(stack: _Stack, mnt: Path, rundir: Path, record: dict[str, object], ready_fd: int | None,
            started: float, index_seconds: float, debug: bool, engine: str, options: set[str]) -> int:
    """Mount with ``options`` (``_cache.mount_options``), signal readiness, serve until the
    session ends; always close.  Returns the status."""
    if engine == "c":
        return _serve_native(stack, mnt, rundir, record, ready_fd, started, index_seconds, debug, options)
    return _serve_pyfuse3(stack, mnt, rundir, record, ready_fd, started, index_seconds, debug, options)


def _ready(ready_fd: int | None, stack: _Stack, mnt: Path) -> None:
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
    else:
        print(f"layerfs: {stack.source} mounted on {mnt} (pid {os.getpid()}); Ctrl-C unmounts",
              file=sys.stderr, flush=True)


def _stats_record(mnt: Path, seq: int, requests: dict[str, int], errors: dict[str, int], open_files: int,
                  nodes: int, layers: int, index_seconds: float, mount_seconds: float) -> dict[str, object]:
    return {"mountpoint": str(mnt), "pid": os.getpid(), "seq": seq, "requests": requests, "errors": errors,
            "open_files": open_files, "index_nodes": nodes, "layers": layers, "index_seconds": index_seconds,
            "mount_seconds": mount_seconds}


def _abort_connection(device: str | None) -> None:
    """Abort a FUSE connection the kernel did not end (a mount copied into another namespace)."""
    if device is None:
        return
    with contextlib.suppress(OSError):
        Path(f"/sys/fs/fuse/connections/{device.split(':')[1]}/abort").write_text("1\n")


def _serve_native(stack: _Stack, mnt: Path, rundir: Path, record: dict[str, object], ready_fd: int | None,
                  started: float, index_seconds: float, debug: bool, options: set[str]) -> int:
    """The C engine: libfuse's loop runs in a thread with the GIL released (itself running
    ``_cache.NATIVE_THREADS`` request threads); this (main) thread only handles signals:
    SIGTERM/SIGINT/SIGHUP unmount, SIGUSR1 writes ``stats.json``.

    Measured with scripts/bench-mount against the pyfuse3 engine: no trio/pyfuse3 import (mount
    ~10x faster), no per-request interpreter dispatch, and the kernel keeps listings
    (cache_readdir) and symlinks (CACHE_SYMLINKS) and gets spliced reads.
    """
    import threading

    from .index import NativeSession

    layers = len(stack.layer_dirs)
    policy = _cache.NATIVE_POLICY
    state = {"seq": 0, "stop_at": 0.0}
    writing = {"now": False, "again": False}
    session: NativeSession | None = None
    mount_seconds = 0.0

    def write_stats() -> None:
        # SIGUSR1's handler calls this between any two bytecodes of the main thread, this function
        # included: a nested call only asks the one under way to write again (with the newer seq);
        # two writes of the one temporary name would fail, and the failure stop the mount.
        if session is None:
            return
        if writing["now"]:
            writing["again"] = True
            return
        writing["now"] = True
        try:
            while True:
                writing["again"] = False
                req, err, nopen, nodes = session.stats()
                _write_json(rundir / "stats.json", _stats_record(mnt, int(state["seq"]), req, err, nopen, nodes,
                                                                 layers, index_seconds, mount_seconds))
                if not writing["again"]:
                    break
        finally:
            writing["now"] = False

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGUSR1:
            state["seq"] += 1
            write_stats()
            return
        log.info("signal %d: stopping the mount %s", signum, mnt)
        if session is not None and not state["stop_at"]:
            state["stop_at"] = time.monotonic()
            session.exit()  # only ask: the loop returns once its requests are answered

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, on_signal)
    up = stack.upper
    work_lock = -1
    if up is not None:
        work_lock = _upper.prepare(up)  # held (flock) until this process exits
        if stack.container is not None and stack.container.own_dirs:
            _upper.own_root(up)
    try:
        session = NativeSession(stack.index_path, [str(d) for d in stack.layer_dirs], str(mnt), options,
                                entry_timeout=policy.entry_timeout, attr_timeout=policy.attr_timeout,
                                negative_timeout=policy.negative_timeout, threads=_cache.NATIVE_THREADS, debug=debug,
                                max_open=_cache.max_open_files(),
                                upper=str(up.upper) if up else None, work=str(up.work_dir) if up else None,
                                privileged=up.privileged if up else True, metacopy=up.metacopy if up else False,
                                redirect_dir=up.redirect_dir if up else False, idmap=stack.idmap)
    except RuntimeError as err:
        raise MountError(f"cannot mount on {mnt}: {err}") from None
    del work_lock  # the fd stays open (O_CLOEXEC) for the daemon's life: the work dir stays ours
    mount_seconds = time.perf_counter() - started
    device = _cache.mount_device(str(mnt))
    loop = threading.Thread(target=session.loop, name="fuse-loop", daemon=True)
    try:
        _cache.apply_read_ahead(str(mnt), policy, device=device)
        _write_json(rundir / "mount.json", record)
        loop.start()
        _ready(ready_fd, stack, mnt)
        write_stats()  # after "ok": statistics() waits for a newer one anyway
        aborted = False
        while loop.is_alive():
            loop.join(0.5)
            if (state["stop_at"] and not aborted
                    and time.monotonic() - float(state["stop_at"]) > STOP_GRACE):
                # a request stuck in a backing file: fail what waits on us, so the loop can end
                log.warning("requests still running %.0f s after the stop: aborting the connection", STOP_GRACE)
                _abort_connection(device)
                aborted = True
    finally:
        with contextlib.suppress(Exception):
            write_stats()
        if loop.is_alive():
            # failed while serving had begun (the command that started us died before we could say
            # "ok": no one would know of this mount): stop as on SIGTERM, so the mount goes too
            session.exit()
            loop.join(STOP_GRACE)
            if loop.is_alive():
                _abort_connection(device)
                loop.join(STOP_GRACE)
        if not loop.is_alive():
            # libfuse's order: the loop has returned (its threads are joined), then unmount, then
            # destroy; nothing frees what a request thread may still use
            with contextlib.suppress(Exception):
                session.unmount()
            session.close()
        log.info("%s unmounted", mnt)
        _remove_runtime(rundir)
    return 0


def _serve_pyfuse3(stack: _Stack, mnt: Path, rundir: Path, record: dict[str, object], ready_fd: int | None,
                   started: float, index_seconds: float, debug: bool, options: set[str]) -> int:
    """The pyfuse3 engine: ``_handlers`` on trio (the base of the writable upper to come)."""
    import pyfuse3
    import trio

    from .handlers import Handlers
    from .index import Index

    assert stack.index_path is not None, "the pyfuse3 engine serves a built index"
    index = Index(stack.index_path)
    handlers = Handlers(index, stack.layer_dirs)
    if debug:
        options = options | {"debug"}
    try:
        pyfuse3.init(handlers, str(mnt), options)
    except RuntimeError as err:
        raise MountError(f"cannot mount on {mnt}: {err}") from None
    mount_seconds = time.perf_counter() - started
    seq = 0

    def write_stats() -> None:
        s = handlers.statistics()
        _write_json(rundir / "stats.json", {
            "mountpoint": str(mnt), "pid": os.getpid(), "seq": seq, "requests": s.requests,
            "errors": s.errors, "open_files": s.open_files, "index_nodes": index.n_nodes - 1,
            "layers": index.n_layers, "index_seconds": index_seconds, "mount_seconds": mount_seconds})

    async def main() -> None:
        async def on_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal seq
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                           signal.SIGUSR1) as signals:
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        seq += 1
                        write_stats()
                    else:
                        log.info("signal %d: unmounting %s", signum, mnt)
                        pyfuse3.terminate()

        async with trio.open_nursery() as nursery:
            await nursery.start(on_signals)
            _ready(ready_fd, stack, mnt)
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()

    try:
        _cache.apply_read_ahead(str(mnt))
        _write_json(rundir / "mount.json", record)
        write_stats()
        trio.run(main)
    finally:
        with contextlib.suppress(Exception):
            write_stats()
        pyfuse3.close(unmount=True)
        handlers.close()
        log.info("%s unmounted", mnt)
        _remove_runtime(rundir)
    return 0


# ---------------------------------------------------------------------------------------------
# Unmount and statistics

class Unmounted(NamedTuple):
    """What :func:`umount` did: this namespace's mount is gone; ``daemon_stays`` when the daemon
    (``pid``, 0 if unknown) keeps serving mounts of the file system in other mount namespaces."""

    mountpoint: str
    pid: int
    daemon_stays: bool


def umount(mountpoint: str | os.PathLike[str], *, store: Store | None = None,
           timeout: float = EXIT_TIMEOUT) -> Unmounted:
    """Unmount a layerfs mount in this mount namespace; wait for its daemon if that was its last.

    A FUSE file system lives as long as its connection: the kernel closes it when the last mount
    of it is gone, in every mount namespace (a container or an ``unshare --mount`` holds a copy),
    and only then does the daemon's loop end.  So this removes this namespace's mount; if the
    connection lives on (:func:`_connection_alive`), the daemon stays to serve the others, and is
    never stopped; otherwise this waits until the daemon has exited.

    Args:
        mountpoint: the mount point.
        store: the store to unregister an image mount from (the daemon also does it on exit).
        timeout: how long to wait for a daemon whose connection is gone; then it serves nothing
            and gets SIGTERM, and SIGKILL 2 s later.
    Returns:
        What happened (see :class:`Unmounted`).
    Raises:
        MountError: not mounted here, not a layerfs mount, busy (a process uses the mount), or a
            daemon that would not exit.
    """
    mnt = os.path.abspath(mountpoint)
    real = os.path.realpath(mnt)
    rundir = runtime_dir(real, create=False)
    rec = _read_json(rundir / "mount.json") or {}
    pid = int(rec.get("pid", 0))  # type: ignore[call-overload]
    entry = _proc.mountpoints().get(real)
    if entry is None:
        device = rec.get("device")
        if pid and _proc.pid_alive(pid):
            if isinstance(device, str) and _connection_alive(device):
                raise MountError(f"{mnt}: not mounted in this mount namespace (its daemon, pid {pid}, serves "
                                 f"the mounts of it in other namespaces)")
            if isinstance(device, str):  # a daemon whose connection is gone serves nothing
                _wait_exit(pid, 0)
        if not pid or not _proc.pid_alive(pid):
            _remove_runtime(rundir)
        raise MountError(f"{mnt}: not mounted")
    if not _is_layerfs(entry):
        raise MountError(f"{mnt}: not a layerfs mount (a {entry.fstype} mount of {entry.source})")
    if rec.get("mountpoint") != real:
        # the runtime record is of another mount, or missing (its command was killed before it
        # wrote it): the store's record, written before the daemon mounted, names the daemon
        pid = next((r.pid for r in store.mounts() if r.mountpoint in (real, mnt)),  # live daemons only
                   0) if store is not None else 0
    import subprocess  # only here: it costs the mount command ~2.5 ms of imports

    proc = subprocess.run(["fusermount3", "-u", real], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unmount failed"
        if "busy" in msg.lower():
            raise MountError(f"{mnt}: busy (a process uses it; see `fuser -vm {mnt}`)")
        if os.geteuid() == 0:
            try:  # fusermount3 refused (a mount it did not make): plain umount
                subprocess.run(["umount", real], check=True, capture_output=True, text=True)
            except subprocess.CalledProcessError as err:
                text = err.stderr.strip() or msg
                if "busy" in text.lower():
                    raise MountError(f"{mnt}: busy (a process uses it; see `fuser -vm {mnt}`)") from None
                raise MountError(f"{mnt}: {text}") from None
        else:
            raise MountError(f"{mnt}: {msg}")
    if _connection_alive(entry.device):
        return Unmounted(mnt, pid, True)
    if pid and not _wait_exit(pid, timeout):
        raise MountError(f"{mnt}: unmounted, but daemon {pid} did not exit (killed)")
    if store is not None:
        store.unregister_mount(real, pid or None)
    if pid:
        _remove_runtime(rundir)
    return Unmounted(mnt, pid, False)


def _connection_alive(device: str) -> bool:
    """Whether the FUSE connection of the mount device ``major:minor`` is still open somewhere.

    The kernel lists open connections in ``/sys/fs/fuse/connections/<minor>`` (fusectl) and
    removes the entry when the last mount goes.  Where fusectl is not mounted, the mount tables
    of every mount namespace this user can see are asked for the device instead.
    """
    minor = device.partition(":")[2]
    conns = "/sys/fs/fuse/connections"
    if any(m.fstype == "fusectl" and m.mountpoint == conns for m in _proc.mounts()):
        with contextlib.suppress(OSError):
            return os.path.isdir(f"{conns}/{minor}")
    seen: set[str] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{name}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{name}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                if any(line.split(maxsplit=3)[2] == device for line in f):
                    return True
        except (OSError, IndexError):
            continue  # gone, or not ours to read
    return False


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit; then SIGTERM, then SIGKILL.  True if it exited by itself."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while time.monotonic() < deadline:
        if not _proc.pid_alive(pid):
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            if not _proc.pid_alive(pid):
                return False
            time.sleep(0.02)
    return False


def statistics(mountpoint: str | os.PathLike[str], *, timeout: float = 5.0) -> MountStatistics:
    """Ask the daemon of ``mountpoint`` for its request counts (SIGUSR1) and read them.

    Raises:
        MountError: no layerfs daemon serves that mount point, or it did not answer in time.
    """
    rundir = runtime_dir(mountpoint)
    rec = _read_json(rundir / "mount.json")
    if rec is None:
        raise MountError(f"{mountpoint}: not a layerfs mount")
    pid = int(rec.get("pid", 0))  # type: ignore[call-overload]
    before = _read_json(rundir / "stats.json") or {}
    seq = int(before.get("seq", -1))  # type: ignore[call-overload]
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = _read_json(rundir / "stats.json")
        if data is not None and int(data.get("seq", -1)) > seq:  # type: ignore[call-overload]
            fields = set(MountStatistics._fields)
            return MountStatistics(**{k: v for k, v in data.items() if k in fields})  # type: ignore[arg-type]
        time.sleep(0.005)
    raise MountError(f"{mountpoint}: daemon {pid} did not report statistics")
