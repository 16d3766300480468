"""The POSIX set: named cases of file-system semantics, run inside a writable layerfs mount and,
as the oracle, inside the kernel's overlay of the same lower layers.

Each case is a table row: the objects its directory holds (in the lower layers) and the steps it
runs (tests/_upper.py "Steps": path operations, named file descriptors, time rules).  Every case
runs
  - as root and as an unprivileged user (uid 4242; the kernel checks permissions against the
    mount's attributes: ``default_permissions``; the mount is root's, with ``allow_other``), and
  - on three kinds of objects: **lower** (untouched lower objects), **copied** (the same objects
    copied up first: a chown/chmod to their own values, a metadata-only copy-up in layerfs) and
    **upper** (made through the mount, so only the upper has them).
The expected result of each step is what the kernel overlay does, errno included; nothing is
hard-coded, except the deviations each case documents (``fuse=``), where layerfs is checked
against its documented result and the kernel against not giving it.  After the steps the two
mounts must show the same tree, and the kernel, mounted on layerfs's upper, the same tree again.

A last part mounts as an unprivileged user (fusermount3; ``user.overlay.*`` markers, no
metacopy), runs a smoke set, and mounts that upper with the kernel's ``userxattr`` option.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _trees import assert_same_tree, snapshot
from _upper import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Dir,
    Fifo,
    File,
    HardLink,
    Link,
    Spec,
    Whiteout,
    as_user,
    kernel_overlay,
    layerfs_writable,
    make_layer,
    run_steps_as,
)
from conftest import require, require_fuse, require_root

USER, GROUP = 4242, 4242          # the unprivileged user the cases run as
EXTRA = 4244                      # a supplementary group of USER
OTHER, OTHER_GROUP = 4343, 4343   # another user, owner of objects USER may not change
FOREIGN = 4245                    # a group USER is not in
NOBODY = 65534                    # the user of the unprivileged mount (fusermount3 wants a named user)
USERS = {"root": (0, 0, ()), "user": (USER, GROUP, (EXTRA,))}
VARIANTS = ("lower", "copied", "upper")

Step = tuple[object, ...]
Result = tuple[str, object]


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    ``base``/``top``: the objects of the case's directory in the bottom and the top lower layer
    (``"."`` is the directory itself; by default USER's, mode 0755).  ``fuse``: documented
    deviations, step index (or ``(variant, step index)``) -> layerfs's result.
    ``users``/``variants``: where the case runs.
    """

    name: str
    base: Spec
    steps: list[Step]
    top: Spec = dataclasses.field(default_factory=dict)
    fuse: dict[int | tuple[str, int], Result] = dataclasses.field(default_factory=dict)
    users: tuple[str, ...] = ("root", "user")
    variants: tuple[str, ...] = VARIANTS

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name)[:60]


def me(mode: int = 0o755) -> Dir:
    """The case directory: USER's, so that the unprivileged runs may create in it."""
    return Dir(mode=mode, uid=USER, gid=GROUP)


TICK: Step = ("tick",)
LONG = "n" * 256
MAX = "m" * 255

