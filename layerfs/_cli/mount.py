"""Mount commands: ``mount``, ``umount``, ``mounts``, ``mount-stats`` (see ``_mount``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path

from .._errors import ImageNotFound, LayerfsError, MountError
from .._mount import daemon as _mount
from .._mount import upper as _upper
from .._store import containers as _containers
from .._store.store import Store

log = logging.getLogger(__name__)

#: An image ID, full or short, as ``images --no-trunc`` and ``inspect`` show it.
_IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{1,64}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("mount", formatter_class=fmt, help="mount an image as a merged, writable tree",
                       description="""\
Mount an image's layers as one merged tree: what `docker run` would see as its root filesystem.
The image is pulled first if the store does not hold it.  The command returns once the mount is
ready; a daemon keeps serving it in the background until `layerfs umount`.

The mount is writable: changes go into the upper directory of a container, in the kernel
overlay's own format, and the image's layers never change.  Every writable mount belongs to a
container of the store (--name, else a generated name, printed); mounting the same --name again
continues where it stopped; `layerfs ps` lists containers, `layerfs diff` and `layerfs commit`
show and keep their changes, `layerfs rm NAME` removes one.  --read-only mounts the image alone.

The merged view is the kernel overlay's: upper layers win, whiteouts hide, opaque directories
cut off the layers below.  It is computed once per image and kept in the store, so mounting an
image again takes milliseconds, and looking a path up never reads a layer directory.

Drop-in for fuse-overlayfs on plain directories: `-o lowerdir=A:B:C` (top layer first, as
overlay takes it; `\\:` escapes a colon) mounts those directories instead of an image.  They may
hold whiteouts in the kernel's forms (0/0 char devices, overlay.opaque xattrs) or as OCI `.wh.`
files.  Like overlay, the directories must not change while mounted.

