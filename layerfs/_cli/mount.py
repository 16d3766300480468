"""Mount commands: ``mount``, ``umount``, ``mounts``, ``mount-stats`` (see ``_mount``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .._errors import ImageNotFound, LayerfsError, MountError
from .._mount import daemon as _mount
from .._mount import idmap as _idmap
from .._mount import upper as _upper

if TYPE_CHECKING:
    from .._store.store import Store

log = logging.getLogger(__name__)

#: An image ID, full or short, as ``images --no-trunc`` and ``inspect`` show it.
_IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{1,64}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("mount", formatter_class=fmt, help="mount an image as a merged, writable tree",
                       usage="""\
layerfs mount [OPTIONS] IMAGE MOUNTPOINT
       layerfs mount -o lowerdir=DIR:DIR[,upperdir=DIR,workdir=DIR] [OPTIONS] MOUNTPOINT""",
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

Drop-in for fuse-overlayfs and the kernel overlay on plain directories: `-o lowerdir=A:B:C`
(top layer first, as overlay takes it; `\\:` escapes a colon) mounts those directories instead
of an image, read-only; with `upperdir=U,workdir=W` too (existing directories on one file
system) the mount is writable: changes go to U in the kernel overlay's own format, so that
`mount -t overlay` with the same options shows the same tree.  Paths are resolved as the kernel
resolves them: relative to the current directory, symbolic links followed.  The lower
directories may hold whiteouts in the kernel's forms (0/0 char devices, overlay.opaque xattrs) or
as OCI `.wh.` files; like overlay's, they must not change while mounted.

The two ways a mount program is called work too, so layerfs can stand in for fuse-overlayfs:
  layerfs -o OPTIONS MOUNTPOINT          fuse-overlayfs's form: podman and buildah run their
                                         storage.conf `mount_program` so (also -f, -d)
  layerfs SOURCE MOUNTPOINT -o OPTIONS   mount.fuse3's form, for mount(8) and /etc/fstab
                                         (SOURCE: `none` with lowerdir=, else the image)
For mount(8), either the type is fuse.layerfs and `layerfs` is in /usr/local/bin or /usr/bin
(mount(8) runs its helpers with that PATH), or the type is fuse and the source names the
program: `/path/to/layerfs#none`.  mount.fuse3 adds suid,dev unless nosuid,nodev are given.

Options (-o, comma-separated; the last of a pair such as suid/nosuid wins):
  lowerdir=, upperdir=, workdir=   the directories, as above
  ro                 read-only, as --read-only; an upper is then mounted as the top lower layer
  rw                 writable: the default of an image, and of lowerdir= with upperdir=;
                     without upperdir= refused (the mount would be read-only, as overlay's),
                     but taken from mount(8), which passes rw to every mount
  userxattr          the upper's markers are user.overlay.*, as with the kernel's userxattr
  metacopy=on|off    chmod, chown, utimes and xattr changes of a lower file copy its metadata
                     only (root; off by default, as in the kernel: `mount -t overlay` then
                     needs metacopy=on as well)
  redirect_dir=on    a directory with lower files can be renamed: the upper records where its
                     lower part is (overlay.redirect), as the kernel's redirect_dir=on does;
                     off (the default): such a rename fails with EXDEV and tools copy instead.
                     Both follow the redirects an upper holds (root; the kernel's default)
  suid, dev          see below (root only)
  allow_other        other users may enter (root's mounts always do; a user's needs the line
                     user_allow_other in /etc/fuse.conf, else it is refused saying so)
  uidmapping=C:H:N[:C:H:N...], gidmapping=C:H:N[:...]
                     ID mappings, as fuse-overlayfs's: an owner C+k on disk (k < N) shows as
                     H+k, and chown and the IDs of a caller creating a file go back; an ID no
                     range holds becomes the overflow ID (65534) either way.  For a mount that
                     a user namespace mapping C to H uses (podman --uidmap); at most 64 ranges
Options that change nothing in a layerfs mount are accepted, and --debug says why each one is
ignored: what podman passes (fsync=0, volatile, an SELinux context= on a host without SELinux),
mount(8)'s (defaults, noatime, nofail, x-*, ...), FUSE's (default_permissions, allow_other
as root, ...) and fuse-overlayfs's (static_nlink, noacl, xino=, timeout=, ...).  Any other
option is refused with a line naming it (noexec, sync, squash_to_uid=, index=on, ...).

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
  layerfs mount -o lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work ./merged
  layerfs -o lowerdir=l/ABC:l/DEF,upperdir=c/diff,workdir=c/work c/merged     as podman runs it
  mount -t fuse -o lowerdir=/l/top:/l/base,nosuid,nodev /opt/layerfs/bin/layerfs#none ./merged
  layerfs mount -o suid,dev debian:12 ./rootfs         as root, for `chroot ./rootfs` to run su""")
    p.add_argument("args", nargs="+", metavar="IMAGE MOUNTPOINT",
                   help="the image and the mount point (one of each); with -o lowerdir= only the "
                        "mount point")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options (above): lowerdir=A:B:C (top first), upperdir=, "
                        "workdir=; suid (the image's setuid bits take effect) and dev (its device nodes "
                        "open host devices), root only, for chroots of trusted images; nosuid, nodev "
                        "are the default; harmless ones are ignored (--debug says why), unknown ones "
                        "refused")
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
    # Set by main.mount_program_argv: layerfs was run as a mount program, not by a person.
    p.add_argument("--called-as", choices=["fuse-overlayfs", "mount.fuse"], default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_mount)

    p = sub.add_parser("umount", aliases=["unmount"], formatter_class=fmt,
                       help="unmount layerfs mounts and wait for their daemons to exit",
                       description="""\
Unmount layerfs mounts and wait until their daemons have exited; their images no longer count
as in use.  Fails with "busy" while a process has a file open or its working directory inside,
and refuses a mount that is not layerfs's.  A dead mount (its daemon gone: `layerfs mounts`
says so) is removed too.  Each MOUNTPOINT is tried, as umount(8) does: the status is 1 if any
failed.

Only this mount namespace's mount goes.  If another namespace (a container, `unshare --mount`)
still holds a copy of it, the daemon keeps serving that one, and the image stays in use, until
the last copy is gone: umount says so and returns.

examples:
  layerfs umount ./rootfs
  layerfs umount ./a ./b""")
    p.add_argument("mountpoints", nargs="+", metavar="MOUNTPOINT")
    p.set_defaults(handler=cmd_umount)

    p = sub.add_parser("mounts", formatter_class=fmt, help="list layerfs mounts",
                       description="""\
List the layerfs mounts of this user: mount point, what is mounted (image or lowerdir=), the
container of a writable mount, daemon pid, since when, and its status: "serving", or "dead"
when its daemon is gone (the mount answers "Transport endpoint is not connected": remove it
with `layerfs umount`).

examples:
  layerfs mounts
  layerfs mounts --format json
  layerfs mounts --format '{{.Mountpoint}} {{.Status}}'     a Go template, as docker's --format""")
    p.add_argument("--format", default="table", metavar="FORMAT",
                   help="table (default), json (one object per line), or a Go template over the fields "
                        + ", ".join(MOUNTS_HEADERS))
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