CASES: list[Case] = [
    # -- creating names: EEXIST --------------------------------------------------------------
    Case("O_CREAT|O_EXCL: a new name, then an existing one", {".": me(), "f": File(b"x", uid=USER)}, [
        ("open", "n", "O_WRONLY|O_CREAT|O_EXCL", "fd"), ("write", "fd", b"new"), ("close", "fd"),
        ("open", "f", "O_WRONLY|O_CREAT|O_EXCL", "fd2"), ("open", "n", "O_RDONLY|O_CREAT|O_EXCL", "fd3"),
        ("cat", "n"), ("cat", "f"), ("stat", "n"), ("listdir", "."),
    ]),
    Case("O_CREAT|O_EXCL on a dangling symlink: EEXIST", {".": me(), "dl": Link("nowhere")}, [
        ("open", "dl", "O_WRONLY|O_CREAT|O_EXCL", "fd"), ("exists", "nowhere"),
        ("open", "dl", "O_WRONLY|O_CREAT", "fd2"), ("close", "fd2"), ("exists", "nowhere"), ("stat", "nowhere"),
    ]),
    Case("mkdir, mknod, symlink, link onto existing names: EEXIST", {
        ".": me(), "f": File(b"x", uid=USER), "d": Dir(uid=USER), "sl": Link("f"), "p": Fifo(uid=USER)}, [
        ("mkdir", "f"), ("mkdir", "d"), ("mkdir", "sl"), ("mkdir", "p"), ("mkfifo", "f"), ("mkfifo", "d"),
        ("symlink", "x", "f"), ("symlink", "x", "d"), ("symlink", "x", "sl"), ("link", "f", "d"),
        ("link", "f", "sl"), ("link", "f", "p"), ("mkdir", "new"), ("stat", "new"), ("mkdir", "new"),
        ("mkdir", "d/.."), ("mkdir", "."),
    ]),
    Case("rename with RENAME_NOREPLACE onto an existing name: EEXIST", {
        ".": me(), "a": File(b"a", uid=USER), "b": File(b"b", uid=USER), "d": Dir(uid=USER)}, [
        ("rename", "a", "b", RENAME_NOREPLACE), ("rename", "a", "d", RENAME_NOREPLACE),
        ("rename", "a", "c", RENAME_NOREPLACE), ("cat", "b"), ("cat", "c"), ("exists", "a"),
        ("rename", "a", "b", RENAME_NOREPLACE | RENAME_EXCHANGE),
    ]),
    # -- ENOENT --------------------------------------------------------------------------------
    Case("ENOENT: missing names, missing parents", {".": me(), "f": File(b"x", uid=USER)}, [
        ("stat", "no"), ("open", "no", "O_RDONLY", "fd"), ("unlink", "no"), ("rmdir", "no"),
        ("rename", "no", "x"), ("link", "no", "x"), ("readlink", "no"), ("chmod", "no", 0o600),
        ("open", "nodir/x", "O_WRONLY|O_CREAT", "fd2"), ("mkdir", "nodir/y"), ("symlink", "t", "nodir/z"),
        ("rename", "f", "nodir/f"), ("link", "f", "nodir/f"), ("listdir", "no"), ("getxattr", "no", "user.x"),
        ("truncate", "no", 0), ("utime", "no", None, None), ("cat", "f"),
    ]),
    Case("ENOENT: a deleted name and one a lower whiteout hides", {
        ".": me(), "f": File(b"x", uid=USER), "gone": File(b"old", uid=USER), "d": Dir(uid=USER),
        "d/c": File(b"c")}, [
        ("unlink", "f"), ("stat", "f"), ("open", "f", "O_RDONLY", "fd"), ("unlink", "f"), ("stat", "gone"),
        ("cat", "gone"), ("unlink", "gone"), ("rmdir", "gone"), ("listdir", "."), ("put", "gone", b"again"),
        ("cat", "gone"), ("put", "f", b"again"), ("cat", "f"), ("stat", "d/c"), ("listdir", "d"),
    ], top={"gone": Whiteout(), "d": Dir(opaque=True, uid=USER)}),
    # -- ENOTEMPTY, EXDEV ----------------------------------------------------------------------
    Case("rmdir: ENOTEMPTY with a lower child, an upper child; empty once deleted", {
        ".": me(), "d": Dir(uid=USER), "d/x": File(b"x", uid=USER), "e": Dir(uid=USER),
        "e/sub": Dir(uid=USER)}, [
        ("rmdir", "d"), ("unlink", "d/x"), ("rmdir", "d"), ("exists", "d"), ("mkdir", "d"), ("listdir", "d"),
        ("mkdir", "n"), ("put", "n/f", b"1"), ("rmdir", "n"), ("unlink", "n/f"), ("rmdir", "n"),
        ("rmdir", "e"), ("rmdir", "e/sub"), ("rmdir", "e"), ("listdir", "."), ("rmdir", "."), ("rmdir", "d/.."),
    ]),
    Case("a directory removed while open: nothing can be made in it", {
        ".": me(), "d": Dir(uid=USER), "e": Dir(uid=USER), "e/x": File(b"x", uid=USER)}, [
        ("open", "d", "O_RDONLY|O_DIRECTORY", "d"), ("rmdir", "d"), ("fstat", "d"),
        ("openat", "d", "n", "O_WRONLY|O_CREAT", "n"), ("mkdirat", "d", "m"), ("exists", "d"),
        ("open", "e", "O_RDONLY|O_DIRECTORY", "e"), ("rmtree", "e"), ("openat", "e", "x", "O_RDONLY", "x"),
        ("openat", "e", "y", "O_WRONLY|O_CREAT", "y"), ("mkdir", "d"), ("listdir", "d"), ("fstat", "e"),
    ]),
    Case("rename a directory over a non-empty one: ENOTEMPTY", {
        ".": me(), "full": Dir(uid=USER), "full/x": File(b"x", uid=USER)}, [
        ("mkdir", "a"), ("rename", "a", "full"), ("mkdir", "b"), ("put", "b/y", b"y"), ("rename", "a", "b"),
        ("unlink", "b/y"), ("rename", "a", "b"), ("listdir", "."), ("unlink", "full/x"), ("rename", "b", "full"),
        ("listdir", "."), ("listdir", "full"),
    ]),
    Case("rename of a lower or merged directory: EXDEV; of an upper one: works", {
        ".": me(), "d": Dir(uid=USER), "d/x": File(b"x", uid=USER), "m": Dir(uid=USER)}, [
        ("rename", "d", "d2"), ("rename", "m", "m2"), ("mkdir", "u"), ("put", "u/f", b"f"), ("rename", "u", "u2"),
        ("listdir", "u2"), ("rename", "u2", "d/u3"), ("listdir", "d"), ("listdir", "."),
    ], top={"m": Dir(uid=USER), "m/t": File(b"t", uid=USER)}),
    # -- EISDIR, ENOTDIR -----------------------------------------------------------------------
    Case("EISDIR: writing, unlinking, truncating a directory; a file over a directory", {
        ".": me(), "d": Dir(uid=USER), "f": File(b"x", uid=USER)}, [
        ("open", "d", "O_WRONLY", "fd"), ("open", "d", "O_RDWR", "fd2"), ("open", "d", "O_RDONLY|O_CREAT", "fd3"),
        ("unlink", "d"), ("truncate", "d", 0), ("rename", "f", "d"), ("link", "d", "d2"), ("cat", "f"),
        ("open", "d", "O_RDONLY", "fd4"), ("read", "fd4", 10), ("close", "fd4"),
    ]),
    Case("ENOTDIR: a file used as a directory", {".": me(), "f": File(b"x", uid=USER), "d": Dir(uid=USER)}, [
        ("rmdir", "f"), ("stat", "f/x"), ("open", "f/x", "O_WRONLY|O_CREAT", "fd"), ("mkdir", "f/x"),
        ("rename", "d", "f"), ("listdir", "f"), ("open", "f", "O_RDONLY|O_DIRECTORY", "fd2"),
        ("rename", "f", "d/"), ("symlink", "t", "f/s"), ("stat", "d"),
    ]),
    # -- ENAMETOOLONG, ELOOP -------------------------------------------------------------------
    Case("ENAMETOOLONG: 256-byte names; 255 bytes work", {".": me(), "f": File(b"x", uid=USER)}, [
        ("open", LONG, "O_WRONLY|O_CREAT", "fd"), ("stat", LONG), ("mkdir", LONG), ("symlink", "f", LONG),
        ("link", "f", LONG), ("rename", "f", LONG), ("mkfifo", LONG), ("unlink", LONG),
        ("put", MAX, b"max"), ("cat", MAX), ("rename", MAX, "f"), ("cat", "f"), ("namemax", "."),
        ("stat", "/".join(["d"] * 2100)), ("symlink", "t" * 4096, "s"),
    ]),
    Case("ELOOP: symlink loops, O_NOFOLLOW", {
        ".": me(), "a": Link("b"), "b": Link("a"), "self": Link("self"), "f": File(b"x", uid=USER),
        "sf": Link("f")}, [
        ("open", "a", "O_RDONLY", "fd"), ("statf", "a"), ("statf", "self"), ("stat", "self"),
        ("open", "sf", "O_RDONLY|O_NOFOLLOW", "fd2"), ("open", "sf", "O_RDONLY", "fd3"), ("read", "fd3", 5),
        ("open", "self/x", "O_RDONLY", "fd4"), ("chmod", "a", 0o644), ("mkdir", "a/x"), ("readlink", "a"),
        ("open", "a", "O_WRONLY|O_CREAT", "fd5"),
    ]),
    # -- permissions: EACCES, EPERM ------------------------------------------------------------
    Case("EACCES: another owner's files and directories", {
        ".": me(), "rd": Dir(mode=0o755), "rd/f": File(b"root's", mode=0o644), "priv": Dir(mode=0o700),
        "priv/f": File(b"secret", mode=0o644), "secret": File(b"s", mode=0o600), "ww": File(b"w", mode=0o666),
        "x": File(b"#!/bin/sh\n", mode=0o644)}, [
        ("open", "rd/f", "O_WRONLY", "fd"), ("open", "rd/f", "O_WRONLY|O_APPEND", "fd2"),
        ("put", "rd/new", b"n"), ("mkdir", "rd/nd"), ("unlink", "rd/f"), ("rename", "rd/f", "moved"),
        ("rename", "secret", "rd/secret"), ("cat", "secret"), ("listdir", "priv"), ("stat", "priv/f"),
        ("cat", "priv/f"), ("truncate", "rd/f", 0), ("access", "x", os.X_OK), ("access", "rd/f", os.W_OK),
        ("access", "rd/f", os.R_OK), ("put", "ww", b"anyone"), ("cat", "ww"), ("symlink", "t", "rd/s"),
        ("link", "ww", "rd/l"), ("setxattr", "rd/f", "user.k", b"v"), ("cat", "rd/f"), ("listdir", "rd"),
    ]),
    Case("EPERM: chown, chmod, utimes, xattrs, devices, links of what is not yours", {
        ".": me(), "mine": File(b"m", uid=USER, gid=GROUP), "theirs": File(b"t", mode=0o644, uid=OTHER,
                                                                          gid=OTHER_GROUP),
        "shared": File(b"s", mode=0o666, uid=OTHER, gid=OTHER_GROUP), "d": Dir(uid=USER)}, [
        ("chown", "mine", OTHER, -1), ("chown", "mine", -1, FOREIGN), ("chown", "mine", -1, EXTRA), ("stat", "mine"),
        ("chmod", "theirs", 0o666), ("chown", "theirs", USER, -1), ("utime", "theirs", 1, 2),
        ("utime", "shared", 1, 2), ("utime", "shared", None, None), ("utime", "theirs", None, None),
        ("setxattr", "mine", "trusted.x", b"1"), ("setxattr", "theirs", "user.x", b"1"),
        ("setxattr", "shared", "user.x", b"1"), ("mknod", "dev", stat.S_IFCHR | 0o600, 1, 3),
        ("link", "theirs", "tl"), ("link", "shared", "sl"), ("link", "mine", "ml"), ("link", "d", "dl"),
        ("stat", "theirs"), ("stat", "mine"),
    ]),
    Case("chmod and search permission of directories", {
        ".": me(), "d": Dir(mode=0o755, uid=USER), "d/f": File(b"f", uid=USER), "r": Dir(mode=0o755),
        "r/f": File(b"r")}, [
        ("chmod", "d", 0o300), ("listdir", "d"), ("cat", "d/f"), ("chmod", "d", 0o600), ("cat", "d/f"),
        ("listdir", "d"), ("chmod", "d", 0o700), ("cat", "d/f"), ("stat", "d"), ("chmod", "r", 0o700),
        ("stat", "r"), ("chmod", "d", 0o2755), ("stat", "d"),
    ]),
    # -- sticky directories --------------------------------------------------------------------
    Case("sticky directory: only the owner of a name (or of the directory) removes it", {
        ".": me(), "tmp": Dir(mode=0o1777), "tmp/mine": File(b"m", uid=USER, gid=GROUP),
        "tmp/theirs": File(b"t", mode=0o666, uid=OTHER, gid=OTHER_GROUP),
        "tmp/their-dir": Dir(mode=0o777, uid=OTHER, gid=OTHER_GROUP),
        "own": Dir(mode=0o1777, uid=USER, gid=GROUP), "own/theirs": File(b"t", mode=0o644, uid=OTHER)}, [
        ("unlink", "tmp/theirs"), ("rename", "tmp/theirs", "tmp/t2"), ("rename", "tmp/mine", "tmp/theirs"),
        ("rmdir", "tmp/their-dir"), ("put", "tmp/theirs", b"written"), ("cat", "tmp/theirs"),
        ("rename", "tmp/mine", "tmp/m2"), ("unlink", "tmp/m2"), ("put", "tmp/new", b"n"), ("unlink", "tmp/new"),
        ("unlink", "own/theirs"), ("listdir", "tmp"), ("listdir", "own"), ("stat", "tmp"),
    ]),
    # -- setuid / setgid -----------------------------------------------------------------------
    Case("setuid and setgid bits cleared by a write, a truncation", {
        ".": me(), "suid": File(b"s" * 10, mode=0o4777), "sgid": File(b"g" * 10, mode=0o2777),
        "sgid-nox": File(b"n" * 10, mode=0o2767), "own-suid": File(b"o" * 10, mode=0o4755, uid=USER),
        "tr": File(b"t" * 10, mode=0o6777), "otr": File(b"t" * 10, mode=0o6777),
        "nox-w": File(b"n", mode=0o2767), "nox-t": File(b"n", mode=0o2767), "nox-c": File(b"n", mode=0o2767, uid=USER),
        "nox-own": File(b"n", mode=0o2766, uid=USER, gid=EXTRA)}, [
        ("open", "suid", "O_WRONLY", "fd1"), ("stat", "suid"), ("write", "fd1", b"x"), ("stat", "suid"),
        ("put", "sgid", b"y"), ("stat", "sgid"), ("put", "sgid-nox", b"z"), ("stat", "sgid-nox"),
        ("open", "own-suid", "O_WRONLY|O_APPEND", "fd2"), ("write", "fd2", b"w"), ("stat", "own-suid"),
        ("truncate", "tr", 3), ("stat", "tr"), ("open", "otr", "O_WRONLY|O_TRUNC", "fd3"), ("stat", "otr"),
        ("open", "nox-w", "O_WRONLY", "fd4"), ("write", "fd4", b"w"), ("stat", "nox-w"), ("truncate", "nox-t", 1),
        ("stat", "nox-t"), ("chown", "nox-c", -1, -1), ("stat", "nox-c"), ("put", "nox-own", b"o"),
        ("stat", "nox-own"),
    ]),
    Case("setuid and setgid bits cleared by chown; kept on directories", {
        ".": me(), "suid": File(b"s", mode=0o4755, uid=USER, gid=GROUP),
        "sgid-x": File(b"g", mode=0o2755, uid=USER, gid=GROUP), "sgid-nox": File(b"n", mode=0o2745, uid=USER,
                                                                                   gid=GROUP),
        "both": File(b"b", mode=0o6755, uid=USER, gid=GROUP), "sgdir": Dir(mode=0o2755, uid=USER, gid=GROUP),
        "rsuid": File(b"r", mode=0o4755)}, [
        ("chown", "suid", -1, EXTRA), ("stat", "suid"), ("chown", "sgid-x", -1, EXTRA), ("stat", "sgid-x"),
        ("chown", "sgid-nox", -1, EXTRA), ("stat", "sgid-nox"), ("chown", "both", -1, -1), ("stat", "both"),
        ("chown", "sgdir", -1, EXTRA), ("stat", "sgdir"), ("chown", "rsuid", 0, 0), ("stat", "rsuid"),
        ("chmod", "suid", 0o2755), ("stat", "suid"),
    ]),
    Case("setgid directory: new objects take its group, directories its bit", {
        ".": me(), "sg": Dir(mode=0o2777, gid=FOREIGN), "plain": Dir(mode=0o777, gid=FOREIGN)}, [
        ("put", "sg/f", b"f"), ("stat", "sg/f"), ("mkdir", "sg/d", 0o755), ("stat", "sg/d"), ("mkfifo", "sg/p"),
        ("stat", "sg/p"), ("symlink", "f", "sg/s"), ("stat", "sg/s"),
        ("open", "sg/x", "O_WRONLY|O_CREAT", "fd", 0o2755), ("stat", "sg/x"), ("put", "plain/f", b"f"),
        ("stat", "plain/f"), ("mkdir", "plain/d"), ("stat", "plain/d"), ("put", "sg/d/deep", b"d"),
        ("stat", "sg/d/deep"),
    ]),
    # -- link counts ---------------------------------------------------------------------------
    Case("link counts of files", {".": me(), "f": File(b"x", uid=USER)}, [
        ("stat", "f"), ("link", "f", "g"), ("stat", "f"), ("stat", "g"), ("link", "g", "h"), ("stat", "f"),
        ("unlink", "f"), ("stat", "g"), ("rename", "g", "h"), ("stat", "h"), ("stat", "g"),
        ("rename", "h", "k"), ("stat", "k"), ("unlink", "k"), ("listdir", "."),
        ("symlink", "target", "s1"), ("mkdir", "sub"), ("link", "s1", "sub/s2"), ("stat", "s1"), ("unlink", "s1"),
        ("readlink", "sub/s2"), ("stat", "sub/s2"), ("mkfifo", "p1"), ("link", "p1", "sub/p2"), ("unlink", "p1"),
        ("stat", "sub/p2"), ("put", "f1", b"1"), ("link", "f1", "sub/f2"), ("unlink", "f1"), ("chmod", "sub/f2", 0o600),
        ("cat", "sub/f2"), ("setxattr", "sub/f2", "user.x", b"1"), ("stat", "sub/f2"), ("rename", "sub/f2", "f3"),
        ("stat", "f3"), ("listdir", "sub"),
    ]),
    Case("link counts of directories", {
        ".": me(), "d": Dir(uid=USER), "d/s1": Dir(uid=USER), "d/s2": Dir(uid=USER), "e": Dir(uid=USER),
        "m": Dir(uid=USER), "m/s": Dir(uid=USER)}, [
        ("stat", "d"), ("stat", "e"), ("stat", "m"), ("mkdir", "e/x"), ("stat", "e"), ("mkdir", "n"), ("stat", "n"),
        ("mkdir", "n/a"), ("mkdir", "n/b"), ("stat", "n"), ("rmdir", "n/a"), ("stat", "n"), ("rmdir", "d/s1"),
        ("stat", "d"), ("stat", "."), ("mkdir", "n/b/c"), ("stat", "n/b"),
    ], top={"m": Dir(uid=USER), "m/t": Dir(uid=USER)}),
    Case("link counts of lower hard links after writes and unlinks", {
        ".": me(), "h1": File(b"linked", uid=USER), "h2": HardLink("h1"), "h3": HardLink("h1"),
        "k1": File(b"k", uid=USER), "k2": HardLink("k1")}, [
        ("stat", "h1"), ("stat", "h2"), ("put", "h2", b"changed"), ("stat", "h1"), ("stat", "h2"), ("stat", "h3"),
        ("cat", "h1"), ("cat", "h3"), ("unlink", "h1"), ("stat", "h3"), ("link", "h3", "h4"), ("stat", "h4"),
        ("stat", "h3"), ("unlink", "k1"), ("stat", "k2"), ("cat", "k2"), ("unlink", "k2"), ("listdir", "."),
    ]),
    Case("rename of hard-linked names", {
        ".": me(), "h1": File(b"linked", uid=USER), "h2": HardLink("h1"), "o": File(b"other", uid=USER)}, [
        ("rename", "h1", "h2"), ("listdir", "."), ("cat", "h1"), ("cat", "h2"), ("link", "o", "o2"),
        ("rename", "o", "o2"), ("listdir", "."), ("stat", "o2"), ("rename", "o2", "h3"), ("stat", "h3"),
        ("rename", "h2", "h3", RENAME_EXCHANGE), ("cat", "h2"), ("cat", "h3"),
    ]),
    # -- open but unlinked ---------------------------------------------------------------------
    Case("open, unlinked, still readable and writable", {".": me(), "f": File(b"0123456789", uid=USER),
                                                         "r": File(b"read only", uid=USER)}, [
        ("open", "f", "O_RDWR", "fd"), ("pwrite", "fd", b"0", 0), ("unlink", "f"), ("stat", "f"), ("fstat", "fd"),
        ("pread", "fd", 20, 0),
        ("pwrite", "fd", b"AB", 2), ("pread", "fd", 20, 0), ("ftruncate", "fd", 4), ("fstat", "fd"),
        ("fchmod", "fd", 0o600), ("fstat", "fd"), ("fsync", "fd"), ("listdir", "."), ("put", "f", b"new"),
        ("pread", "fd", 20, 0), ("cat", "f"), ("flink", "fd", "back"), ("close", "fd"),
        ("open", "r", "O_RDONLY", "fr"), ("unlink", "r"), ("read", "fr", 100), ("fstat", "fr"), ("close", "fr"),
    ]),
    # The kernel overlay copies an unlinked lower file up to its old name, where its whiteout now
    # is, and fails with EEXIST; layerfs copies it to an anonymous upper file (it has no name).
    Case("a lower file unlinked while open, then changed through its fd", {
        ".": me(), "r": File(b"read only", uid=USER)}, [
        ("open", "r", "O_RDONLY", "fr"), ("unlink", "r"), ("fchmod", "fr", 0o600), ("fstat", "fr"),
        ("pread", "fr", 100, 0), ("fchown", "fr", -1, EXTRA), ("fstat", "fr"), ("close", "fr"), ("listdir", "."),
    ], variants=("lower",), fuse={2: ("ok", None), 3: ("ok", ("-rw-------", USER, 0, 9, 0)), 5: ("ok", None),
                                  6: ("ok", ("-rw-------", USER, EXTRA, 9, 0))}),
    Case("a name renamed over an open file", {".": me(), "a": File(b"aaa", uid=USER),
                                              "b": File(b"bbb", uid=USER)}, [
        ("open", "a", "O_RDONLY", "fa"), ("open", "b", "O_RDWR", "fb"), ("rename", "b", "a"), ("read", "fa", 10),
        ("fstat", "fa"), ("pwrite", "fb", b"B", 0), ("cat", "a"), ("fstat", "fb"), ("listdir", "."),
    ]),
    Case("a file read through an fd opened before another fd wrote it", {".": me(),
                                                                        "f": File(b"old data", uid=USER)}, [
        ("open", "f", "O_RDONLY", "r"), ("open", "f", "O_WRONLY", "w"),
        ("pwrite", "w", b"NEW", 0), ("pread", "r", 20, 0), ("close", "w"), ("pread", "r", 20, 0),
    ]),
    # With FUSE_CAP_NO_OPEN_SUPPORT the kernel sends no OPEN: a lower file opened for writing is
    # copied up at its first write or truncation, not at open as on the kernel overlay.  Until then
    # it is the lower file: an open that writes nothing changes nothing (the kernel's copy-up
    # gives the file a new ctime), and unlinked it keeps the lower file's link count.
    Case("opened for writing: copied up at the first write, not at the open", {
        ".": me(), "f": File(b"0123456789", uid=USER), "g": File(b"g", uid=USER)}, [
        ("times", "g", "0"), TICK, ("open", "g", "O_RDWR", "fd"), ("close", "fd"), ("changed", "g", "0"),
        ("open", "f", "O_RDWR", "fd"), ("unlink", "f"), ("fstat", "fd"), ("pwrite", "fd", b"AB", 2),
        ("fstat", "fd"), ("pread", "fd", 20, 0), ("listdir", "."),
    ], variants=("lower",), fuse={4: ("ok", ""), 7: ("ok", ("-rw-r--r--", USER, 0, 10, 1))}),
    # A mapping made before a copy-up maps the lower file on the kernel overlay, and keeps showing
    # the lower data; a FUSE file has one page cache, so on layerfs it shows the new data, as a
    # mapping of any one file does.
    Case("shared mappings: writes reach the file, a reader's mapping sees them", {
        ".": me(), "f": File(b"0123456789" * 500, uid=USER), "g": File(b"g" * 100, uid=USER)}, [
        ("open", "g", "O_RDONLY", "r"), ("mmapread", "r", 10), ("open", "f", "O_RDWR", "fd"),
        ("mmapwrite", "fd", b"MAPPED", 4096), ("pread", "fd", 12, 4094), ("close", "fd"), ("cat", "f"),
        ("open", "g", "O_RDWR", "w"), ("mmapwrite", "w", b"NEW", 0), ("mmapread", "r", 10), ("stat", "g"),
    ], fuse={("lower", 9): ("ok", b"NEWggggggg")}),
    # -- O_APPEND, O_TRUNC, truncation, fallocate -------------------------------------------------
    Case("O_APPEND from two descriptors", {".": me(), "f": File(b"base\n", uid=USER)}, [
        ("open", "f", "O_WRONLY|O_APPEND", "a1"), ("open", "f", "O_WRONLY|O_APPEND", "a2"), ("write", "a1", b"1\n"),
        ("write", "a2", b"2\n"), ("write", "a1", b"3\n"), ("pwrite", "a2", b"4\n", 0), ("cat", "f"),
        ("lseek", "a1", 0, os.SEEK_CUR), ("open", "f", "O_WRONLY", "w"), ("write", "w", b"X"), ("write", "a1", b"5\n"),
        ("cat", "f"), ("stat", "f"),
    ]),
    Case("O_TRUNC, truncate and ftruncate", {".": me(), "f": File(b"f" * 100, uid=USER),
                                             "g": File(b"g" * 100, uid=USER), "h": File(b"h" * 10, uid=USER),
                                             "ro": File(b"r" * 10, uid=USER)}, [
        ("open", "f", "O_WRONLY|O_TRUNC", "fd"), ("fstat", "fd"), ("cat", "f"), ("truncate", "g", 10), ("cat", "g"),
        ("truncate", "g", 5000), ("stat", "g"), ("cat", "g"), ("open", "h", "O_RDWR", "h"), ("ftruncate", "h", 3),
        ("pread", "h", 10, 0), ("ftruncate", "h", 6), ("pread", "h", 10, 0), ("open", "ro", "O_RDONLY|O_TRUNC", "r"),
        ("cat", "ro"), ("truncate", "g", -1),
    ]),
    Case("fallocate: allocate, keep size, punch a hole", {".": me(), "f": File(b"x" * 8192, uid=USER),
                                                          "g": File(b"y" * 100, uid=USER)}, [
        ("open", "f", "O_RDWR", "fd"), ("fallocate", "fd", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096),
        ("pread", "fd", 8, 0), ("pread", "fd", 8, 4096), ("fstat", "fd"), ("open", "g", "O_RDWR", "g"),
        ("fallocate", "g", 0, 0, 10000), ("fstat", "g"), ("fallocate", "g", FALLOC_FL_KEEP_SIZE, 0, 20000),
        ("fstat", "g"), ("cat", "g"), ("open", "g", "O_RDONLY", "gr"), ("fallocate", "gr", 0, 0, 30000),
    ]),
    # -- O_TMPFILE -----------------------------------------------------------------------------
    # libfuse 3.14 has no tmpfile operation: the kernel's FUSE answers EOPNOTSUPP (programs then
    # fall back to a named temporary file), where the kernel overlay (Linux 6.6+) makes one.
    Case("O_TMPFILE", {".": me(), "d": Dir(uid=USER)}, [
        ("open", "d", "O_TMPFILE|O_RDWR", "fd", 0o600), ("listdir", "d"),
    ], fuse={0: ("err", errno.errorcode[errno.EOPNOTSUPP])}),
    # -- xattrs --------------------------------------------------------------------------------
    Case("xattrs of files, directories and symlinks", {
        ".": me(), "f": File(b"x", uid=USER, xattrs={"user.k": b"v"}), "d": Dir(uid=USER, xattrs={"user.dk": b"1"}),
        "s": Link("f", uid=USER)}, [
        ("getxattr", "f", "user.k"), ("listxattr", "f"), ("setxattr", "f", "user.k", b"w", os.XATTR_CREATE),
        ("setxattr", "f", "user.n", b"n", os.XATTR_REPLACE), ("setxattr", "f", "user.n", b"n", os.XATTR_CREATE),
        ("getxattr", "f", "user.n"), ("removexattr", "f", "user.k"), ("removexattr", "f", "user.k"),
        ("getxattr", "f", "user.k"), ("listxattr", "f"), ("getxattr", "d", "user.dk"), ("setxattr", "d", "user.e", b""),
        ("listxattr", "d"), ("removexattr", "d", "user.dk"), ("listxattr", "d"), ("setxattr", "s", "user.s", b"1"),
        ("listxattr", "s"), ("getxattr", "f", "trusted.overlay.opaque"),
        ("setxattr", "d", "trusted.overlay.opaque", b"y"),
        ("setxattr", "f", "user." + "x" * 250, b"1"), ("setxattr", "f", "user." + "x" * 251, b"1"),
        ("getxattr", "d", "trusted.overlay.opaque"), ("listxattr", "d"), ("listdir", "d"),
        ("setxattr", "d", "trusted.overlay.overlay.x", b"2"), ("listxattr", "d"),
        ("removexattr", "d", "trusted.overlay.opaque"), ("listxattr", "d"), ("getxattr", "d", "trusted.overlay.x"),
    ]),
    # The kernel overlay keeps only its own namespace private (trusted.overlay.* on this mount);
    # layerfs also refuses user.overlay.* and user.fuseoverlayfs.*: the markers of unprivileged
    # overlays and of fuse-overlayfs, which an upper of this mount must never carry as data
    # (docs/overlay.rst "Private xattrs").
    Case("the other overlays' private xattrs", {".": me(), "f": File(b"x", uid=USER)}, [
        ("setxattr", "f", "user.overlay.opaque", b"y"), ("getxattr", "f", "user.overlay.opaque"), ("listxattr", "f"),
    ], fuse={0: ("err", "EPERM"), 1: ("err", "ENODATA"), 2: ("ok", [])}),
    # -- symlinks, fifos, devices ---------------------------------------------------------------
    Case("symlinks: readlink, lchown, chmod through, utimes without following", {
        ".": me(), "f": File(b"x", mode=0o644, uid=USER), "s": Link("f", uid=USER), "abs": Link("/etc/passwd")}, [
        ("readlink", "s"), ("readlink", "abs"), ("readlink", "f"), ("lchown", "s", -1, EXTRA), ("stat", "s"),
        ("chmod", "s", 0o600), ("stat", "f"), ("stat", "s"), ("utime", "s", 5 * 10**9, 7 * 10**9), ("stat", "s"),
        ("symlink", "f", "s2"), ("readlink", "s2"), ("cat", "s2"), ("rename", "s2", "s3"), ("readlink", "s3"),
        ("unlink", "s"), ("cat", "f"),
    ]),
    Case("fifos and devices", {".": me(), "p": Fifo(mode=0o666, uid=USER)}, [
        ("stat", "p"), ("open", "p", "O_RDONLY|O_NONBLOCK", "fd"), ("open", "p", "O_WRONLY|O_NONBLOCK", "w"),
        ("write", "w", b"through"), ("read", "fd", 100), ("chmod", "p", 0o600), ("stat", "p"), ("mkfifo", "q", 0o640),
        ("stat", "q"), ("mknod", "null", stat.S_IFCHR | 0o666, 1, 3), ("stat", "null"),
        ("mknod", "sock", stat.S_IFSOCK | 0o644, 0, 0), ("stat", "sock"), ("mknod", "reg", stat.S_IFREG | 0o644, 0, 0),
        ("stat", "reg"), ("rename", "p", "p2"), ("stat", "p2"),
    ]),
    # -- rename --------------------------------------------------------------------------------
    Case("rename of files: over files, onto itself, exchange, into a subdirectory", {
        ".": me(), "a": File(b"a", uid=USER), "b": File(b"b", uid=USER), "d": Dir(uid=USER),
        "d/c": File(b"c", uid=USER), "e": Dir(uid=USER)}, [
        ("rename", "a", "b"), ("cat", "b"), ("exists", "a"), ("rename", "b", "b"), ("cat", "b"),
        ("rename", "b", "d/c", RENAME_EXCHANGE), ("cat", "b"), ("cat", "d/c"), ("rename", "d/c", "e/c"),
        ("listdir", "d"), ("listdir", "e"), ("rename", "b", "d", RENAME_EXCHANGE), ("mkdir", "u"),
        ("rename", "u", "u/sub"), ("rename", "e/c", "b", RENAME_EXCHANGE), ("cat", "b"), ("cat", "e/c"),
        ("rename", "d", "."), ("rename", ".", "x"),
    ]),
    Case("rename onto a lower name makes a directory opaque", {
        ".": me(), "old": Dir(uid=USER), "old/x": File(b"x", uid=USER)}, [
        ("mkdir", "new"), ("put", "new/y", b"y"), ("rmtree", "old"), ("rename", "new", "old"),
        ("listdir", "old"), ("stat", "old"),
    ]),
    # -- times ---------------------------------------------------------------------------------
    Case("times: writes, truncations, metadata changes", {".": me(), "f": File(b"x", uid=USER),
                                                          "g": File(b"g", uid=USER)}, [
        ("times", "f", "0"), TICK, ("put", "f", b"data"), ("changed", "f", "0"), ("times", "f", "1"), TICK,
        ("chmod", "f", 0o600), ("changed", "f", "1"), ("times", "f", "2"), TICK, ("chown", "f", -1, EXTRA),
        ("changed", "f", "2"), ("times", "f", "3"), TICK, ("truncate", "f", 2), ("changed", "f", "3"),
        ("times", "f", "4"), TICK, ("setxattr", "f", "user.t", b"1"), ("changed", "f", "4"), ("times", "f", "5"),
        TICK, ("cat", "f"), ("changed", "f", "5"), ("times", "g", "7"), TICK, ("utime", "g", None, None),
        ("changed", "g", "7"), ("times", "g", "8"), TICK, ("utime", "g", 10**18, 2 * 10**18), ("changed", "g", "8"),
        ("ts", "g"), ("utime", "g", 123_456_789, 987_654_321_123), ("ts", "g"), ("cat", "g"), ("ts", "g"),
        ("put", "g", b"w"), ("times", "g", "9"), ("utime", "g", -1, 0), ("ts", "g"), ("changed", "g", "9"),
    ]),
    Case("times: names change their directory's mtime and ctime", {
        ".": me(), "d": Dir(uid=USER), "d/f": File(b"x", uid=USER), "e": Dir(uid=USER)}, [
        ("times", "d", "0"), TICK, ("put", "d/n", b"n"), ("changed", "d", "0"), ("times", "d", "1"), TICK,
        ("unlink", "d/f"), ("changed", "d", "1"), ("times", "d", "2"), ("times", "e", "2"), ("times", "d/n", "2"), TICK,
        ("rename", "d/n", "e/n"), ("changed", "d", "2"), ("changed", "e", "2"), ("changed", "e/n", "2"),
        ("times", "e", "3"), ("times", "e/n", "3"), TICK, ("link", "e/n", "e/l"), ("changed", "e", "3"),
        ("changed", "e/n", "3"), ("times", "e", "4"), TICK, ("mkdir", "e/sub"), ("changed", "e", "4"),
        ("times", "e", "5"), TICK, ("rmdir", "e/sub"), ("changed", "e", "5"), ("times", "d", "6"), TICK,
        ("listdir", "d"), ("changed", "d", "6"), ("times", "e/n", "7"), TICK, ("unlink", "e/l"),
        ("changed", "e/n", "7"),
    ]),
    # -- listings ------------------------------------------------------------------------------
    Case("listings: d_ino is st_ino, merged names, whiteouts hidden", {
        ".": me(), "d": Dir(uid=USER), "d/a": File(b"a"), "d/b": Dir(), "d/h1": File(b"h"), "d/h2": HardLink("d/h1"),
        "d/w": File(b"w")}, [
        ("dino", "d"), ("put", "d/new", b"n"), ("unlink", "d/a"), ("mkdir", "d/nd"), ("listdir", "d"), ("dino", "d"),
        ("put", "d/h1", b"x"), ("dino", "d"), ("dino", "."), ("listdir", "."),
    ], top={"d": Dir(uid=USER), "d/t": File(b"t"), "d/w": Whiteout()}),
    Case("rm -rf of a directory of 1,800 entries from two layers", {
        ".": me(), "big": Dir(uid=USER), **{f"big/{i:04}": File(b"", uid=USER) for i in range(1200)}}, [
        ("rmtree", "big"), ("exists", "big"), ("listdir", "."),
    ], top={"big": Dir(uid=USER), **{f"big/t{i:04}": File(b"t", uid=USER) for i in range(600)}}, users=("root",)),
]


