"""The benchmark images: built once, cached outside the repository, keyed by a recipe version.

Two recipes share one pipeline:

- ``full`` (docs/peers.rst "The bench image"): L1 ``debootstrap --variant=minbase
  bookworm`` (device nodes, apt lists and caches, host files removed); L2 ``/bench/big.bin`` (1 GiB)
  and ``/bench/copyup.bin`` (200 MiB) of deterministic pseudo-random data plus ``SHA256SUMS``; L3
  ``apt-get install --no-install-recommends python3 perl git vim-tiny ca-certificates
  linux-headers-amd64`` in a chroot; L4 deletions (whiteouts) and modifications (appends, a chmod of
  ``cc1``); L5 ``/usr/share/locale`` replaced by an opaque directory, and ``/etc/bench-release``.
- ``quick``: the same shape, generated in Python in a few seconds (a few thousand small files,
  ``big.bin`` of 32 MiB), for the smoke test.

Each layer after the first is made as the upper dir of a kernel overlay mount over the layers
below it, so the diff is exactly what the kernel records (0/0 whiteouts, ``trusted.overlay.opaque``
dirs, whole copied-up files).  The uppers are then turned into OCI layer tars (``.wh.`` markers,
GNU tar ``--format=pax --xattrs --numeric-owner --sort=name``), assembled into an OCI layout with
``umoci new`` / ``umoci raw add-layer``, pushed to the local registry with ``skopeo copy``,
extracted back into overlay-form layer dirs named by diff ID (the dirs every peer mounts), and
flattened with ``umoci unpack`` (the plain directory).

Every stage leaves a stamp, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._registry import Registry
from ._util import Janitor, log, run, timer

#: Bump a recipe's version whenever what it builds changes: the cache key.
RECIPES = {"full": 1, "quick": 1}
#: Bump when the layer dirs' form changes: they are extracted again from the OCI blobs.
LAYERS_VERSION = 2
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
APT_PACKAGES = ["python3", "perl", "git", "vim-tiny", "ca-certificates", "linux-headers-amd64"]
TAR_CREATE = ["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name"]
TAR_EXTRACT = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-permissions"]
OPAQUE = "trusted.overlay.opaque"
WH = ".wh."
WH_OPQ = ".wh..wh..opq"


@dataclass
class Image:
    """A built image: what every system mounts, and where the registry serves it."""

    recipe: str
    dir: Path
    diff_ids: list[str] = field(default_factory=list)     # bottom layer first
    layers: list[Path] = field(default_factory=list)      # overlay-form dirs, bottom first
    info: dict[str, object] = field(default_factory=dict)

    @property
    def oci(self) -> Path:
        return self.dir / "oci"

    @property
    def flat(self) -> Path:
        return self.dir / "flat" / "rootfs"

    @property
    def catlist(self) -> Path:
        return self.dir / "catlist"

    @property
    def repo(self) -> str:
        return f"bench/{self.recipe}"

    @property
    def tag(self) -> str:
        return f"v{RECIPES[self.recipe]}"

    def lowerdir(self) -> str:
        """``lowerdir=`` value: topmost layer first, as the kernel and fuse-overlayfs take it."""
        return ":".join(str(p) for p in reversed(self.layers))


# -- overlay form <-> OCI form --------------------------------------------------------------------

def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def upper_to_oci(root: Path) -> None:
    """Turn an overlay upper dir into OCI layer form, in place.

    0/0 char devices become ``.wh.NAME`` files, ``trusted.overlay.opaque=y`` dirs get a
    ``.wh..wh..opq`` marker, and every other ``trusted.overlay.*`` xattr (origin, impure) goes.
    """
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        for name in filenames + [""]:  # each dir is handled when walked itself
            p = d / name if name else d
            try:
                names = os.listxattr(p, follow_symlinks=False)
            except OSError:
                names = []
            for x in names:
                if x.startswith("trusted.overlay."):
                    if x == OPAQUE and name == "" and os.getxattr(p, x, follow_symlinks=False) == b"y":
                        (d / WH_OPQ).touch()
                    os.removexattr(p, x, follow_symlinks=False)
        for name in filenames:
            p = d / name
            if _is_whiteout(p.lstat()):
                p.unlink()
                (d / (WH + name)).touch()


def oci_to_overlay(root: Path) -> int:
    """Turn an extracted OCI layer into overlay form, in place; returns the markers converted.

    ``.wh.X`` becomes a 0/0 char device ``X`` and ``.wh..wh..opq`` becomes
    ``trusted.overlay.opaque=y`` on its dir (docs/peers.rst "The bench image";
    docs/overlay.rst "Whiteouts and opaque directories").
    """
    count = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        markers = [n for n in filenames if n.startswith(WH)]
        if not markers:
            continue
        st = d.stat()  # the dir's times as the tar set them: restored below
        for name in markers:
            (d / name).unlink()
            count += 1
            if name == WH_OPQ:
                os.setxattr(d, OPAQUE, b"y")
            elif name.startswith(WH + WH):
                pass  # AUFS metadata (.wh..wh.plnk …): ignored, as moby does
            else:
                target = d / name[len(WH):]
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    return count


def extract_layer(blob: Path, dest: Path) -> None:
    """Extract one layer blob (tar, gzip-compressed or not) with GNU tar, then to overlay form."""
    dest.mkdir(parents=True)
    with open(blob, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    run([*TAR_EXTRACT, *(["-z"] if gz else []), "-xf", blob, "-C", dest])
    oci_to_overlay(dest)


# -- building uppers ------------------------------------------------------------------------------

class OverlayBuild:
    """Kernel overlay over ``lowers`` (bottom first) with a fresh upper: changes made in
    ``merged`` become the next layer's upper dir."""

    def __init__(self, lowers: list[Path], upper: Path, janitor: Janitor) -> None:
        self.lowers, self.upper, self.janitor = lowers, upper, janitor
        self.work = upper.parent / (upper.name + ".work")
        self.merged = upper.parent / (upper.name + ".merged")
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> Path:
        for p in (self.upper, self.work, self.merged):
            if p.exists():
                shutil.rmtree(p)
            p.mkdir(parents=True)
        lower = ":".join(str(p) for p in reversed(self.lowers))
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={self.upper},workdir={self.work}", self.merged])
        self._undo.append(self.janitor.mount(self.merged))
        return self.merged

    def bind(self, src: str, rel: str, fstype: str | None = None) -> None:
        """Mount ``src`` at ``merged/rel`` for the chroot (never recorded in the upper)."""
        target = self.merged / rel
        target.mkdir(parents=True, exist_ok=True)
        if fstype:
            run(["mount", "-t", fstype, src, target])
        else:
            run(["mount", "--bind", src, target])
        self._undo.append(self.janitor.mount(target))

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self.janitor.done(self._undo.pop())
        shutil.rmtree(self.work, ignore_errors=True)
        if self.merged.exists() and not os.listdir(self.merged):
            self.merged.rmdir()