def plain_args(words: Sequence[str]) -> dict[str, object] | None:
    """The arguments of ``mount`` as :func:`register`'s parser would parse ``words`` (what follows
    the command), for plain calls only, without building the parser (~3 ms, shutil and locale
    included, of a mount program's start: issue 9); None for anything else (then argparse parses
    it, and names what is wrong).

    Plain: ``--called-as FORM`` first or not at all (``main.mount_program_argv`` puts it there),
    one run of positional words and, before or after it, ``-o VALUE``, ``-oVALUE``, ``-f``,
    ``--foreground``, ``--debug``, ``--root DIR``, ``--root=DIR``; no value starts with ``-``,
    no ``--root`` is empty.  ``tests/test_cli_commands.py`` checks that what this returns is what
    the parser returns.
    """
    called_as = None
    if words and words[0] == "--called-as":
        if len(words) < 2 or words[1] not in ("fuse-overlayfs", "mount.fuse"):
            return None
        called_as, words = words[1], words[2:]
    out: dict[str, object] = {
        "args": [], "options": [], "read_only": False, "name": None, "rm": False, "upper": None, "work": None,
        "foreground": False, "engine": _mount.DEFAULT_ENGINE, "called_as": called_as, "handler": cmd_mount}
    options: list[str] = []
    positional: list[str] = []
    debug, run_ended, i = 0, False, 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else "-"
        if not word.startswith("-"):
            if run_ended:
                return None  # a second run of positional words: argparse refuses it
            positional.append(word)
            i += 1
            continue
        run_ended = bool(positional)
        if word in ("-o", "--root") and not value.startswith("-") and (word == "-o" or value):
            if word == "-o":
                options.append(value)
            else:
                out["root"] = value
            i += 2
            continue
        if word.startswith("-o") and len(word) > 2 and word[2] not in "-=":
            options.append(word[2:])
        elif word.startswith("--root=") and len(word) > 7:
            out["root"] = word[7:]
        elif word in ("-f", "--foreground"):
            out["foreground"] = True
        elif word == "--debug":
            debug += 1
        else:
            return None
        i += 1
    if not positional:
        return None
    out["args"], out["options"] = positional, options
    if debug:
        out["debug"] = debug
    return out