# ---------------------------------------------------------------------------------------------
# Building the lowers, the upper-only objects, the copied-up objects

def _prefixed(spec: Spec, prefix: str) -> Spec:
    out: Spec = {}
    for rel, what in spec.items():
        if isinstance(what, HardLink):
            what = HardLink(f"{prefix}/{what.to}")
        out[prefix if rel == "." else f"{prefix}/{rel}"] = what
    return out


def _visible(base: Spec, top: Spec) -> Spec:
    """What the merged view of a case shows, as one spec (the objects the upper variant makes)."""
    out: Spec = {}
    for rel, what in base.items():
        hidden = [t for t, w in top.items() if (isinstance(w, Whiteout) or getattr(w, "opaque", False))
                  and rel.startswith(t + "/")]
        if rel in top or hidden:
            continue
        out[rel] = what
    for rel, what in top.items():
        if not isinstance(what, Whiteout):
            out[rel] = dataclasses.replace(what, opaque=False) if isinstance(what, Dir) else what
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != ".", kv[0].count("/"), kv[0])))


def _copy_up(root: Path, spec: Spec) -> None:
    """Copy every object of ``spec`` up through a mount, changing nothing: a chown to its own
    owner (a metadata-only copy-up in layerfs; chown clears setuid bits, so chmod puts them back)."""
    for rel in spec:
        path = root / rel
        st = os.lstat(path)
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))


