"""layerfs as an unprivileged user: owners, modes and devices kept in ``user.containers.override_stat``.

What a user who is not root gets (docs/overlay.rst "Owners kept in an xattr", README "Without
root"), each checked against an oracle nobody here wrote, entry by entry:

- the override format, read alike by ``layerfs._layer.override`` and ``csrc/override.c`` (a table
  of named values), and the merged index built from override-carrying layers equal to the Python
  oracle's (``_merge_oracle``), believing only the layers it should;
- ``load`` and a read-only ``mount`` by the user show what root's load and mount of the same image
  show: type, mode, owner, size, content, device numbers, xattrs, mtimes, hard links (``_trees``),
  but for what an unprivileged unpack cannot keep (symlink owners, ``security.*`` xattrs), which
  the one ``Note:`` line names; no logger line;
- fuse-overlayfs, run by the same user over the same layer directories, shows the same
  (fuse-overlayfs 1.10, Debian 12's, reads ``UID:GID:MODE`` but not yet the type field that 1.15
  added for devices: there it shows an empty regular file with the device's owner and mode);
- a writable container of the user's, after chown, chmod, copy-ups, mkdir and mknod by a caller
  with root's capabilities, shows what root's container shows after the same steps, before and
  after a remount;
- ``-o allow_other`` for a user: refused with one line where /etc/fuse.conf lacks
  ``user_allow_other``, honoured where it has it (a private mount namespace gives the test its
  own /etc/fuse.conf; fusermount3 reads it there).

The user is nobody (65534; fusermount3 wants a named user).  Its views are read by a process of
nobody's that holds CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (ambient): FUSE lets only the
mounting user in, and the image's owners and modes (now shown) would keep a plain nobody out of
root's 0700 directories.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from _images import BuiltImage, TarEntry, edge_image, gzip_bytes, sha256, tar_bytes, write_layout  # noqa: F401
from _trees import Tree, assert_same_tree, snapshot
from conftest import require, require_fuse, require_root, require_tool

from layerfs import Store
from layerfs._layer import override as _override
from layerfs._mount import index as _index
from layerfs._mount import merge as _merge

NOBODY = 65534
OTHER = 4242   # another user, for allow_other
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
_READ_CAPS = "+dac_override,+dac_read_search"
#: nobody reading everything through the mount, as root reads its own mount
AS_NOBODY_READING = [*AS_NOBODY, f"--inh-caps={_READ_CAPS}", f"--ambient-caps={_READ_CAPS}"]
_ROOT_CAPS = "+dac_override,+dac_read_search,+chown,+fowner,+fsetid,+mknod"
#: nobody with root's powers over files (as root in a user namespace has them): what it changes
#: through the mount must come out as root's changes do
AS_NOBODY_ACTING = [*AS_NOBODY, f"--inh-caps={_ROOT_CAPS}", f"--ambient-caps={_ROOT_CAPS}"]
TESTS = str(Path(__file__).parent)


# ---------------------------------------------------------------------------------------------
# The format, in Python and in C

FORMAT_CASES = [
    # (name, value, mode on disk, expected (uid, gid, mode, rdev) or None)
    ("owner and mode, the type on disk", b"5:6:4755", 0o100600, (5, 6, 0o104755, 0)),
    ("a file", b"0:0:0644:file", 0o100600, (0, 0, 0o100644, 0)),
    ("a directory", b"1000:1000:1777:dir", 0o40700, (1000, 1000, 0o41777, 0)),
    ("a char device as a file", b"0:0:0666:char-1-3", 0o100600, (0, 0, 0o20666, os.makedev(1, 3))),
    ("a block device as a file", b"0:6:0660:block-259-65536", 0o100600,
     (0, 6, 0o60660, os.makedev(259, 65536))),
    ("a device's further parts ignored", b"0:0:0600:char-4-5-x", 0o100600, (0, 0, 0o20600, os.makedev(4, 5))),
    ("a fifo as a file", b"5:0:0620:pipe", 0o100600, (5, 0, 0o10620, 0)),
    ("a socket as a file", b"5:0:0755:socket", 0o100600, (5, 0, 0o140755, 0)),
    ("the largest ids", b"4294967295:4294967295:7777:file", 0o100600, (4294967295, 4294967295, 0o107777, 0)),
    ("a dir never becomes a file", b"0:0:0644:file", 0o40700, None),
    ("a file never becomes a dir", b"0:0:0755:dir", 0o100600, None),
    ("a file never becomes a symlink", b"0:0:0777:symlink", 0o100600, None),
    ("a dir never becomes a device", b"0:0:0600:char-1-3", 0o40700, None),
    ("mode beyond 7777", b"0:0:10644", 0o100600, None),
    ("a non-octal mode", b"0:0:0648", 0o100600, None),
    ("a 0/0 char device is a whiteout, never an override", b"0:0:0644:char-0-0", 0o100600, None),
    ("an id beyond 32 bits", b"4294967296:0:0644", 0o100600, None),
    ("a negative id", b"-1:0:0644", 0o100600, None),
    ("two fields", b"0:0", 0o100600, None),
    ("five fields", b"0:0:0644:char:1", 0o100600, None),
    ("an empty field", b"0::0644", 0o100600, None),
    ("an unknown type", b"0:0:0644:bogus", 0o100600, None),
    ("a device without numbers", b"0:0:0644:char", 0o100600, None),
    ("a device with one number", b"0:0:0644:char-1", 0o100600, None),
    ("fuse-overlayfs 2.0's device form", b"0:0:0644:char1:3", 0o100600, None),
    ("a file with a dash part", b"0:0:0644:file-1", 0o100600, None),
    ("spaces", b" 0:0:0644", 0o100600, None),
    ("a NUL", b"0:0:0644\x00", 0o100600, None),
    ("not ASCII", "0:0:0644:fïle".encode(), 0o100600, None),
    ("too long", b"0:0:0644:char-1-" + b"1" * 60, 0o100600, None),
]


@pytest.mark.parametrize("value, disk, expected", [c[1:] for c in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES])
def test_python_and_c_read_an_override_alike(value: bytes, disk: int,
                                             expected: tuple[int, int, int, int] | None) -> None:
    """Both readers give the expected attributes, or both refuse the value; what Python writes,
    C reads back, and C writes the same bytes."""
    from layerfs import _native  # type: ignore[attr-defined]

    parsed = _override.parse(value, disk)
    py = None if parsed is None else (parsed.uid, parsed.gid, parsed.mode, parsed.rdev)
    assert py == expected
    assert _native._override_parse(value, disk) == expected
    if expected is not None:
        o = _override.Override(*expected)
        assert _native._override_format(*expected) == _override.format_value(o)
        assert _override.parse(_override.format_value(o), disk) == o


def test_the_xattr_name_is_defined_once() -> None:
    from layerfs import _native  # type: ignore[attr-defined]
    from layerfs._layer import whiteout

    assert _native.OVERRIDE_XATTR == _override.XATTR == "user.containers.override_stat"
    assert _override.XATTR.startswith(_override.PREFIX) and _override.PREFIX in whiteout.PRIVATE_XATTR_PREFIXES


# ---------------------------------------------------------------------------------------------
# The merged index believes the overrides of the right layers

def _override_layer(root: Path, owner: int) -> Path:
    """A layer in the form an unprivileged unpack writes, its root's owner ``owner``."""
    (root / "d").mkdir(parents=True)
    (root / "d" / "su").write_bytes(b"su")
    (root / "dev").mkdir()
    (root / "dev" / "null").write_bytes(b"")
    os.mkfifo(root / "fifo")
    os.symlink("d/su", root / "link")
    for path, value in ((root, b"0:0:0755:dir"), (root / "d", b"5:5:0700:dir"), (root / "d" / "su", b"0:0:4755:file"),
                        (root / "dev" / "null", b"0:0:0666:char-1-3"), (root / "dev", b"7:8:0555")):
        os.setxattr(path, _override.XATTR, value)
    for path in (root, *root.rglob("*")):
        os.lchown(path, owner, owner)
    return root