class MountOptions(NamedTuple):
    """What ``-o`` asked for (see :func:`_parse_options`)."""

    #: ``lowerdir=``: the plain directories to mount, top first, as given; None for an image mount.
    lowerdir: list[str] | None = None
    #: ``upperdir=`` / ``workdir=``: a writable mount of the ``lowerdir=`` directories.
    upperdir: str | None = None
    workdir: str | None = None
    #: ``ro``: read-only even with an upper (which is then mounted as the top lower layer).
    read_only: bool = False
    #: ``rw``: a writable mount asked for (the last of ``ro``/``rw``).
    read_write: bool = False
    #: ``suid`` / ``dev``: the image's setuid bits and device nodes take effect (root only).
    suid: bool = False
    dev: bool = False
    #: ``userxattr``: the upper's markers are ``user.overlay.*``, as the kernel's option says.
    userxattr: bool = False
    #: ``metacopy=on|off``: metadata-only copy-up; None when not given (then off, as the kernel's default).
    metacopy: bool | None = None
    #: ``redirect_dir=on``: renaming a directory with a lower part writes ``overlay.redirect``
    #: (``off``, the default, answers EXDEV, as the kernel's; both follow the redirects an upper holds).
    redirect_dir: bool = False
    #: ``debug``: as ``--debug``.
    debug: bool = False
    #: ``allow_other``: other users may enter (root's mounts always; a user's where /etc/fuse.conf allows).
    allow_other: bool = False
    #: ``uidmapping=`` / ``gidmapping=``: the owners shown for those on disk (``_mount.idmap``).
    idmap: _idmap.IdMapping = _idmap.IdMapping()
    #: Options accepted that change nothing here, each with why (noted with ``--debug``).
    ignored: tuple[tuple[str, str], ...] = ()