The mount is nosuid,nodev, as untrusted media are: setuid bits show but give no privilege,
and device nodes of the image cannot be opened.  As root, `-o suid` lets the image's setuid
programs run with their owner's rights and `-o dev` lets its device nodes reach the host's
devices (a block device 8:0 is the host's disk): only for a chroot of an image you trust.

The mount point must exist, be an empty directory and not already be a mount point.  As a
non-root user the mount goes through fusermount3.

examples:
  layerfs mount busybox:latest ./rootfs                a new container; prints its name
  layerfs mount --name web busybox:latest ./rootfs     container "web" (made, or mounted again)
  layerfs mount --rm alpine ./scratch                  the changes go at `layerfs umount`
  layerfs mount --read-only alpine /mnt/alpine
  layerfs mount --foreground alpine /mnt/alpine        serve in front, log to the terminal
  layerfs mount -o lowerdir=/l/top:/l/mid:/l/base ./merged
  layerfs mount -o suid,dev debian:12 ./rootfs         as root, for `chroot ./rootfs` to run su""")
    p.add_argument("args", nargs="+", metavar="[IMAGE] MOUNTPOINT",
                   help="the image and the mount point; with -o lowerdir= only the mount point "
                        "(a leading source argument, as mount(8) passes it, is ignored)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options: lowerdir=A:B:C (top first); suid (the image's "
                        "setuid bits take effect) and dev (its device nodes open host devices), root "
                        "only, for chroots of trusted images; ro, nosuid, nodev are the default; others "
                        "are ignored with a warning")
    p.add_argument("--read-only", action="store_true",
                   help="mount the image read-only: no container, nothing can change")
    p.add_argument("--name", metavar="NAME",
                   help="the container the writable mount belongs to: made if missing (else a generated "
                        "docker-style name); an existing one is mounted again with its changes")
    p.add_argument("--rm", action="store_true",
                   help="remove the container and its changes when the mount ends (as `docker run --rm`)")
    p.add_argument("--upper", metavar="DIR",
                   help="keep a new container's upper directory (its changes) in DIR instead of the store")
    p.add_argument("--work", metavar="DIR",
                   help="the work directory that goes with --upper (empty, on the same file system)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="serve in the foreground, logging to the terminal; Ctrl-C unmounts")
    p.add_argument("--engine", choices=_mount.ENGINES, default=_mount.DEFAULT_ENGINE,
                   help="what serves the mount: c (libfuse in C, the default) or pyfuse3 (Python "
                        "handlers); env LAYERFS_ENGINE")
    p.set_defaults(handler=cmd_mount)

    p = sub.add_parser("umount", aliases=["unmount"], formatter_class=fmt,
                       help="unmount a layerfs mount and wait for its daemon to exit",
                       description="""\
Unmount a layerfs mount and wait until its daemon has exited; the image no longer counts as in
use.  Fails with "busy" while a process has a file open or its working directory inside, and
refuses a mount that is not layerfs's.

Only this mount namespace's mount goes.  If another namespace (a container, `unshare --mount`)
still holds a copy of it, the daemon keeps serving that one, and the image stays in use, until
the last copy is gone: umount says so and returns.

examples:
  layerfs umount ./rootfs""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(handler=cmd_umount)

    p = sub.add_parser("mounts", formatter_class=fmt, help="list layerfs mounts",
                       description="""\
List the live layerfs mounts of this user: mount point, what is mounted (image or lowerdir=),
daemon pid and since when.

examples:
  layerfs mounts
  layerfs mounts --format json""")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=cmd_mounts)

    p = sub.add_parser("mount-stats", formatter_class=fmt, help="show a mount's request counts (JSON)",
                       description="""\
Ask the daemon of a mount for its statistics and print them as JSON: requests answered per
FUSE opcode, failed requests per opcode, open files, index size, mount time.  Used by
scripts/bench to show the requests behind each figure.

examples:
  layerfs mount-stats ./rootfs""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(handler=cmd_mount_stats)


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """What ``-o`` asked for: the lowerdir list (top first) or None; setuid bits and devices."""

    lowerdir: list[str] | None = None
    suid: bool = False
    dev: bool = False


def _parse_options(values: list[str]) -> MountOptions:
    """Read ``-o`` values, as mount(8) does: the last of ``suid``/``nosuid`` (``dev``/``nodev``)
    wins; options that change nothing here are accepted, unknown ones ignored with a warning.

    Raises:
        MountError: ``upperdir=`` / ``workdir=`` (writable mounts are not supported yet).
    """
    lower: list[str] | None = None
    flags = {"suid": False, "dev": False}
    for value in values:
        for opt in value.split(","):
            key, _, arg = opt.partition("=")
            if key == "lowerdir":
                lower = _mount.parse_lowerdir(arg)
            elif key in ("upperdir", "workdir"):
                raise MountError(f"-o {key}=: writable mounts are not supported yet")
            elif key in flags:
                flags[key] = True
            elif key in ("nosuid", "nodev"):
                flags[key[2:]] = False
            elif key in ("ro", "rw", "", "noatime", "exec"):
                continue
            else:
                log.warning("mount option %r ignored", opt)
    return MountOptions(lower, suid=flags["suid"], dev=flags["dev"])


def cmd_mount(args: argparse.Namespace) -> int:
    opts = _parse_options(args.options)
    lower = opts.lowerdir
    store = Store(args.root)
    if lower is not None:
        if not lower:
            raise MountError("-o lowerdir=: no directories given")
        if len(args.args) not in (1, 2):
            raise MountError("usage: layerfs mount -o lowerdir=A:B:C MOUNTPOINT")
        source: str | list[str] = lower
        mountpoint = args.args[-1]
    else:
        if len(args.args) != 2:
            raise MountError("usage: layerfs mount IMAGE MOUNTPOINT (or -o lowerdir=A:B MOUNTPOINT)")
        image, mountpoint = args.args
        _ensure_image(store, image)
        if not args.read_only:
            return _mount_container(store, image, mountpoint, args, opts)
        source = image
    _mount.mount(store, source, mountpoint, foreground=args.foreground, debug=args.debug, engine=args.engine,
                 suid=opts.suid, dev=opts.dev)
    return 0


def _mount_container(store: Store, image_name: str, mountpoint: str, args: argparse.Namespace,
                     opts: MountOptions) -> int:
    """A writable mount: of the container ``--name`` names if it exists, else of a new one."""
    if (args.upper is None) != (args.work is None):
        raise MountError("--upper and --work go together")
    image = store.get(image_name)
    existing = _containers.find(store, args.name) if args.name else None
    made = None
    if existing is not None:
        if existing.image_id != image.id:
            raise MountError(f"container {existing.name} belongs to image {existing.image_id[7:19]}, "
                             f"not {image_name}")
        if args.upper or args.rm:
            raise MountError(f"container {existing.name} exists: --upper, --work and --rm apply to new "
                             f"containers only")
        container = existing
    else:
        upper = Path(os.path.abspath(args.upper)) if args.upper else None
        work = Path(os.path.abspath(args.work)) if args.work else None
        if upper is not None and work is not None:
            _upper.check(upper, work)  # before a record names them
        container = made = _containers.create(store, image.id, name=args.name, upper=upper, work=work,
                                              remove_on_umount=args.rm)
    try:
        _mount.mount(store, image_name, mountpoint, foreground=args.foreground, debug=args.debug,
                     engine=args.engine, suid=opts.suid, dev=opts.dev, container=container)
    except BaseException:
        if made is not None:
            with contextlib.suppress(LayerfsError, OSError):
                _containers.remove(store, made.id)
        raise
    if made is not None and not args.foreground:
        print(made.name)
    return 0


def _ensure_image(store: Store, name: str) -> None:
    """Pull ``name`` when the store lacks it, as ``docker run`` does; an image ID never is pulled.

    Raises:
        ImageNotFound: ``name`` is an image ID (``sha256:<hex>``) the store does not hold.
    """
    try:
        store.get(name)
    except ImageNotFound:
        if _IMAGE_ID_RE.fullmatch(name):
            raise  # it would parse as the repository "sha256" on Docker Hub: never what is meant
        from .._transfer.pull import pull  # httpx costs ~50 ms to import: only when needed

        pull(store, name)


def cmd_umount(args: argparse.Namespace) -> int:
    done = _mount.umount(args.mountpoint, store=Store(args.root))
    if done.daemon_stays:
        print(f"layerfs: {done.mountpoint} is unmounted here; its daemon (pid {done.pid}) keeps serving the "
              f"mounts of it in other mount namespaces, and exits with the last of them", file=sys.stderr)
    return 0


def cmd_mounts(args: argparse.Namespace) -> int:
    rows = _mount.mounts()
    if args.format == "json":
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
        return 0
    print(f"{'MOUNTPOINT':<32} {'SOURCE':<32} {'CONTAINER':<20} {'PID':>7}  SINCE")
    for row in rows:
        kind = row.container or ("(upper " + row.upper + ")" if row.upper else "(read-only)")
        print(f"{row.mountpoint:<32} {row.source:<32} {kind:<20} {row.pid:>7}  {row.since}")
    return 0


def cmd_mount_stats(args: argparse.Namespace) -> int:
    stats = _mount.statistics(args.mountpoint)
    json.dump(dataclasses.asdict(stats) | {"total": stats.total}, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0