def _write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def _bench_files(upper: Path, big: int, copyup: int) -> None:
    bench = upper / "bench"
    _write_random(bench / "big.bin", big, 1)
    _write_random(bench / "copyup.bin", copyup, 2)
    sums = []
    for name in ("big.bin", "copyup.bin"):
        h = hashlib.sha256()
        with open(bench / name, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        sums.append(f"{h.hexdigest()}  {name}\n")
    (bench / "SHA256SUMS").write_text("".join(sums))


def _rm(merged: Path, *patterns: str) -> int:
    n = 0
    for pat in patterns:
        for p in sorted(glob.glob(str(merged / pat))):
            if not os.path.lexists(p):  # already gone through another spelling (5.36 -> 5.36.0)
                continue
            n += 1
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
    return n


def _append(path: Path, data: bytes) -> None:
    if path.exists():
        with open(path, "ab") as f:
            f.write(data)


def _deletions_and_modifications(merged: Path) -> None:
    """Layer 4 of both recipes: whiteouts of trees and single files, appends, chmods."""
    _rm(merged, "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/lintian/*",
        "usr/share/perl/5.*/unicore/lib/*", "usr/share/perl/5.*/pod",
        "usr/bin/perlbug", "etc/cron.daily/*", "usr/share/common-licenses/GPL-1",
        "var/log/*.log", "var/cache/debconf/*-old")
    for rel in glob.glob(str(merged / "usr/bin/python3.*")):
        if not os.path.islink(rel):
            _append(Path(rel), b"\n# bench: appended\n")
    _append(merged / "etc/ssl/certs/ca-certificates.crt", b"\n")
    _append(merged / "var/lib/dpkg/status", b"\n")
    for rel in glob.glob(str(merged / "usr/lib/gcc/x86_64-linux-gnu/*/cc1")) + [str(merged / "usr/bin/perlthanks")]:
        if os.path.isfile(rel):
            os.chmod(rel, 0o750)  # copies the whole file up


def _opaque_locale(merged: Path) -> None:
    """Layer 5: ``/usr/share/locale`` replaced by an opaque dir, and ``/etc/bench-release``."""
    loc = merged / "usr/share/locale"
    _rm(merged, "usr/share/locale")
    (loc / "C.UTF-8" / "LC_MESSAGES").mkdir(parents=True)
    (loc / "locale.alias").write_text("# bench: the only locale left\nC C.UTF-8\n")
    (merged / "etc/bench-release").write_text("layerfs bench image\n")


# -- the full recipe ------------------------------------------------------------------------------

def _debootstrap(dest: Path) -> None:
    tmp = dest.parent / (dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    log(f"image: debootstrap --variant=minbase {SUITE} (a few minutes)")
    run(["debootstrap", "--variant=minbase", SUITE, tmp, MIRROR], timeout=3600)
    os.rename(tmp, dest)


def _clean_base(root: Path) -> None:
    """Remove what a base image does not ship: device nodes, apt lists and caches, host files."""
    for sub in ("dev", "var/lib/apt/lists", "var/cache/apt", "run", "tmp", "proc", "sys"):
        d = root / sub
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for f in ("etc/hostname", "etc/resolv.conf", "etc/hosts", "var/log/bootstrap.log",
              "var/cache/ldconfig/aux-cache"):
        p = root / f
        if p.is_file() or p.is_symlink():
            p.unlink()


def _apt_install(build: OverlayBuild, merged: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C", "HOME": "/root"}
    shutil.copy("/etc/resolv.conf", merged / "etc/resolv.conf")
    policy = merged / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    build.bind("proc", "proc", fstype="proc")
    build.bind("/dev", "dev")
    log("image: apt-get install in the chroot (a few minutes)")
    run(["chroot", merged, "apt-get", "update", "-q"], env=env, timeout=1800)
    run(["chroot", merged, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
        env=env, timeout=3600)
    run(["chroot", merged, "apt-get", "clean"], env=env)
    # unmount proc and dev before cleaning, then drop what only the build needed
    while len(build._undo) > 1:
        build.janitor.done(build._undo.pop())
    policy.unlink()
    (merged / "etc/resolv.conf").unlink()
    _rm(merged, "var/lib/apt/lists/*_*", "var/cache/apt/*.bin", "var/cache/ldconfig/aux-cache")


def _build_uppers(build_dir: Path, janitor: Janitor, first: Callable[[Path], None] | None,
                  steps: list[tuple[str, Callable[[OverlayBuild, Path], None]]]) -> list[Path]:
    """u1 made by ``first`` (a plain dir), each later upper by one overlay step."""
    uppers = [build_dir / "u1"]
    if not (build_dir / "u1.done").exists():
        if uppers[0].exists():
            shutil.rmtree(uppers[0])
        assert first is not None
        first(uppers[0])
        (build_dir / "u1.done").touch()
    for i, (what, fn) in enumerate(steps, start=2):
        upper = build_dir / f"u{i}"
        uppers.append(upper)
        if (build_dir / f"u{i}.done").exists():
            continue
        log(f"image: layer {i}: {what}")
        if what.startswith("plain:"):
            if upper.exists():
                shutil.rmtree(upper)
            upper.mkdir()
            fn(None, upper)  # type: ignore[arg-type]
        else:
            b = OverlayBuild(uppers[:-1], upper, janitor)
            with b as merged:
                fn(b, merged)
        (build_dir / f"u{i}.done").touch()
    return uppers


def _full_base(dest: Path) -> None:
    raw = dest.parent / "debootstrap"
    if not raw.is_dir():
        _debootstrap(raw)
    run(["cp", "-a", raw, dest])
    _clean_base(dest)


FULL_STEPS: list[tuple[str, Callable[[OverlayBuild, Path], None]]] = [
    ("plain: /bench/big.bin (1 GiB), /bench/copyup.bin (200 MiB)",
     lambda b, m: _bench_files(m, 1 << 30, 200 << 20)),
    ("apt-get install " + " ".join(APT_PACKAGES), _apt_install),
    ("deletions and modifications", lambda b, m: _deletions_and_modifications(m)),
    ("opaque /usr/share/locale", lambda b, m: _opaque_locale(m)),
]


# -- the quick recipe -----------------------------------------------------------------------------

def _small_tree(root: Path, rng: random.Random, dirs: dict[str, int], big: dict[str, int]) -> None:
    for d, n in dirs.items():
        for i in range(n):
            p = root / d.format(i=i // 40) / f"f{i:05d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rng.randbytes(rng.choice((1, 100, 700, 2000, 5000, 12000, 40000))))
    for rel, size in big.items():
        _write_random(root / rel, size, rng.randrange(1 << 30))


def _quick_base(root: Path) -> None:
    rng = random.Random(7)
    root.mkdir()
    _small_tree(root, rng, {"usr/share/doc/pkg{i}": 600, "usr/share/man/man{i}": 200,
                            "usr/share/locale/l{i}/LC_MESSAGES": 120, "etc/conf{i}": 80,
                            "usr/lib/python3.11/mod{i}": 900},
                {"usr/bin/perl": 2 << 20, "usr/bin/python3.11": 3 << 20})
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: base\n" * 200)
    (root / "etc/ssl/certs").mkdir(parents=True)
    (root / "etc/ssl/certs/ca-certificates.crt").write_text("CERT\n" * 500)
    os.symlink("perl", root / "usr/bin/perl5")
    os.link(root / "usr/bin/perl", root / "usr/bin/perlthanks")
    os.link(root / "usr/bin/perl", root / "usr/bin/perlbug")
    for d in ("tmp", "root", "home", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


def _quick_install(b: OverlayBuild, merged: Path) -> None:
    rng = random.Random(8)
    _small_tree(merged, rng, {"usr/lib/x86_64-linux-gnu/perl/m{i}": 400, "usr/share/perl/5.36/unicore/lib/p{i}": 300},
                {"usr/lib/gcc/x86_64-linux-gnu/12/cc1": 4 << 20, "usr/lib/libbig.so": 2 << 20})
    _append(merged / "var/lib/dpkg/status", b"Package: installed\n" * 100)


QUICK_STEPS: list[tuple[str, Callable[[OverlayBuild, Path], None]]] = [
    ("plain: /bench/big.bin (32 MiB), /bench/copyup.bin (8 MiB)",
     lambda b, m: _bench_files(m, 32 << 20, 8 << 20)),
    ("generated install", _quick_install),
    ("deletions and modifications", lambda b, m: _deletions_and_modifications(m)),
    ("opaque /usr/share/locale", lambda b, m: _opaque_locale(m)),
]


# -- assembling -----------------------------------------------------------------------------------

def _count(root: Path) -> tuple[int, int]:
    """(entries counted as `find .` does, apparent bytes of regular files)."""
    n, size = 1, 0
    for dirpath, dirnames, filenames in os.walk(root):
        n += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return n, size


def _catlist(flat: Path, dest: Path) -> int:
    """The "cat small files" workload (docs/peers.rst "Workloads"): regular files of 1 B–16 KiB
    outside /bench, sorted as ``./path`` strings; every 7th, the first 2,000; NUL-separated."""
    files = []
    for dirpath, _dirnames, filenames in os.walk(flat):
        rel = os.path.relpath(dirpath, flat)
        if rel == "bench" or rel.startswith("bench/"):
            continue
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and 1 <= st.st_size <= 16384:
                files.append("./" + os.path.normpath(os.path.join(rel, name)))
    files.sort()
    chosen = files[::7][:2000]
    dest.write_bytes(b"".join(os.fsencode(f) + b"\0" for f in chosen))
    return len(chosen)


def _oci_diff_ids(oci: Path, tag: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(diff IDs, [(layer blob digest, size)]) of ``oci:tag``, bottom first."""
    index = json.loads((oci / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)

    def blob(digest: str) -> Path:
        algo, hexd = digest.split(":")
        return oci / "blobs" / algo / hexd

    manifest = json.loads(blob(desc["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    return config["rootfs"]["diff_ids"], [(lay["digest"], lay["size"]) for lay in manifest["layers"]]


def build(recipe: str, cache: Path, janitor: Janitor, registry: Registry) -> Image:
    """Build (or find in ``cache``) the image of ``recipe`` and make sure ``registry`` serves it."""
    img = Image(recipe, cache / f"{recipe}-v{RECIPES[recipe]}")
    img.dir.mkdir(parents=True, exist_ok=True)
    stamp = img.dir / "image.json"
    if not stamp.exists():
        with timer() as t:
            _build(img, janitor)
        log(f"image: {recipe} built in {t[0]:.0f} s")
    img.info = json.loads(stamp.read_text())
    img.diff_ids = list(img.info["diff_ids"])  # type: ignore[call-overload]
    if not all((img.dir / f"layers-v{LAYERS_VERSION}" / (d[7:] + ".done")).exists() for d in img.diff_ids):
        diff_ids, blobs = _oci_diff_ids(img.oci, "bench")
        ensure_layers(img, diff_ids, blobs)
    img.layers = [img.dir / f"layers-v{LAYERS_VERSION}" / d.split(":")[1] for d in img.diff_ids]
    ref = f"{registry.address}/{img.repo}:{img.tag}"
    if not registry.has_repo(img.repo) or not (img.dir / "pushed").exists():
        log(f"image: push to {ref}")
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{img.oci}:bench",
             f"docker://{ref}"], timeout=1800)
        (img.dir / "pushed").touch()
    return img


def ensure_layers(img: Image, diff_ids: list[str], blobs: list[tuple[str, int]]) -> list[dict[str, object]]:
    """Extract every layer blob of the OCI layout into ``layers-vN/<diff ID hex>`` (overlay form),
    unless already there; returns what each layer holds."""
    layers = img.dir / f"layers-v{LAYERS_VERSION}"
    layers.mkdir(exist_ok=True)
    for old in img.dir.glob("layers*"):
        if old != layers:
            shutil.rmtree(old)
    per_layer: list[dict[str, object]] = []
    for i, diff_id in enumerate(diff_ids, start=1):
        dest = layers / diff_id.split(":")[1]
        if not (layers / (dest.name + ".done")).exists():
            log(f"image: extract layer {i} ({diff_id[7:19]})")
            if dest.exists():
                shutil.rmtree(dest)
            algo, hexd = blobs[i - 1][0].split(":")
            extract_layer(img.oci / "blobs" / algo / hexd, dest)
            (layers / (dest.name + ".done")).touch()
        n, size = _count(dest)
        per_layer.append({"diff_id": diff_id, "blob": blobs[i - 1][0], "compressed": blobs[i - 1][1],
                          "entries": n - 1, "bytes": size})
    return per_layer


def _build(img: Image, janitor: Janitor) -> None:
    d = img.dir
    build_dir = d / "build"
    build_dir.mkdir(exist_ok=True)
    if img.recipe == "full":
        uppers = _build_uppers(build_dir, janitor, _full_base, FULL_STEPS)
    else:
        uppers = _build_uppers(build_dir, janitor, _quick_base, QUICK_STEPS)

    tars = d / "tars"
    tars.mkdir(exist_ok=True)
    for i, upper in enumerate(uppers, start=1):
        tar = tars / f"L{i}.tar"
        if tar.exists():
            continue
        upper_to_oci(upper)
        run([*TAR_CREATE, "-C", upper, "-cf", str(tar) + ".tmp", "."])
        os.rename(str(tar) + ".tmp", tar)

    if not (d / "oci.done").exists():
        log("image: OCI layout (umoci new, umoci raw add-layer)")
        if img.oci.exists():
            shutil.rmtree(img.oci)
        run(["umoci", "init", "--layout", img.oci])
        run(["umoci", "new", "--image", f"{img.oci}:bench"])
        for i in range(1, len(uppers) + 1):
            run(["umoci", "raw", "add-layer", "--image", f"{img.oci}:bench",
                 f"--history.created_by=bench layer {i}", tars / f"L{i}.tar"], timeout=1800)
        (d / "oci.done").touch()
    diff_ids, blobs = _oci_diff_ids(img.oci, "bench")

    per_layer = ensure_layers(img, diff_ids, blobs)

    if not (d / "flat.done").exists():
        log("image: flatten (umoci unpack)")
        if (d / "flat").exists():
            shutil.rmtree(d / "flat")
        run(["umoci", "unpack", "--image", f"{img.oci}:bench", d / "flat"], timeout=3600)
        (d / "flat.done").touch()
    entries, size = _count(img.flat)
    ncat = _catlist(img.flat, img.catlist)
    info = {"recipe": img.recipe, "version": RECIPES[img.recipe], "diff_ids": diff_ids,
            "layers": per_layer, "entries": entries, "bytes": size, "cat_files": ncat,
            "compressed": sum(b[1] for b in blobs)}
    (d / "image.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(build_dir)
    shutil.rmtree(tars)