#: Options accepted and ignored, each with why it changes nothing in a layerfs mount (the note
#: ``--debug`` prints).  They come from mount(8), FUSE, the kernel overlay and fuse-overlayfs
#: (its fuse-overlayfs(1)), and from what containers-storage's overlay driver passes to its
#: ``mount_program`` (its ``mountopt`` setting, ``volatile``, ``fsync=0``).
_IGNORED: dict[str, str] = {
    "defaults": "the defaults",
    "exec": "the default", "async": "the default", "nomand": "the default",
    "silent": "no meaning for FUSE", "loud": "no meaning for FUSE",
    "atime": "layerfs mounts are noatime: the layers never change",
    "noatime": "layerfs mounts are noatime: the layers never change",
    "relatime": "layerfs mounts are noatime: the layers never change",
    "strictatime": "layerfs mounts are noatime: the layers never change",
    "diratime": "layerfs mounts are noatime: the layers never change",
    "nodiratime": "layerfs mounts are noatime: the layers never change",
    "default_permissions": "always on: the kernel checks permissions against the attributes",
    "noacl": "ACLs are kept as xattrs and not enforced: that is already the case",
    "volatile": "layerfs passes every fsync on to the upper: safer, never less safe",
    "fsync": "layerfs passes every fsync on to the upper: safer, never less safe",
    "static_nlink": "directories show their real link count",
    "noxattrs": "the upper keeps xattrs where its file system can",
    "timeout": "layerfs's cache policy sets the kernel's timeouts (layerfs/_mount/cache.py)",
    "kernel_cache": "layerfs's cache policy sets the kernel's caching (layerfs/_mount/cache.py)",
    "auto_cache": "layerfs's cache policy sets the kernel's caching (layerfs/_mount/cache.py)",
    "writeback": "layerfs's cache policy sets the kernel's caching (layerfs/_mount/cache.py)",
    "threaded": "the C engine chooses its threads",
    "fast_ino": "inode numbers are layerfs's own, stable and unique in the mount",
    "xino": "inode numbers are layerfs's own, stable and unique in the mount",
    "uuid": "file handles are not exported",
    "fsname": "layerfs names its mounts layerfs:SOURCE",
    "subtype": "layerfs mounts are of type fuse.layerfs",
    "max_read": "the C engine chooses its request sizes",
    "max_write": "the C engine chooses its request sizes",
    "max_readahead": "layerfs's cache policy sets the read-ahead",
    "splice_read": "the C engine chooses splice where it helps",
    "splice_write": "the C engine chooses splice where it helps",
    "splice_move": "the C engine chooses splice where it helps",
    # what mount(8) and mount.fuse3 leave in for helpers
    "user": "for mount(8)", "nouser": "for mount(8)", "users": "for mount(8)", "auto": "for mount(8)",
    "noauto": "for mount(8)", "_netdev": "for mount(8)", "nofail": "for mount(8)",
}

#: Options refused with the reason: asked for, but not (yet) done by layerfs.
_REFUSED: dict[str, str] = {
    "noexec": "not supported yet (programs of the mount can run)",
    "sync": "not supported yet (writes reach the upper as the upper's file system writes them)",
    "dirsync": "not supported yet (writes reach the upper as the upper's file system writes them)",
    "mand": "mandatory locks are not supported",
    "remount": "remounting is not supported: umount and mount again",
    "squash_to_root": "squashing owners is not supported",
    "squash_to_uid": "squashing owners is not supported",
    "squash_to_gid": "squashing owners is not supported",
    "ino32_t": "inode numbers may not fit 32 bits",
    "plugins": "fuse-overlayfs plugins are not supported",
    "nfs_export": "file handles are not exported",
    "index": "overlay's inode index is not supported (copy-up breaks hard links, as with index=off)",
    "allow_root": "not supported (as root the mount is allow_other; a user may ask for allow_other)",
}

#: Values of options that are accepted because they are what layerfs does anyway.
_HARMLESS_VALUES = {
    "redirect_dir": {"off": "layerfs writes no redirects (renaming a lower directory answers EXDEV) and "
                            "follows those an upper holds, as the kernel's default",
                     "follow": "layerfs writes no redirects and follows those an upper holds"},
    "index": {"off": "layerfs keeps no inode index: copy-up breaks hard links, as with index=off"},
    "nfs_export": {"off": "file handles are not exported"},
    "xattr_permissions": {"0": "permissions are the files' own, not kept in xattrs"},
}