def test_the_index_takes_owners_from_believed_layers_only(tmp_path: Path) -> None:
    """A layer whose root carries an override and is root's (or the builder's) gives the index
    its owners, modes and devices; one owned by another user does not (its ``user.*`` xattrs are
    that user's to write); the C build writes the Python oracle's bytes either way."""
    require_root()
    import _merge_oracle as _oracle

    for owner, believed in ((0, True), (OTHER, False)):
        layer = _override_layer(tmp_path / f"layer-{owner}", owner)
        _merge.build([layer], key="k")   # the first listing of each directory moves its atime (relatime)
        data, _ = _merge.build([layer], key="k")
        assert data == _oracle.build([layer], key="k")[0]
        path = tmp_path / f"{owner}.idx"
        path.write_bytes(data)
        ix = _index.Index(path)

        def attrs(name: bytes, parent: int = _index.ROOT_INO, ix: _index.Index = ix) -> tuple[int, int, int, int]:
            a = ix.getattr(ix.lookup(parent, name) if name else parent)
            return a[1], a[3], a[4], a[5]   # mode, uid, gid, rdev

        d = ix.lookup(_index.ROOT_INO, b"d")
        if believed:
            assert attrs(b"") == (0o40755, 0, 0, 0)
            assert attrs(b"d") == (0o40700, 5, 5, 0)
            assert attrs(b"su", d) == (0o104755, 0, 0, 0)
            assert attrs(b"null", ix.lookup(_index.ROOT_INO, b"dev")) == (0o20666, 0, 0, os.makedev(1, 3))
            assert attrs(b"dev") == (0o40555, 7, 8, 0), "UID:GID:MODE keeps the type on disk"
        else:
            assert attrs(b"d")[1:3] == (OTHER, OTHER) and stat.S_ISREG(attrs(b"su", d)[0])
        assert _override.XATTR.encode() not in ix.listxattr(d), "the override is private"
        assert stat.S_ISFIFO(attrs(b"fifo")[0]) and stat.S_ISLNK(attrs(b"link")[0])


