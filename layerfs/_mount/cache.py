"""The one cache policy of a layerfs mount: what the kernel may keep, and for how long.

**Contract.**  The lower layers of a mount are immutable, content-addressed directories of the
store (or, for ``-o lowerdir=``, directories the caller promises not to change while mounted,
exactly as overlayfs requires: the kernel's overlayfs.rst "Changes to underlying filesystems").  The
merged index of a stack never changes either.  So nothing the kernel learns about a read-only mount
can go stale, and every cache may be kept for as long as the kernel likes.  (The writable upper of
the future changes only through layerfs, which will invalidate exactly what each change touches;
this policy then applies to inodes that come from the lowers only.)

What is set, and where it takes effect (docs/fuse.rst "Kernel caches and knobs"):

- ``entry_timeout`` / ``attr_timeout``: :data:`LOWER_TIMEOUT` on every lookup, getattr and
  readdirplus reply (``_handlers``).  A stat of a known path then costs no request at all.
- negative entries: a lookup of a missing name answers "no such entry" *as an entry* with
  ``st_ino = 0`` and the same timeout, so the kernel caches the miss (raising ENOENT is not cached;
  ``PATH`` and ``ld.so`` searches are made of misses).
- ``keep_cache``: set on every open of a lower file, so its page cache survives close/reopen.
- readdirplus: always on, and never "auto" (pyfuse3 forces the same; the C engine clears
  READDIRPLUS_AUTO, see session.c ``op_init``): every listing chunk carries the attributes of its
  entries, so ``ls -l`` / ``find`` / ``tar`` need no per-entry lookup.
- read-ahead: the mount's bdi ``read_ahead_kb`` is set at mount time.  The pyfuse3 engine uses
  :data:`READ_AHEAD_KB` (1 MiB READs instead of 128 KiB ones: +74 % throughput and -51 % CPU per
  GiB, docs/fuse.rst "Read-ahead and threads": its cost is per request).  The C engine uses
  :data:`NATIVE_READ_AHEAD_KB` with :data:`NATIVE_THREADS` request threads: a READ costs it a
  splice, not an interpreter, and what limits a cold sequential read is the disk, which is kept
  busy when several READs are served at once.  Measured on the bench image's 1 GiB file, 5
  interleaved cold runs each (median; fuse-overlayfs 415 ms in the same runs): 1 thread +
  1 MiB 660 ms; 4 threads + 128 KiB 380 ms; 4 threads + 1 MiB 454 ms; 4 threads + 256 KiB
  448 ms (another set).  With the backing file already in the page cache: 1 thread + 1 MiB
  259 ms, 4 threads + 256 KiB 261 ms, 4 threads + 128 KiB 284 ms; hence 256 KiB.
- Not available through pyfuse3 3.5 (docs/fuse.rst "What pyfuse3 cannot ask for"): cached directory
  listings (FOPEN_CACHE_DIR) and cached symlinks (FUSE_CAP_CACHE_SYMLINKS); each readdir after the
  first open and every readlink is a round trip.

What the C engine (``csrc/session.c``, the default) adds, each only if the kernel offers it:

- cached symlinks (``FUSE_CAP_CACHE_SYMLINKS``): a readlink is answered once per inode.
- no OPEN/RELEASE (``FUSE_CAP_NO_OPEN_SUPPORT``): the first OPEN answers ENOSYS; the kernel then
  opens files itself with ``keep_cache`` and sends READs with the inode, never a handle.
- no OPENDIR/RELEASEDIR (``FUSE_CAP_NO_OPENDIR_SUPPORT``): the first OPENDIR answers ENOSYS; the
  kernel then opens directories itself with ``FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`` (kernel 6.18
  fs/fuse/file.c ``fuse_file_open``, "Default for no-open"), so listings stay cached in the page
  cache of the directory.  Measured on the 25k-entry bench image: a warm ``find`` went from
  2,739 requests (one OPENDIR + RELEASEDIR per directory) to none.  Without that capability the
  OPENDIR reply sets ``cache_readdir`` + ``keep_cache`` (the same caching, two requests per dir).
- spliced READ replies (``fuse_reply_data`` from the backing fd), 1 MiB READs (``max_readahead``
  and ``read_ahead_kb`` above; libfuse 3.14 negotiates max_pages 256).
- backing fds: with no OPEN/RELEASE the daemon never learns when a file is closed, so it keeps
  the fd of each file it read in a cache of at most :func:`max_open_files` fds (CLOCK eviction;
  an fd in use by a READ is never closed).  A ``tar`` of more files than that reopens the
  evicted ones (one ``openat`` each) instead of failing with EMFILE.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

from .. import _proc
from .._errors import MountError

log = logging.getLogger(__name__)


class CachePolicy(NamedTuple):
    """The kernel cache settings of a mount (see the module docstring for the contract)."""

    entry_timeout: float
    attr_timeout: float
    negative_timeout: float
    keep_cache: bool
    read_ahead_kb: int


#: The most backing fds the C engine keeps open (see the module docstring); ``$LAYERFS_MAX_OPEN_FILES``
#: overrides it (the tests set a small value), and the engine caps it at half of RLIMIT_NOFILE.
MAX_OPEN_FILES = 4096


def max_open_files() -> int:
    """:data:`MAX_OPEN_FILES`, or ``$LAYERFS_MAX_OPEN_FILES`` when set to a positive integer."""
    value = os.environ.get("LAYERFS_MAX_OPEN_FILES", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_OPEN_FILES


#: Lowers never change: let the kernel keep entries and attributes for a year.
LOWER_TIMEOUT = 365 * 86400.0
READ_AHEAD_KB = 1024
#: The C engine's read-ahead and request threads (see the module docstring for the measurements).
NATIVE_READ_AHEAD_KB = 256
NATIVE_THREADS = 4

POLICY = CachePolicy(entry_timeout=LOWER_TIMEOUT, attr_timeout=LOWER_TIMEOUT,
                     negative_timeout=LOWER_TIMEOUT, keep_cache=True, read_ahead_kb=READ_AHEAD_KB)
#: The same policy as the C engine applies it.
NATIVE_POLICY = CachePolicy(entry_timeout=LOWER_TIMEOUT, attr_timeout=LOWER_TIMEOUT,
                            negative_timeout=LOWER_TIMEOUT, keep_cache=True, read_ahead_kb=NATIVE_READ_AHEAD_KB)


def mount_device(mountpoint: str) -> str | None:
    """The ``major:minor`` of the (topmost) mount at ``mountpoint``, read from mountinfo.

    Reads ``/proc/self/mountinfo`` only: it never stats the mount point, so a daemon may call it
    before it serves requests.
    """
    found = None
    for entry in _proc.mounts():
        if entry.mountpoint == mountpoint:
            found = entry.device
    return found


def apply_read_ahead(mountpoint: str, policy: CachePolicy = POLICY, *, device: str | None = None) -> bool:
    """Raise the mount's read-ahead (``/sys/class/bdi/<maj:min>/read_ahead_kb``) to the policy's.

    Needs write access to sysfs (root); otherwise logs at debug level and returns False: the mount
    works, with 128 KiB READs.

    Args:
        mountpoint: the mount.
        policy: whose ``read_ahead_kb`` to set.
        device: the mount's ``major:minor`` if the caller has it (:func:`mount_device`), so that
            mountinfo is not read twice.

    Returns:
        Whether the value was set.
    """
    dev = device or mount_device(mountpoint)
    if dev is None:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(f"{policy.read_ahead_kb}\n")
        return True
    except OSError as err:
        log.debug("read_ahead_kb of %s (bdi %s) not set: %s", mountpoint, dev, err)
        return False


#: Where fusermount3 reads whether users may mount with ``allow_other`` (fuse(8), "CONFIGURATION").
FUSE_CONF = "/etc/fuse.conf"


def users_may_allow_other(conf: str = FUSE_CONF) -> bool:
    """Whether ``conf`` has the line ``user_allow_other``, which lets fusermount3 mount a user's
    FUSE file system with ``allow_other`` (a missing or unreadable file: no)."""
    try:
        with open(conf, encoding="utf-8", errors="replace") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options(*, fsname: str, euid: int | None = None, suid: bool = False, dev: bool = False,
                  allow_other: bool = False, fuse_conf: str = FUSE_CONF) -> set[str]:
    """The FUSE mount options of a read-only layerfs mount.

    ``ro`` and ``default_permissions`` (the kernel checks modes against our attributes, so no
    ACCESS requests); ``noatime`` (lowers are immutable); as root also ``allow_other``, and for a
    user who asks for it (``allow_other``) when ``fuse_conf`` allows it, as fusermount3 requires
    (other users then see the mount, with the image's owners and modes checked by the kernel).  An
    image is untrusted media: ``nosuid`` and ``nodev`` unless ``suid`` / ``dev`` ask otherwise,
    so that a setuid-root binary or a device node (say, the host's disk as block device 8:0)
    that an image carries gives no user anything (as mount(8)'s ``user`` option implies them).
    ``suid`` and ``dev`` are for chroots that need them (``layerfs mount -o suid,dev``;
    fuse-overlayfs, made for a container's rootfs, adds ``suid`` as root: docs/peers.rst
    "fuse-overlayfs"); only root may ask (fusermount3 mounts every user's FUSE file system
    ``nosuid,nodev``).

    Raises:
        MountError: ``suid`` or ``dev`` asked for by a user other than root; ``allow_other``
            asked for by a user where ``fuse_conf`` does not allow it.
    """
    root = (os.geteuid() if euid is None else euid) == 0
    if (suid or dev) and not root:
        asked = ",".join(name for name, on in (("suid", suid), ("dev", dev)) if on)
        raise MountError(f"-o {asked}: only root may mount with {asked} (fusermount3 mounts nosuid,nodev)")
    if allow_other and not root and not users_may_allow_other(fuse_conf):
        raise MountError(f"-o allow_other: {fuse_conf} has no line user_allow_other, without which "
                         f"fusermount3 lets only root mount for other users (root may add it)")
    opts = {"ro", "default_permissions", "noatime", f"fsname={fsname}", "subtype=layerfs",
            "suid" if suid else "nosuid", "dev" if dev else "nodev"}
    if root or allow_other:
        opts.add("allow_other")
    return opts