def _selinux_enabled() -> bool:
    """Whether the kernel runs SELinux (it mounts selinuxfs at /sys/fs/selinux then)."""
    return os.path.exists("/sys/fs/selinux/enforce")


def _parse_options(values: list[str]) -> MountOptions:
    """Read ``-o`` values as mount(8), the kernel overlay and fuse-overlayfs take them.

    The last of ``suid``/``nosuid`` (``dev``/``nodev``, ``ro``/``rw``, ``metacopy=``) wins.
    Options that change nothing in a layerfs mount are accepted and listed in
    :attr:`MountOptions.ignored` with why (:data:`_IGNORED`).  ``uidmapping=`` / ``gidmapping=``
    are read as fuse-overlayfs reads them (``_mount.idmap.parse``; the last of each wins).  SELinux
    ``context=`` options are ignored on a host without SELinux (no labels to apply).

    Raises:
        MountError: an option layerfs does not know or cannot honour, named with the reason.
    """
    lower: list[str] | None = None
    upper = work = None
    flags = {"suid": False, "dev": False, "ro": False, "rw": False, "userxattr": False, "debug": False,
             "allow_other": False}
    metacopy: bool | None = None
    redirect_dir = False
    idmap = _idmap.IdMapping()
    ignored: list[tuple[str, str]] = []
    for value in values:
        for opt in _mount.split_escaped(value, ",", quotes=True):
            key, eq, arg = opt.partition("=")
            if not opt:
                continue
            if key == "lowerdir" and eq:
                if re.search(r"(?<!\\)::", arg):
                    raise MountError(f"-o lowerdir={arg}: data-only lower layers (::) are not supported")
                lower = _mount.parse_lowerdir(arg)
            elif key == "upperdir" and eq:
                upper = _mount.unescape(arg)
            elif key == "workdir" and eq:
                work = _mount.unescape(arg)
            elif key in ("suid", "dev", "ro", "userxattr", "debug") and not eq:
                flags[key] = True
                if key == "ro":
                    flags["rw"] = False
            elif key in ("nosuid", "nodev") and not eq:
                flags[key[2:]] = False
            elif key == "rw" and not eq:
                flags["ro"] = False
                flags["rw"] = True
            elif key == "metacopy" and arg in ("on", "off"):
                metacopy = arg == "on"
            elif key == "redirect_dir" and arg in ("off", "follow"):
                redirect_dir = False
                ignored.append((opt, _HARMLESS_VALUES[key][arg]))
            elif key == "uidmapping" and eq:
                idmap = idmap._replace(uids=_idmap.parse(key, arg))
            elif key == "gidmapping" and eq:
                idmap = idmap._replace(gids=_idmap.parse(key, arg))
            elif key in ("context", "fscontext", "defcontext", "rootcontext") and eq:
                if _selinux_enabled():
                    raise MountError(f"-o {key}=: SELinux labels are not supported yet")
                ignored.append((opt, "SELinux is not enabled on this host: there is no label to apply"))
            elif arg in _HARMLESS_VALUES.get(key, {}) and eq:
                ignored.append((opt, _HARMLESS_VALUES[key][arg]))
            elif key in _REFUSED:
                raise MountError(f"-o {opt}: {_REFUSED[key]}")
            elif key in _IGNORED or key.startswith("x-"):
                ignored.append((opt, _IGNORED.get(key, "for mount(8) and its helpers")))
            elif key == "allow_other" and not eq:
                if os.geteuid() == 0:
                    ignored.append((opt, "always on for root's mounts"))
                else:
                    flags["allow_other"] = True   # where /etc/fuse.conf allows it (_cache.mount_options)
            elif key == "redirect_dir" and arg == "on":
                redirect_dir = True
            elif key == "redirect_dir" and eq:
                raise MountError(f"-o {opt}: not supported (layerfs follows the redirects an upper holds, as "
                                 f"the kernel does by default; redirect_dir=on writes them)")
            elif key == "xattr_permissions" and eq:
                raise MountError(f"-o {opt}: permissions kept in xattrs are not supported (xattr_permissions=0)")
            else:
                raise MountError(f"-o {opt}: unknown mount option")
    return MountOptions(lower, upper, work, read_only=flags["ro"], read_write=flags["rw"], suid=flags["suid"],
                        dev=flags["dev"], userxattr=flags["userxattr"], metacopy=metacopy,
                        redirect_dir=redirect_dir, debug=flags["debug"], allow_other=flags["allow_other"],
                        idmap=idmap, ignored=tuple(ignored))