# ---------------------------------------------------------------------------------------------
# A user's load and mount against root's

def _image_entries() -> list[list[TarEntry]]:
    """Two layers: owners root never is (5, 7), setuid and setgid, a sticky dir, devices and a
    hard link to one, a fifo, a dir without owner write holding a file, a file of mode 0000, a
    symlink of uid 5, xattrs a user may and may not set; then a layer without a root entry that
    deletes, makes a directory only as a parent, and adds a file to a 0700 directory of uid 5."""
    dirs = [("./", 0o755, 0, 0), ("bin/", 0o755, 0, 0), ("home/", 0o755, 0, 0), ("home/five/", 0o700, 5, 5),
            ("dev/", 0o755, 0, 0), ("ro/", 0o555, 0, 0), ("tmp/", 0o1777, 0, 0), ("srv/", 0o2775, 0, 7)]
    base = [TarEntry(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid) for name, mode, uid, gid in dirs]
    base += [
        TarEntry("bin/su", data=b"su\n", mode=0o4755),
        TarEntry("bin/wall", data=b"wall\n", mode=0o2755, gid=5),
        TarEntry("bin/ping", data=b"ping\n", mode=0o755,
                 xattrs=(("security.capability", bytes.fromhex("0100000200200000000000000000000000000000")),)),
        TarEntry("home/five/f", data=b"five\n", mode=0o600, uid=5, gid=5, xattrs=(("user.note", b"mine"),)),
        TarEntry("home/five/zero", data=b"", mode=0o000, uid=5, gid=5),
        TarEntry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        TarEntry("dev/sda", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(8, 0)),
        TarEntry("dev/initctl", tarfile.FIFOTYPE, mode=0o620, uid=5),
        TarEntry("dev/null2", tarfile.LNKTYPE, linkname="dev/null", mode=0o640, uid=7),
        TarEntry("ro/x", data=b"x", mode=0o444),
        TarEntry("link5", tarfile.SYMTYPE, linkname="home/five", uid=5, gid=5),
        TarEntry("gone", data=b"gone"),
    ]
    top = [
        TarEntry(".wh.gone"),
        TarEntry("home/five/g", data=b"g\n", mode=0o640, uid=5, gid=5),
        TarEntry("srv/www/index.html", data=b"hi\n", uid=7, gid=7),
        TarEntry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    ]
    return [base, top]