# ---------------------------------------------------------------------------------------------
# Running the set

@dataclasses.dataclass
class Outcome:
    results: dict[tuple[str, str, str, str], list[Result]]  # (engine, user, variant, slug) -> results
    views: dict[str, object]                                 # engine -> snapshot of the mount
    kernel_on_ours: object                                   # the kernel's view of layerfs's upper
    base: Path


def _case_dir(user: str, variant: str, case: Case) -> str:
    return f"{user}/{variant}/{case.slug}"


@pytest.fixture(scope="module")
def outcome() -> Iterator[Outcome]:
    require_root()
    require_fuse()
    base = Path(tempfile.mkdtemp(prefix="layerfs-posix-"))
    os.chmod(base, 0o755)  # the unprivileged runs must reach the mount points
    try:
        yield _run_all(base)
    finally:
        for mnt in base.glob("*/mnt"):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _run_all(base: Path) -> Outcome:
    base_spec: Spec = {}
    top_spec: Spec = {}
    for case in CASES:
        for user in case.users:
            for variant in ("lower", "copied"):
                if variant in case.variants:
                    prefix = _case_dir(user, variant, case)
                    base_spec.update(_prefixed(case.base, prefix))
                    top_spec.update(_prefixed(case.top, prefix))
    lowers = [make_layer(base / "top", top_spec), make_layer(base / "base", base_spec)]
    for d in ("kernel", "layerfs", "kernel-on-layerfs"):
        for sub in ("upper", "work", "mnt"):
            (base / d / sub).mkdir(parents=True)
    results: dict[tuple[str, str, str, str], list[Result]] = {}
    views: dict[str, object] = {}
    mounts = {"kernel": lambda: kernel_overlay(lowers, base / "kernel/upper", base / "kernel/work",
                                               base / "kernel/mnt", options="noatime"),
              "layerfs": lambda: layerfs_writable(lowers, base / "layerfs/upper", base / "layerfs/work",
                                                  base / "layerfs/mnt")}
    for engine, mounting in mounts.items():
        mnt = base / engine / "mnt"
        with mounting():
            for case in CASES:
                for user in case.users:
                    if "copied" in case.variants:
                        _copy_up(mnt, _prefixed(_visible(case.base, case.top), _case_dir(user, "copied", case)))
                    if "upper" in case.variants:
                        (mnt / user / "upper").mkdir(parents=True, exist_ok=True)
                        make_layer(mnt, _prefixed(_visible(case.base, case.top), _case_dir(user, "upper", case)))
            for user, (uid, gid, groups) in USERS.items():
                todo = [(case, variant) for case in CASES if user in case.users for variant in case.variants]
                got = run_steps_as(uid, gid, groups, [(mnt / _case_dir(user, v, c), c.steps) for c, v in todo])
                for (case, variant), res in zip(todo, got):
                    results[(engine, user, variant, case.slug)] = res
            views[engine] = snapshot(mnt, mtimes=False)
    ours = base / "layerfs"
    with kernel_overlay(lowers, ours / "upper", ours / "work", base / "kernel-on-layerfs/mnt",
                        options="metacopy=on,noatime") as km:
        kernel_on_ours = snapshot(km, mtimes=False)
    return Outcome(results, views, kernel_on_ours, base)