def cmd_mount(args: argparse.Namespace) -> int:
    opts = _parse_options(args.options)
    if opts.debug and not args.debug:
        args.debug = True
        logging.getLogger().setLevel(logging.DEBUG)
    for opt, why in opts.ignored:
        log.debug("mount option %r ignored: %s", opt, why)
    lower = opts.lowerdir
    upper: _upper.Upper | None = None
    if opts.read_write and args.read_only:
        raise MountError("--read-only and -o rw: one or the other")
    if lower is not None:
        if not lower:
            raise MountError("-o lowerdir=: no directories given")
        _check_lowerdir_args(args, opts)
        if args.name or args.rm:
            raise MountError("--name, --rm: containers are made of images; with -o lowerdir= the changes go "
                             "to upperdir=")
        opts = opts._replace(read_only=opts.read_only or args.read_only,
                                   upperdir=opts.upperdir or args.upper, workdir=opts.workdir or args.work)
        if opts.read_write and opts.upperdir is None:
            if args.called_as is None:
                raise MountError("-o rw: a -o lowerdir= mount without upperdir= and workdir= is read-only, as the "
                                 "kernel overlay's: give them for a writable mount")
            log.debug("mount option 'rw' ignored: without upperdir= the mount is read-only, as overlay's")
        lower, upper = _lowerdir_stack(lower, opts)
        mountpoint = args.args[-1]
        _mount.mount(None, lower, mountpoint, foreground=args.foreground, debug=args.debug, engine=args.engine,
                     suid=opts.suid, dev=opts.dev, upper=upper, allow_other=opts.allow_other, idmap=opts.idmap)
        return 0
    if opts.upperdir is not None or opts.workdir is not None:
        raise MountError("-o upperdir=, workdir=: only with -o lowerdir= (plain directories)")
    if opts.userxattr or opts.metacopy is not None or opts.redirect_dir:
        raise MountError("-o userxattr, metacopy=, redirect_dir=: only with -o lowerdir= (a container's upper is "
                         "the store's, and commit cannot store a redirect)")
    if len(args.args) != 2:
        raise MountError(f"mount {' '.join(args.args)}: takes one IMAGE and one MOUNTPOINT "
                         f"(or -o lowerdir=A:B MOUNTPOINT), {len(args.args)} given")
    image, mountpoint = args.args
    from .._store.store import Store  # here: a -o lowerdir= mount (a mount program's) uses no store

    store = Store(args.root)
    _ensure_image(store, image)
    if not (args.read_only or opts.read_only):
        return _mount_container(store, image, mountpoint, args, opts)
    _mount.mount(store, image, mountpoint, foreground=args.foreground, debug=args.debug, engine=args.engine,
                 suid=opts.suid, dev=opts.dev, allow_other=opts.allow_other, idmap=opts.idmap)
    return 0