def _build_image(layout: Path) -> BuiltImage:
    layers = []
    for entries in _image_entries():
        raw = tar_bytes(entries)
        layers.append((gzip_bytes(raw), sha256(raw)))
    return write_layout(layout, "t", layers)


class Site:
    """A scratch directory for one test that nobody can use: a store and mount point for root,
    one for nobody, and the image's layout readable by both; everything mounted in it is
    unmounted, and it is removed, on close."""

    def __init__(self) -> None:
        require_root()
        require_fuse()
        require(os.stat("/dev/fuse").st_mode & 0o006 == 0o006, "/dev/fuse usable by every user (mode 0666)")
        require_tool("setpriv")
        self.base = Path(tempfile.mkdtemp(prefix="layerfs-rootless-"))
        os.chmod(self.base, 0o755)
        self.user = self.base / "user"
        for sub in ("run", "mnt", "fo", "home"):
            (self.user / sub).mkdir(parents=True)
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(self.user)], check=True)
        self.env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(self.user / "run"), HOME=str(self.user / "home"))
        self.env.pop("LAYERFS_ROOT", None)
        self.user_store = self.user / "store"
        self.root_store = self.base / "root-store"
        self.root_mnt = self.base / "root-mnt"
        self.root_mnt.mkdir()
        (self.base / "root-run").mkdir(mode=0o700)
        self.root_env = dict(self.env, LAYERFS_RUNTIME_DIR=str(self.base / "root-run"), HOME=str(self.base))

    def layout(self, image: BuiltImage) -> str:
        """A copy of ``image``'s layout nobody can read; returns its ``oci:`` source."""
        dest = self.base / "layout"
        shutil.copytree(image.layout, dest)
        subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
        return f"oci:{dest}:{image.tag}"

    def layerfs(self, *args: str, user: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``layerfs --root STORE ARGS`` as nobody (its store) or as root (root's)."""
        store = self.user_store if user else self.root_store
        argv = [*(AS_NOBODY if user else []), sys.executable, "-m", "layerfs", "--root", str(store), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env if user else self.root_env,
                              timeout=300, cwd="/")
        if check:
            assert proc.returncode == 0, f"layerfs {' '.join(args)}: {proc.stderr}"
        return proc

    def snapshot(self, path: Path, *, user: bool = True, **kw: object) -> Tree:
        """``_trees.snapshot(path, **kw)`` as nobody reading everything (or as root)."""
        if not user:
            return snapshot(path, **kw)  # type: ignore[arg-type]
        code = ("import pickle, sys; sys.path.insert(0, sys.argv[1]); import _trees; "
                "kw = pickle.loads(bytes.fromhex(sys.argv[3])); "
                "sys.stdout.buffer.write(pickle.dumps(_trees.snapshot(sys.argv[2], **kw)))")
        proc = subprocess.run([*AS_NOBODY_READING, sys.executable, "-c", code, TESTS, str(path),
                               pickle.dumps(kw).hex()], capture_output=True, timeout=300, cwd="/")
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        tree: Tree = pickle.loads(proc.stdout)
        return tree

    def user_layer_dirs(self, name: str) -> list[Path]:
        store = Store(self.user_store)
        return store.layer_dirs(store.get(name))

    def close(self) -> None:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(self.base) + "/"):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["small", "edge"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """This file's image, or the suite's edge image (every edge a layer can hold: _images.py)."""
    if request.param == "edge":
        edge: BuiltImage = request.getfixturevalue("edge_image")
        return edge
    return _build_image(tmp_path_factory.mktemp("rootless-image") / "layout")


NOTE = re.compile(r"^Note: unpacked without root: the image's owners, modes and device nodes are kept in "
                  r"user\.containers\.override_stat xattrs, which layerfs mount and fuse-overlayfs show; not kept: "
                  r"(.*)$", re.M)


def _lost(root_tree: Tree) -> tuple[list[str], list[str]]:
    """What of root's view an unprivileged unpack cannot keep: the symlinks root's view shows
    with another owner than nobody, and the names of the ``security.*``/``trusted.*`` xattrs."""
    links = [p for p, e in root_tree.entries.items() if e.type == "lnk" and (e.uid, e.gid) != (NOBODY, NOBODY)]
    xattrs = sorted({name for e in root_tree.entries.values() for name, _ in e.xattrs
                     if name.startswith(("security.", "trusted."))})
    return links, xattrs


def _check_note(root_tree: Tree, stderr: str) -> None:
    """The one ``Note:`` line of a user's load names what :func:`_lost` finds."""
    links, xattrs = _lost(root_tree)
    notes = NOTE.findall(stderr)
    assert len(notes) == 1, stderr
    count = re.search(r"the owners of (\d+) symlinks?", notes[0])
    assert (count is not None and int(count.group(1)) >= len(links)) == bool(links), stderr
    for name in xattrs:
        assert name in notes[0], (name, stderr)


def _as_a_user_keeps_it(root_tree: Tree) -> Tree:
    """Root's view without what an unprivileged unpack cannot keep (:func:`_lost`): symlinks are
    the user's, those xattrs gone."""
    _, lost = _lost(root_tree)
    entries = {}
    for path, e in root_tree.entries.items():
        if e.type == "lnk":
            e = replace(e, uid=NOBODY, gid=NOBODY)
        entries[path] = replace(e, xattrs=tuple(x for x in e.xattrs if x[0] not in lost))
    return replace(root_tree, entries=entries)


def test_a_user_sees_the_owners_root_sees(site: Site, image: BuiltImage) -> None:
    """nobody loads and mounts the image; its mount shows every entry as root's mount of root's
    load shows it, but for what the one ``Note:`` line says was not kept.  Before: every file
    was nobody's, devices were left out with a ``WARNING layerfs._unpack`` line, and a layer with
    a directory without owner write (``ro/``, 0555, holding a file) did not load at all."""
    source = site.layout(image)
    site.layerfs("load", source, user=False)
    loaded = site.layerfs("load", source)
    assert "WARNING" not in loaded.stderr and "Traceback" not in loaded.stderr, loaded.stderr
    name = re.search(r"Loaded image: (\S+)", loaded.stdout)
    assert name is not None, loaded.stdout
    site.layerfs("mount", "--read-only", name.group(1), str(site.root_mnt), user=False)
    try:
        root_view = site.snapshot(site.root_mnt, user=False)
    finally:
        site.layerfs("umount", str(site.root_mnt), user=False)
    site.layerfs("mount", "--read-only", name.group(1), str(site.user / "mnt"))
    try:
        user_view = site.snapshot(site.user / "mnt")
    finally:
        site.layerfs("umount", str(site.user / "mnt"))
    assert len(user_view) > 10
    _check_note(root_view, loaded.stderr)
    assert_same_tree(_as_a_user_keeps_it(root_view), user_view, names=("root's mount", "nobody's mount"))
    if image.tag == "t":
        assert user_view["bin/su"].mode == 0o4755 and user_view["home/five/f"].uid == 5
        assert user_view["dev/null"].type == "chr" and user_view["dev/null"].rdev == (1, 3)
        for layer in site.user_layer_dirs(name.group(1)):
            for path in (layer, *layer.rglob("*")):
                st = path.lstat()
                assert st.st_uid == NOBODY, path
                assert stat.S_ISLNK(st.st_mode) or not st.st_mode & (stat.S_ISUID | stat.S_ISGID | 0o002), path
    site.layerfs("rm", name.group(1))   # its layers hold directories of mode 0555: they go too
    assert not any(site.user_store.joinpath("layers").iterdir())


def _fuse_overlayfs_version() -> tuple[int, ...]:
    out = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"fuse-overlayfs: version (\d+)\.(\d+)", out)
    return tuple(int(n) for n in found.groups()) if found else (0,)


def _as_fuse_overlayfs_1_10_shows_it(tree: Tree) -> Tree:
    """Before 1.15 fuse-overlayfs read ``UID:GID:MODE`` only (its NEWS: "use extended override
    xattr to support devices"): a device or fifo kept as an empty file shows as that file."""
    empty = hashlib.sha256(b"").hexdigest()
    entries = {}
    for path, e in tree.entries.items():
        if e.type in ("chr", "blk", "fifo", "sock"):
            e = replace(e, type="reg", rdev=None, size=0, sha256=empty)
        entries[path] = e
    return replace(tree, entries=entries)


def test_fuse_overlayfs_shows_the_users_layers_alike(site: Site, image: BuiltImage) -> None:
    """fuse-overlayfs, run by nobody over the layer directories nobody's load made, reads their
    overrides as layerfs's mount does (the oracle for the format)."""
    require_tool("fuse-overlayfs")
    source = site.layout(image)
    loaded = site.layerfs("load", source)
    name = re.search(r"Loaded image: (\S+)", loaded.stdout)
    assert name is not None, loaded.stdout
    lowers = ":".join(str(d) for d in reversed(site.user_layer_dirs(name.group(1))))
    fo = site.user / "fo"
    proc = subprocess.run([*AS_NOBODY, "fuse-overlayfs", "-o", f"lowerdir={lowers}", str(fo)],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    try:
        theirs = site.snapshot(fo, ignore_xattrs=(_override.PREFIX,))   # 1.10 shows it
    finally:
        subprocess.run([*AS_NOBODY, "fusermount3", "-u", str(fo)], capture_output=True, timeout=60)
    site.layerfs("mount", "--read-only", name.group(1), str(site.user / "mnt"))
    try:
        ours = site.snapshot(site.user / "mnt")
    finally:
        site.layerfs("umount", str(site.user / "mnt"))
    if _fuse_overlayfs_version() < (1, 15):
        ours = _as_fuse_overlayfs_1_10_shows_it(ours)
    assert_same_tree(ours, theirs, names=("layerfs", "fuse-overlayfs"))
    assert any(e.uid not in (NOBODY, 0) for e in theirs.entries.values()), "fuse-overlayfs read no override"


# ---------------------------------------------------------------------------------------------
# A user's container

#: What a caller with root's powers over files does in a container (the small image); run as
#: root on root's container and as nobody (with those capabilities) on nobody's.
STEPS = """set -e
cd "$1"
echo more >> etc/passwd
chmod 600 ro/x
chown 5:5 bin/su && chmod 4755 bin/su
mkdir newdir && chown 0:0 newdir && chmod 0750 newdir
echo new > newdir/f && chown 7:0 newdir/f
mknod dev/zero c 1 5 && chown 0:0 dev/zero && chmod 0666 dev/zero
chmod 0640 dev/null
rm dev/sda
ln etc/passwd etc/passwd-
chown 5:5 home/five/g
"""


def test_a_users_container_keeps_owners_it_cannot_give(site: Site) -> None:
    """The same steps through root's container and nobody's give the same views, before and after
    nobody's container is mounted again (its upper read back from disk), and once each is
    committed (``layerfs commit``: the layer generated from nobody's upper carries the owners of
    its overrides); nobody's upper holds the owners and the device in overrides.  Before: chown
    failed (EPERM) and a copy-up lost the lower file's owner."""
    source = site.layout(_build_image(site.base / "built" / "layout"))
    loaded = site.layerfs("load", source, user=False)
    site.layerfs("load", source)
    name = re.search(r"Loaded image: (\S+)", loaded.stdout)
    assert name is not None
    site.layerfs("mount", "--name", "c", name.group(1), str(site.root_mnt), user=False)
    try:
        subprocess.run(["sh", "-c", STEPS, "sh", str(site.root_mnt)], check=True, timeout=60)
        root_view = site.snapshot(site.root_mnt, user=False, mtimes=False)
    finally:
        site.layerfs("umount", str(site.root_mnt), user=False)
    mnt = site.user / "mnt"
    site.layerfs("mount", "--name", "c", name.group(1), str(mnt))
    try:
        proc = subprocess.run([*AS_NOBODY_ACTING, "sh", "-c", STEPS, "sh", str(mnt)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        user_view = site.snapshot(mnt, mtimes=False)
    finally:
        site.layerfs("umount", str(mnt))
    assert_same_tree(_as_a_user_keeps_it(root_view), user_view, names=("root's container", "nobody's container"))
    site.layerfs("mount", "--name", "c", name.group(1), str(mnt))
    try:
        again = site.snapshot(mnt, mtimes=False)
    finally:
        site.layerfs("umount", str(mnt))
    assert_same_tree(user_view, again, names=("nobody's container", "mounted again"))
    site.layerfs("commit", "c", "committed:1", user=False)
    site.layerfs("commit", "c", "committed:1")
    site.layerfs("mount", "--read-only", "committed:1", str(site.root_mnt), user=False)
    try:
        root_committed = site.snapshot(site.root_mnt, user=False, mtimes=False)
    finally:
        site.layerfs("umount", str(site.root_mnt), user=False)
    site.layerfs("mount", "--read-only", "committed:1", str(mnt))
    try:
        user_committed = site.snapshot(mnt, mtimes=False)
    finally:
        site.layerfs("umount", str(mnt))
    assert_same_tree(_as_a_user_keeps_it(root_committed), user_committed,
                     names=("root's commit", "nobody's commit"))
    assert_same_tree(user_view, user_committed, names=("nobody's container", "nobody's commit"))
    upper = next(site.user_store.joinpath("containers").glob("*/upper"))
    assert os.getxattr(upper / "dev" / "zero", _override.XATTR) == b"0:0:0666:char-1-5"
    assert os.getxattr(upper / "bin" / "su", _override.XATTR) == b"5:5:4755:file"
    assert stat.S_IMODE(os.lstat(upper / "bin" / "su").st_mode) == 0o755


# ---------------------------------------------------------------------------------------------
# In a user namespace where the user is root

IN_A_NAMESPACE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x00020000) == 0, os.strerror(ctypes.get_errno())   # CLONE_NEWUSER | CLONE_NEWNS
for path, value in (("setgroups", "deny"), ("uid_map", "0 %d 1" % os.geteuid()), ("gid_map", "0 %d 1" % os.getegid())):
    with open("/proc/self/" + path, "w") as f:
        f.write(value)
assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0   # MS_REC | MS_PRIVATE: nothing leaks out
from layerfs._cli.main import main
root, image, mnt = sys.argv[1:4]
assert main(["--root", root, "mount", "--name", "ns", image, mnt]) == 0
try:
    with open(mnt + "/etc/motd", "w") as f:
        f.write("hi\\n")
    os.chown(mnt + "/bin/su", 0, 0)
    for p in ("etc/motd", "bin/su", "home/five", "dev/null"):
        st = os.lstat(mnt + "/" + p)
        print(p, st.st_uid, st.st_gid, oct(st.st_mode), st.st_rdev)
finally:
    main(["--root", root, "umount", mnt])
"""


def test_in_a_user_namespace_the_users_root_owns_roots_files(site: Site) -> None:
    """README "Without root": in a user namespace where nobody is root, nobody's mount shows the
    image's root files as root's, which nobody may change there; owners the namespace does not
    map show as the overflow ID."""
    require(Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() != "0"
            if Path("/proc/sys/kernel/unprivileged_userns_clone").exists() else True,
            "unprivileged user namespaces")
    source = site.layout(_build_image(site.base / "built" / "layout"))
    loaded = site.layerfs("load", source)
    name = re.search(r"Loaded image: (\S+)", loaded.stdout)
    assert name is not None
    proc = subprocess.run([*AS_NOBODY, sys.executable, "-c", IN_A_NAMESPACE, str(site.user_store), name.group(1),
                           str(site.user / "mnt")], capture_output=True, text=True, env=site.env, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-4:] == [
        "etc/motd 0 0 0o100644 0",
        "bin/su 0 0 0o100755 0",                          # chown clears setuid, for root too
        f"home/five {NOBODY} {NOBODY} 0o40700 0",      # uid 5: not mapped in the namespace
        f"dev/null {NOBODY} 0 0o20640 {os.makedev(1, 3)}",   # uid 7, as the hard link's header says
    ], proc.stdout


# ---------------------------------------------------------------------------------------------
# -o allow_other

def test_allow_other_is_refused_without_user_allow_other(site: Site, tmp_path: Path) -> None:
    """Where /etc/fuse.conf lacks the line, one line says why, and nothing is mounted."""
    conf = Path("/etc/fuse.conf")
    require(not conf.exists() or "user_allow_other" not in
            [line.strip() for line in conf.read_text(errors="replace").splitlines()],
            "an /etc/fuse.conf without user_allow_other")
    lower = site.user / "home"
    proc = site.layerfs("mount", "-o", f"lowerdir={lower},allow_other", str(site.user / "mnt"), check=False)
    assert proc.returncode == 1
    assert proc.stderr == ("Error: -o allow_other: /etc/fuse.conf has no line user_allow_other, without which "
                           "fusermount3 lets only root mount for other users (root may add it)\n")
    assert not os.path.ismount(site.user / "mnt")


ALLOW_OTHER = """set -e
mount --bind "$CONF" /etc/fuse.conf
$LAYERFS mount -o "lowerdir=$LOWER,allow_other" "$MNT"
setpriv --reuid=$OTHER --regid=$OTHER --clear-groups ls "$MNT" > "$OUT/with"
$LAYERFS umount "$MNT"
$LAYERFS mount -o "lowerdir=$LOWER" "$MNT"
setpriv --reuid=$OTHER --regid=$OTHER --clear-groups ls "$MNT" > "$OUT/without" 2>&1 || echo "refused" >> "$OUT/without"
$LAYERFS umount "$MNT"
"""


def test_allow_other_is_honoured_with_user_allow_other(site: Site) -> None:
    """With ``user_allow_other`` in /etc/fuse.conf (bound over the real one in a mount namespace
    of the test's own), another user may list nobody's ``-o allow_other`` mount, and not the one
    made without it."""
    require_tool("unshare")
    lower = site.user / "home" / "lower"
    lower.mkdir()
    (lower / "hello").write_text("hi\n")
    conf = site.base / "fuse.conf"
    conf.write_text("user_allow_other\n")
    out = site.base / "out"
    out.mkdir(mode=0o777)
    os.chmod(out, 0o777)
    layerfs = " ".join([*AS_NOBODY, sys.executable, "-m", "layerfs", "--root", str(site.user_store)])
    env = dict(site.env, CONF=str(conf), LAYERFS=layerfs, LOWER=str(lower), MNT=str(site.user / "mnt"),
               OTHER=str(OTHER), OUT=str(out))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", ALLOW_OTHER], env=env,
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert (out / "with").read_text() == "hello\n"
    assert "Permission denied" in (out / "without").read_text() and "refused" in (out / "without").read_text()