_PARAMS = [pytest.param(case, user, variant, id=f"{user}-{variant}-{case.name}")
           for case in CASES for user in case.users for variant in case.variants]


@pytest.mark.parametrize(("case", "user", "variant"), _PARAMS)
def test_posix_case(case: Case, user: str, variant: str, outcome: Outcome) -> None:
    """Each step gives what the kernel overlay gives (or the documented deviation), and the
    case's directory then looks the same on both."""
    kernel = outcome.results[("kernel", user, variant, case.slug)]
    ours = outcome.results[("layerfs", user, variant, case.slug)]
    problems = []
    for i, (step, k, o) in enumerate(zip(case.steps, kernel, ours)):
        deviation = case.fuse.get(i, case.fuse.get((variant, i)))
        if deviation is not None:
            if o != deviation or k == deviation:
                problems.append(f"step {i} {step[:3]}: documented deviation {deviation}; kernel {k}, layerfs {o}")
        elif k != o:
            problems.append(f"step {i} {step[:3]}: kernel {k}, layerfs {o}")
    assert problems == [], "\n".join(problems)
    prefix = _case_dir(user, variant, case)
    views = [_subtree(outcome.views[e], prefix) for e in ("kernel", "layerfs")]
    assert views[0] == views[1], "\n".join(_tree_diff(views[0], views[1]))