def _check_lowerdir_args(args: argparse.Namespace, opts: MountOptions) -> None:
    """A ``-o lowerdir=`` mount takes the mount point alone; mount.fuse3 passes a source first
    (``none``, or whatever the fstab line names), which is ignored as the kernel overlay ignores
    it.  From a person, an image beside ``lowerdir=`` is a mistake: it would not be mounted.

    Raises:
        MountError: not one mount point (after mount.fuse3's source).
    """
    n = len(args.args)
    if n == 2 and args.called_as != "mount.fuse":
        raise MountError(f"mount {args.args[0]}: -o lowerdir= mounts its directories, not an image: give "
                         f"-o lowerdir= or IMAGE, not both")
    if n not in (1, 2):
        raise MountError(f"mount {' '.join(args.args)}: -o lowerdir= takes one MOUNTPOINT, {n} given")


def _mount_container(store: Store, image_name: str, mountpoint: str, args: argparse.Namespace,
                     opts: MountOptions) -> int:
    """A writable mount: of the container ``--name`` names if it exists, else of a new one."""
    from .._store import containers as _containers

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
                     engine=args.engine, suid=opts.suid, dev=opts.dev, container=container,
                     allow_other=opts.allow_other, idmap=opts.idmap)
    except BaseException:
        if made is not None:
            with contextlib.suppress(LayerfsError, OSError):
                _containers.remove(store, made.id)
        raise
    if made is not None and not args.foreground:
        print(made.name)
    return 0


