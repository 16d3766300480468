"""The workloads, exactly as docs/peers.rst "Workloads" defines them (paths relative to the mount root).

Each workload is a timed function of the tree's root (plus, for write workloads, an untimed
``prepare`` on a fresh writable mount).  The timed part covers the workload only: not mount,
unmount or setup.  ``chmod-big`` is not in the baseline (docs/peers.rst "Workloads"): the issue asks
for it (chmod of a 1 GiB lower file, which copies the whole file up on the kernel overlay and
fuse-overlayfs).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._image import Image
from ._util import BenchError


@dataclass
class Ctx:
    image: Image
    quick: bool

    @property
    def creates(self) -> int:
        return 2000 if self.quick else 10000

    @property
    def preads(self) -> int:
        return 20000


Result = dict[str, int]


@dataclass
class Workload:
    key: str
    title: str
    kind: str                                   # "mount" | "read" | "write"
    modes: tuple[str, ...]                      # "cold" and/or "warm"
    timed: Callable[[Path, Ctx], Result]
    #: untimed, on the fresh writable tree (write workloads); native gets ``native=True``
    prepare: Callable[[Path, Ctx, bool], None] | None = None
    #: the timed part on the plain dir when it differs (the physical floor)
    timed_native: Callable[[Path, Ctx], Result] | None = None
    #: "bytes" or "ops": the result key to show as a rate
    rate: str | None = None
    #: True for workloads that the peers' table does not have
    extra: bool = False
    notes: list[str] = field(default_factory=list)


def _sh(cmd: str, root: Path) -> str:
    r = subprocess.run(["sh", "-c", cmd], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise BenchError(f"`{cmd}` in {root}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[:200]}")
    return r.stdout.decode().strip()


# -- read workloads -------------------------------------------------------------------------------

def find(root: Path, ctx: Ctx) -> Result:
    return {"entries": int(_sh("find . -xdev | wc -l", root))}


def walk_lstat(root: Path, ctx: Ctx) -> Result:
    """Iterative ``os.scandir`` from the root, ``os.lstat(entry.path)`` on every entry."""
    n = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                os.lstat(entry.path)
                n += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return {"entries": n}


def tar(root: Path, ctx: Ctx) -> Result:
    return {"bytes": int(_sh("tar -cf - --exclude=./bench . | wc -c", root))}


def seq_read(root: Path, ctx: Ctx) -> Result:
    buf = bytearray(1 << 20)
    n = 0
    with open(root / "bench/big.bin", "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                break
            n += got
    return {"bytes": n}


def random_preads(root: Path, ctx: Ctx) -> Result:
    rng = random.Random(4242)
    fd = os.open(root / "bench/big.bin", os.O_RDONLY)
    try:
        blocks = os.fstat(fd).st_size // 4096
        for _ in range(ctx.preads):
            os.pread(fd, 4096, rng.randrange(blocks) * 4096)
    finally:
        os.close(fd)
    return {"ops": ctx.preads}


def cat_small(root: Path, ctx: Ctx) -> Result:
    _sh(f"xargs -0 -a {ctx.image.catlist} cat > /dev/null", root)
    return {"files": int(ctx.image.info["cat_files"])}  # type: ignore[call-overload]


# -- write workloads (fresh writable mount every run) ---------------------------------------------

def _copy_from_flat(ctx: Ctx, rel: str, dest_root: Path) -> None:
    src, dest = ctx.image.flat / rel, dest_root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    else:
        shutil.copy2(src, dest)


def copyup_prepare_warm(root: Path, ctx: Ctx, native: bool) -> None:
    """"warm" = the file was read through the mount first."""
    with open((ctx.image.flat if native else root) / "bench/copyup.bin", "rb") as f:
        while f.read(1 << 20):
            pass


def copyup(root: Path, ctx: Ctx) -> Result:
    with open(root / "bench/copyup.bin", "ab") as f:
        f.write(b"x")
    return {}


def copyup_native(root: Path, ctx: Ctx) -> Result:
    """The physical floor: copy the file, then append 1 byte."""
    (root / "bench").mkdir(exist_ok=True)
    shutil.copyfile(ctx.image.flat / "bench/copyup.bin", root / "bench/copyup.bin")
    return copyup(root, ctx)


def create(root: Path, ctx: Ctx) -> Result:
    d = root / "bench-create"
    d.mkdir()
    data = b"x" * 99 + b"\n"
    for i in range(ctx.creates):
        fd = os.open(d / f"f{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    return {"ops": ctx.creates}


RM_DIR = "usr/lib/python3.11"


def rm_prepare(root: Path, ctx: Ctx, native: bool) -> None:
    if native:
        _copy_from_flat(ctx, RM_DIR, root)
    _sh(f"find {RM_DIR} | wc -l", root)  # the warm-up


def rm_rf(root: Path, ctx: Ctx) -> Result:
    _sh(f"rm -rf -- {RM_DIR}", root)
    return {}


def chmod_big(root: Path, ctx: Ctx) -> Result:
    os.chmod(root / "bench/big.bin", 0o600)
    return {}


def chmod_big_native(root: Path, ctx: Ctx) -> Result:
    """The physical floor of a copy-up on chmod: copy the file, then chmod it."""
    (root / "bench").mkdir(exist_ok=True)
    shutil.copyfile(ctx.image.flat / "bench/big.bin", root / "bench/big.bin")
    return chmod_big(root, ctx)


def mount_stat(root: Path, ctx: Ctx) -> Result:  # the mount itself is timed by the runner
    os.stat(root)
    return {}


WORKLOADS: list[Workload] = [
    Workload("mount", "mount", "mount", ("warm",), mount_stat),
    Workload("find", "find", "read", ("cold", "warm"), find),
    Workload("walk", "os.walk + lstat", "read", ("cold", "warm"), walk_lstat),
    Workload("tar", "tar", "read", ("cold", "warm"), tar, rate="bytes"),
    Workload("seq-read", "seq read", "read", ("cold", "warm"), seq_read, rate="bytes"),
    Workload("random-preads", "random preads", "read", ("cold", "warm"), random_preads, rate="ops"),
    Workload("cat-small", "cat small files", "read", ("cold", "warm"), cat_small),
    Workload("copy-up", "copy-up", "write", ("cold", "warm"), copyup, rate=None,
             timed_native=copyup_native),
    Workload("create", "create 10k files", "write", ("warm",), create),
    Workload("rm-rf", "rm -rf lower dir", "write", ("warm",), rm_rf, prepare=rm_prepare),
    Workload("chmod-big", "chmod 1 GiB lower file", "write", ("warm",), chmod_big, timed_native=chmod_big_native,
             extra=True),
]
BY_KEY = {w.key: w for w in WORKLOADS}

#: --quick: a subset that runs in seconds on the quick image
QUICK = {"mount": ("warm",), "find": ("cold", "warm"), "walk": ("warm",), "tar": ("warm",),
         "seq-read": ("warm",), "random-preads": ("warm",), "cat-small": ("cold",),
         "copy-up": ("warm",), "create": ("warm",), "rm-rf": ("warm",)}


def prepare_for(w: Workload, mode: str) -> Callable[[Path, Ctx, bool], None] | None:
    if w.key == "copy-up" and mode == "warm":
        return copyup_prepare_warm
    return w.prepare