def test_kernel_reads_the_upper_layerfs_wrote(outcome: Outcome) -> None:
    """After the whole set, the kernel overlay on layerfs's upper shows what layerfs showed."""
    assert_same_tree(outcome.kernel_on_ours, outcome.views["layerfs"],  # type: ignore[arg-type]
                     names=("kernel on layerfs's upper", "layerfs"))


def _subtree(tree: object, prefix: str) -> dict[str, object]:
    entries: dict[str, object] = tree.entries  # type: ignore[attr-defined]
    return {k: v for k, v in entries.items() if k == prefix or k.startswith(prefix + "/")}


def _tree_diff(a: dict[str, object], b: dict[str, object]) -> list[str]:
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append(f"{k}: kernel {a.get(k)}, layerfs {b.get(k)}")
    return lines[:30]


# ---------------------------------------------------------------------------------------------
# An unprivileged mount: fusermount3, user.overlay.* markers, no metacopy

SMOKE_BASE: Spec = {
    "f": File(b"lower file\n"), "d": Dir(), "d/x": File(b"x\n"), "d/y": File(b"y\n"), "h1": File(b"h\n"),
    "h2": HardLink("h1"), "s": Link("f"), "gone": File(b"gone\n"), "e": Dir(), "e/old": File(b"old\n"),
}
SMOKE_STEPS: list[Step] = [
    ("put", "new", b"new\n"), ("open", "f", "O_WRONLY|O_APPEND", "fd"), ("write", "fd", b"more\n"), ("close", "fd"),
    ("cat", "f"), ("unlink", "gone"), ("rmtree", "e"), ("mkdir", "e"), ("put", "e/n", b"n"), ("listdir", "e"),
    ("chmod", "d/x", 0o600), ("stat", "d/x"), ("rename", "d/y", "y2"), ("rename", "d", "d2"), ("link", "new", "l"),
    ("stat", "l"), ("symlink", "f", "s2"), ("setxattr", "f", "user.k", b"v"), ("getxattr", "f", "user.k"),
    ("mkfifo", "p"), ("put", "h1", b"changed"), ("cat", "h2"), ("truncate", "f", 3), ("listdir", "."),
    ("open", "f", "O_RDWR", "u"), ("unlink", "f"), ("pread", "u", 10, 0), ("close", "u"),
    ("setxattr", "y2", "user.overlay.nested", b"1"), ("getxattr", "y2", "user.overlay.nested"), ("listxattr", "y2"),
    ("getxattr", "y2", "user.overlay.opaque"), ("setxattr", "e", "user.overlay.opaque", b"y"), ("listxattr", "e"),
]