def _resolve_dir(what: str, path: str) -> str:
    """Resolve a directory of ``-o`` as the kernel resolves a mount option's path: relative to the
    current directory, every symbolic link followed, a ``..`` after a link going to the parent of
    its target (containers-storage passes ``l/ID`` links, and ``l/ID/../diff1``).

    Raises:
        MountError: it does not exist or is not a directory (named as given).
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as err:
        raise MountError(f"{what} {path}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{what} {path}: is not a directory")
    return real


def _lowerdir_stack(lower: list[str], opts: MountOptions) -> tuple[list[str], _upper.Upper | None]:
    """The lower directories (top first, resolved) and the checked upper of a ``-o lowerdir=``
    mount.  With ``ro``, an upper is mounted read-only as the top lower layer, as the kernel
    overlay's ``ro`` leaves the upper unwritten.

    Raises:
        MountError: a directory that cannot be used, or options that do not go together.
    """
    dirs = [_resolve_dir("lowerdir", d) for d in lower]
    if (opts.upperdir is None) != (opts.workdir is None):
        given = "upperdir" if opts.upperdir is not None else "workdir"
        raise MountError(f"-o {given}=: needs both upperdir= and workdir=")
    if opts.upperdir is None or opts.workdir is None:
        return dirs, None
    up = _resolve_dir("upperdir", opts.upperdir)
    work = _resolve_dir("workdir", opts.workdir)
    if opts.read_only:
        return [up, *dirs], None
    if opts.userxattr and opts.metacopy:
        raise MountError("-o userxattr,metacopy=on: metadata-only copy-up needs trusted.* xattrs (as the kernel's)")
    if opts.userxattr and opts.redirect_dir:
        raise MountError("-o userxattr,redirect_dir=on: redirects need trusted.* xattrs (as the kernel's)")
    checked = _upper.check(up, work, metacopy=bool(opts.metacopy), redirect_dir=opts.redirect_dir)
    if opts.userxattr:
        checked = checked._replace(privileged=False, metacopy=False)
    return dirs, checked


def _ensure_image(store: Store, name: str) -> None:
    """Pull ``name`` when the store lacks it, as ``docker run`` does; an image ID never is pulled.

    As ``docker run``, it says ``Unable to find image 'NAME' locally`` on stderr, and the pull's
    progress follows there (stdout is the command's own output).  If the pull fails, the error
    names the local images whose names are close to ``name`` (a typo, or a loaded image
    looked for under a registry's name).

    Raises:
        ImageNotFound: ``name`` is an image ID (``sha256:<hex>``) the store does not hold.
        InvalidReference: ``name`` is no reference.
        LayerfsError: the pull failed (the close local names, if any, are said).
    """
    try:
        store.get(name)
        return
    except ImageNotFound:
        if _IMAGE_ID_RE.fullmatch(name):
            raise  # it would parse as the repository "sha256" on Docker Hub: never what is meant
    from .._oci.reference import parse as parse_reference
    from .._transfer.progress import for_stream
    from .._transfer.pull import pull  # httpx costs ~50 ms to import: only when needed

    ref = parse_reference(name)
    print(f"Unable to find image '{ref.familiar()}' locally", file=sys.stderr, flush=True)
    try:
        pull(store, ref, progress=for_stream(sys.stderr))
    except LayerfsError as err:
        close = _close_names(store, ref.familiar())
        if not close:
            raise
        raise LayerfsError(f"{err}; the store has images with close names: {', '.join(close)}") from err


def _close_names(store: Store, wanted: str) -> list[str]:
    """The names of local images close to ``wanted`` (``repo:tag``, familiar form), closest first:
    other tags of its repository, and names a few characters away (by difflib's ratio, 0.75 or
    more, of the whole name, the repository, or its last component)."""
    import difflib

    def ratio(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a, b).ratio()

    repo = wanted.rpartition(":")[0] or wanted

    def score(name: str) -> float:
        other = name.rpartition(":")[0]
        return max(ratio(wanted, name), ratio(repo, other), ratio(repo.rpartition("/")[2], other.rpartition("/")[2]))

    names = {tag for image in store.images() for tag in image.repo_tags}
    scored = sorted((-score(n), n) for n in names)
    return [n for s, n in scored if -s >= 0.75][:5]


def cmd_umount(args: argparse.Namespace) -> int:
    from .._store.store import Store

    store = Store(args.root)
    status = 0
    for mountpoint in args.mountpoints:
        try:
            done = _mount.umount(mountpoint, store=store)
        except LayerfsError as err:
            print(f"Error: {err}", file=sys.stderr)
            status = 1
            continue
        if done.daemon_stays:
            print(f"layerfs: {done.mountpoint} is unmounted here; its daemon (pid {done.pid}) keeps serving the "
                  f"mounts of it in other mount namespaces, and exits with the last of them", file=sys.stderr)
    return status


#: The fields of a ``mounts`` row for ``--format`` templates, and their column names.
MOUNTS_HEADERS = {"Mountpoint": "MOUNTPOINT", "Source": "SOURCE", "Container": "CONTAINER", "Pid": "PID",
                  "Since": "SINCE", "Status": "STATUS", "ImageID": "IMAGE ID", "Upper": "UPPER"}


def cmd_mounts(args: argparse.Namespace) -> int:
    rows = _mount.mounts()
    if args.format == "json":
        for row in rows:
            print(json.dumps(row._asdict()))
        return 0
    if args.format and args.format.strip() != "table":
        from .template import Row, format_rows

        sys.stdout.write(format_rows(args.format, [
            Row({"Mountpoint": r.mountpoint, "Source": r.source, "Pid": r.pid, "Since": r.since,
                 "Container": r.container or "", "Upper": r.upper or "", "ImageID": r.image_id or "",
                 "Status": "serving" if r.alive else "dead"}) for r in rows], MOUNTS_HEADERS, ""))
        return 0
    table = [["MOUNTPOINT", "SOURCE", "CONTAINER", "PID", "SINCE", "STATUS"]]
    for row in rows:
        kind = row.container or ("(upper " + row.upper + ")" if row.upper else "(read-only)")
        table.append([row.mountpoint, row.source, kind, str(row.pid), row.since, "serving" if row.alive else "dead"])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def cmd_mount_stats(args: argparse.Namespace) -> int:
    stats = _mount.statistics(args.mountpoint)
    json.dump(stats._asdict() | {"total": stats.total}, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0