def test_unprivileged_mount() -> None:
    """A user mounts with fusermount3: the smoke steps give what the kernel overlay gives; the
    upper holds ``user.overlay.*`` markers and no metacopy file, and the kernel mounts it with
    ``userxattr`` showing what layerfs showed."""
    require_root()
    require_fuse()
    require(os.stat("/dev/fuse").st_mode & 0o006 == 0o006, "/dev/fuse usable by every user (mode 0666)")
    base = Path(tempfile.mkdtemp(prefix="layerfs-posix-user-"))
    try:
        os.chmod(base, 0o755)
        lower = make_layer(base / "lower", SMOKE_BASE)
        for sub in ("upper", "work", "mnt", "kupper", "kwork", "kmnt", "k2", "run"):
            (base / sub).mkdir()
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(base)], check=True)
        env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(base / "run"), HOME=str(base))
        code = ("import sys, pickle; sys.path.insert(0, sys.argv[1]); import _upper; "
                "from layerfs._mount import daemon, upper; from pathlib import Path; b = Path(sys.argv[2]); "
                "u = upper.check(b / 'upper', b / 'work'); assert not u.privileged and not u.metacopy; "
                "daemon.mount(None, [str(b / 'lower')], b / 'mnt', engine='c', upper=u); "
                "r = _upper.run_steps(b / 'mnt', pickle.loads(bytes.fromhex(sys.argv[3]))); "
                "v = __import__('_trees').snapshot(b / 'mnt', mtimes=False); daemon.umount(b / 'mnt'); "
                "sys.stdout.buffer.write(pickle.dumps((r, v)))")
        import pickle
        proc = subprocess.run([*as_user(NOBODY, NOBODY), sys.executable, "-c", code, str(Path(__file__).parent),
                               str(base), pickle.dumps(SMOKE_STEPS).hex()], capture_output=True, env=env, timeout=120,
                              cwd="/")
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        ours, our_view = pickle.loads(proc.stdout)
        with kernel_overlay([lower], base / "kupper", base / "kwork", base / "kmnt", options="userxattr") as km:
            kernel = run_steps_as(NOBODY, NOBODY, (), [(km, SMOKE_STEPS)])[0]
            kernel_view = snapshot(km, mtimes=False)
        mismatched = [f"{s}: kernel {k}, layerfs {o}" for s, k, o in zip(SMOKE_STEPS, kernel, ours) if k != o]
        assert mismatched == [], "\n".join(mismatched)
        assert_same_tree(our_view, kernel_view, names=("layerfs (user mount)", "kernel"))
        upper = base / "upper"
        assert os.getxattr(upper / "e", "user.overlay.opaque") == b"y"
        assert stat.S_ISCHR(os.lstat(upper / "gone").st_mode) and os.lstat(upper / "gone").st_rdev == 0
        for p in upper.rglob("*"):
            names = os.listxattr(p, follow_symlinks=False)
            assert not [n for n in names if n.startswith("trusted.")], p
            assert "user.overlay.metacopy" not in names, p
        with kernel_overlay([lower], upper, base / "work", base / "k2", options="userxattr") as km:
            assert_same_tree(snapshot(km, mtimes=False), our_view, names=("kernel (userxattr) on layerfs's upper",
                                                                          "layerfs"))
    finally:
        subprocess.run(["fusermount3", "-uz", str(base / "mnt")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
