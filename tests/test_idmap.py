"""ID mappings (``-o uidmapping=``, ``gidmapping=``): layerfs against fuse-overlayfs with the same options.

fuse-overlayfs is the oracle (fuse-overlayfs(1): the IDs it shows are translated by the
mapping, the IDs it receives, chown's and the creating caller's, are translated back).  Both are
mounted with the same ``-o lowerdir=,upperdir=,workdir=,uidmapping=,gidmapping=`` over copies of
the same directories, the same steps run through each, and what each shows and what lands in
each upper is compared:

- the option's syntax: a table of named values, taken or refused in one line;
- as root: the whole tree each mount shows (``_trees``: owners, modes, types, content, xattrs),
  before and after chown (a mapped ID, an unmapped one: the overflow ID), copy-ups, and files made
  by root (unmapped: the overflow ID) and by mapped callers; the owners on disk in both uppers;
  layerfs's tree again after a remount (read back from its upper);
- as nobody: the owners each mount shows, and the owners each upper keeps in its override xattr
  (layerfs's ``user.containers.override_stat``; fuse-overlayfs 1.10 writes
  ``user.fuseoverlayfs.override_stat`` with ``xattr_permissions=2`` and gets its own modes wrong
  there, so modes are not compared);
- a new file's group in a setgid directory, which fuse-overlayfs does not give (layerfs follows
  the kernel's inode_init_owner), checked by value: the directory's group on disk, shown mapped,
  and the setgid bit kept for a caller in that (shown) group only.

The rootless ``layerfs run`` that needs the mapping is tests/test_run.py
``test_unprivileged_run_works_or_says_what_is_missing``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _oracles import unmount
from _trees import Tree, assert_same_tree, snapshot
from conftest import require, require_fuse, require_root, require_tool

from layerfs._errors import MountError
from layerfs._layer import override as _override
from layerfs._mount import idmap as _idmap

NOBODY = 65534
FO_OVERRIDE = "user.fuseoverlayfs.override_stat"

# ---------------------------------------------------------------------------------------------
# The option

PARSE_CASES = [
    # (name, value, ranges as (container, host, size), or the refusal)
    ("one range", "0:1000:1", [(0, 1000, 1)]),
    ("containers-storage's form, ranges joined by colons", "0:1000:1:1:100000:65536",
     [(0, 1000, 1), (1, 100000, 65536)]),
    ("the identity", "0:0:4294967295", [(0, 0, 4294967295)]),
    ("up to the last ID", "4294967295:0:1", [(4294967295, 0, 1)]),
    ("64 ranges", ":".join(f"{i}:{i + 1000}:1" for i in range(64)), [(i, i + 1000, 1) for i in range(64)]),
    ("65 ranges", ":".join(f"{i}:{i + 1000}:1" for i in range(65)), "65 ranges, at most 64"),
    ("two fields", "0:1", "not a list of CONTAINER:HOST:SIZE ranges"),
    ("empty", "", "not a list of CONTAINER:HOST:SIZE ranges"),
    ("an empty field", "0::1", "not a list of CONTAINER:HOST:SIZE ranges"),
    ("a sign", "0:+1000:1", "not a list of CONTAINER:HOST:SIZE ranges"),
    ("a negative ID", "-1:1000:1", "not a list of CONTAINER:HOST:SIZE ranges"),
    ("spaces", "0: 1000:1", "not a list of CONTAINER:HOST:SIZE ranges"),
    ("an empty range", "0:1000:0", "range 0:1000:0 is empty or goes past ID 4294967295"),
    ("past 32 bits", "4294967295:0:2", "goes past ID 4294967295"),
    ("an ID beyond 32 bits", "4294967296:0:1", "goes past ID 4294967295"),
    ("overlapping on disk", "0:1000:10:5:2000:1", "ranges 0:1000:10 and 5:2000:1 overlap on the container side"),
    ("overlapping as shown", "0:1000:10:20:1009:1", "overlap on the host side"),
]


@pytest.mark.parametrize("value, expected", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_the_option_is_read_or_refused_in_one_line(value: str, expected: list[tuple[int, int, int]] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(MountError, match=expected) as err:
            _idmap.parse("uidmapping", value)
        assert "\n" not in str(err.value) and str(err.value).startswith("-o uidmapping=")
        return
    ranges = _idmap.parse("uidmapping", value)
    assert [(r.container, r.host, r.size) for r in ranges] == expected
    assert _idmap.format_ranges(ranges) == value


def test_the_c_engine_takes_what_the_option_takes_only() -> None:
    """The session refuses a mapping the option would refuse (64 ranges at most, none empty,
    none overlapping), before it opens or mounts anything."""
    from layerfs._mount.index import NativeSession

    R = _idmap.IdRange
    for ranges, message in (([R(i, i + 1000, 1) for i in range(65)], "1 to 64 ranges"),
                            ([R(0, 1000, 0)], "an empty range"), ([R(0, 1000, 10), R(5, 2000, 1)], "overlap"),
                            ([R(0, 1000, 10), R(20, 1009, 1)], "overlap"), ([R(4294967295, 0, 2)], r"past 2\^32")):
        for idmap in (_idmap.IdMapping(uids=tuple(ranges)), _idmap.IdMapping(gids=tuple(ranges))):
            with pytest.raises(ValueError, match=message):
                NativeSession("/nonexistent.idx", [], "/nonexistent", set(), entry_timeout=1.0, attr_timeout=1.0,
                              negative_timeout=1.0, idmap=idmap)
    # the extension's own argument: every ID checked, not cut to 32 bits (before: 2^32 was taken
    # as 0 and -1 as 4294967295), and a wrong shape is a TypeError, not a SystemError
    from layerfs import _native

    for arg, error in (((65534, [(2**32, 0, 1)]), ValueError), ((65534, [(0, -1, 1)]), OverflowError),
                       ((2**32, [(0, 1, 1)]), ValueError), ((65534, [[0, 1, 1]]), TypeError),
                       ([65534, [(0, 1, 1)]], TypeError), ((65534, [(0, "1", 1)]), TypeError)):
        with pytest.raises(error):
            _native.FuseSession("/nonexistent.idx", [], "/nonexistent", "", 1.0, 1.0, 1.0, uidmap=arg)


# ---------------------------------------------------------------------------------------------
# The two mounts

UIDS = "0:1000:1:1:100001:9"       # root -> 1000, 1..9 -> 100001..100009, the rest: the overflow ID
GIDS = "0:2000:1:1:200001:9"       # another host side for groups: a uid/gid mix-up shows
USER_UIDS = "0:65534:1:1:100001:9"  # nobody's: its own ID is the image's root (a rootless run's form)
USER_GIDS = "0:65534:1:1:200001:9"

#: The lower directories: (layer, path, type, uid, gid, mode); a symlink's target is "f0".
LOWER = [
    ("l1", ".", "dir", 0, 0, 0o755),
    ("l1", "d", "dir", 2, 2, 0o1777),
    ("l1", "d/x", "reg", 0, 0, 0o644),
    ("l1", "f0", "reg", 0, 0, 0o644),
    ("l1", "f5", "reg", 5, 6, 0o644),
    ("l1", "f1000", "reg", 1000, 1000, 0o644),
    ("l1", "sg", "dir", 0, 7, 0o2775),
    ("l1", "link", "lnk", 3, 3, 0o777),
    ("l2", ".", "dir", 0, 0, 0o755),
    ("l2", "t", "reg", 3, 4, 0o644),
]


def _make_lowers(base: Path, *, as_user: bool) -> None:
    """The lower directories in ``base``: as root makes them (owners on disk), or as an
    unprivileged load makes them (nobody's files, owners in overrides; a symlink stays nobody's)."""
    for layer, path, kind, uid, gid, mode in LOWER:
        p = base / layer / path
        if kind == "dir":
            p.mkdir(exist_ok=True)
        elif kind == "lnk":
            p.symlink_to("f0")
        else:
            p.write_text(f"{path}\n")
        if kind == "lnk":
            os.lchown(p, NOBODY if as_user else uid, NOBODY if as_user else gid)
            continue
        full = (stat.S_IFDIR if kind == "dir" else stat.S_IFREG) | mode
        if as_user:
            os.chown(p, NOBODY, NOBODY)
            os.chmod(p, _override.disk_mode(full))
            os.setxattr(p, _override.XATTR, _override.format_value(_override.Override(uid, gid, full)))
        else:
            os.chown(p, uid, gid)
            os.chmod(p, mode)


class Site:
    """Two copies of the lower directories with an upper and a work directory each, one for
    fuse-overlayfs (``fo``) and one for layerfs (``lf``); everything mounted below is unmounted
    and the whole removed on close."""

    def __init__(self, *, as_user: bool) -> None:
        require_root()
        require_fuse()
        require_tool("fuse-overlayfs", "setpriv")
        self.as_user = as_user
        self.base = Path(tempfile.mkdtemp(prefix="layerfs-idmap-"))
        os.chmod(self.base, 0o755)
        for name in ("fo", "lf"):
            for sub in ("l1", "l2", "up", "wk", "mnt"):
                (self.base / name / sub).mkdir(parents=True)
            _make_lowers(self.base / name, as_user=as_user)
        (self.base / "run").mkdir()
        if as_user:
            for name in ("fo", "lf"):
                for sub in ("up", "wk", "mnt"):
                    os.chown(self.base / name / sub, NOBODY, NOBODY)
            os.chown(self.base / "run", NOBODY, NOBODY)
        self.env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(self.base / "run"), HOME=str(self.base / "run"))
        self.env.pop("LAYERFS_ROOT", None)

    def who(self) -> list[str]:
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if self.as_user else []

    def options(self, name: str, uids: str, gids: str) -> str:
        d = self.base / name
        return (f"lowerdir={d / 'l2'}:{d / 'l1'},upperdir={d / 'up'},workdir={d / 'wk'},"
                f"uidmapping={uids},gidmapping={gids}")

    def mount(self, name: str, uids: str, gids: str) -> Path:
        opts = self.options(name, uids, gids)
        mnt = self.base / name / "mnt"
        if name == "fo":
            extra = ",xattr_permissions=2" if self.as_user else ""
            argv = [*self.who(), "fuse-overlayfs", "-o", opts + extra, str(mnt)]
        else:
            argv = [*self.who(), sys.executable, "-m", "layerfs", "--root", str(self.base / "run" / "store"),
                    "mount", "-o", opts, str(mnt)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=120, cwd="/")
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        return mnt

    def umount(self, name: str) -> None:
        mnt = self.base / name / "mnt"
        if name == "fo":
            subprocess.run([*self.who(), "fusermount3", "-u", str(mnt)], capture_output=True, timeout=60, cwd="/")
        else:
            subprocess.run([*self.who(), sys.executable, "-m", "layerfs", "umount", str(mnt)], capture_output=True,
                           env=self.env, timeout=120, cwd="/")
        assert not os.path.ismount(mnt), f"{name} is still mounted"

    def close(self) -> None:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(self.base) + "/"):
                unmount(Path(point))
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    s = Site(as_user=request.param == "nobody")
    try:
        yield s
    finally:
        s.close()


def _sh(script: str, mnt: Path, *who: str) -> None:
    proc = subprocess.run([*who, "sh", "-c", script, "sh", str(mnt)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(who)}: {proc.stderr}"


def _disk_owners(upper: Path) -> dict[str, tuple[int, int]]:
    """Every path of an upper with the owner it keeps: its override's if it has one
    (fuse-overlayfs's own xattr first, then containers-storage's), else its owner on disk.
    fuse-overlayfs's own opaque markers (``.wh..wh..opq`` files) are left out."""
    out = {}
    for path in sorted(upper.rglob("*")):
        if path.name.startswith(".wh."):
            continue
        st = path.lstat()
        owner = (st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            for name in (FO_OVERRIDE, _override.XATTR):
                try:
                    value = os.getxattr(path, name, follow_symlinks=False)
                except OSError:
                    continue
                uid, gid = value.split(b":")[:2]
                owner = (int(uid), int(gid))
                break
        out[str(path.relative_to(upper))] = owner
    return out


# ---------------------------------------------------------------------------------------------
# As root

ROOT_STEPS = """set -e
cd "$1"
chown 100003:200004 f0
chown 1000:2000 f5
chown 4242:4343 f1000
chown -h 100002:200002 link
chgrp 200009 d/x
echo more >> t
echo root > byroot
mkdir rootdir
"""
#: as the mapped root (1000:2000), which owns the root directory the mounts show
MAPPED_ROOT_STEPS = """set -e
cd "$1"
echo mine > mine
mkdir mydir
ln -s f0 mylink
mkfifo myfifo
"""
#: as a mapped user (100004:200001) in the world-writable sticky d/
MAPPED_USER_STEPS = """set -e
cd "$1"
echo theirs > d/theirs
"""
#: umask 0: a new file's mode as asked
SETGID_FILE = "import os, sys; os.umask(0); os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o2755))"


@pytest.mark.parametrize("site", ["root"], indirect=True)
def test_as_root_layerfs_maps_as_fuse_overlayfs_does(site: Site) -> None:
    """Before: every mapping but the identity was refused (``ID mappings are not supported``)."""
    trees: dict[str, list[Tree]] = {}
    for name in ("fo", "lf"):
        mnt = site.mount(name, UIDS, GIDS)
        try:
            before = snapshot(mnt, mtimes=False)
            _sh(ROOT_STEPS, mnt)
            _sh(MAPPED_ROOT_STEPS, mnt, "setpriv", "--reuid=1000", "--regid=2000", "--clear-groups")
            _sh(MAPPED_USER_STEPS, mnt, "setpriv", "--reuid=100004", "--regid=200001", "--clear-groups")
            trees[name] = [before, snapshot(mnt, mtimes=False)]
        finally:
            site.umount(name)
    fo, lf = trees["fo"], trees["lf"]
    assert_same_tree(fo[0], lf[0], names=("fuse-overlayfs", "layerfs"))
    assert_same_tree(fo[1], lf[1], names=("fuse-overlayfs after the steps", "layerfs after the steps"))
    ours = _disk_owners(site.base / "lf" / "up")
    assert _disk_owners(site.base / "fo" / "up") == ours
    # by value too: what each ID became, shown and on disk
    shown = {p: (e.uid, e.gid) for p, e in lf[0].entries.items()}
    assert shown["."] == (1000, 2000) and shown["f5"] == (100005, 200006) and shown["sg"] == (1000, 200007)
    assert shown["f1000"] == (NOBODY, NOBODY)                        # 1000 is in no range: the overflow ID
    assert ours["f0"] == (3, 4) and ours["f5"] == (0, 0) and ours["link"] == (2, 2) and ours["d/x"] == (0, 9)
    assert ours["f1000"] == (NOBODY, NOBODY)                         # chown to an unmapped ID: the overflow ID
    assert ours["byroot"] == (NOBODY, NOBODY)                        # root is not mapped here
    assert ours["mine"] == ours["mydir"] == ours["mylink"] == ours["myfifo"] == (0, 0)
    assert ours["t"] == (3, 4) and ours["d/theirs"] == (4, 1)
    # mounted again, layerfs reads the same back from its upper
    mnt = site.mount("lf", UIDS, GIDS)
    try:
        assert_same_tree(lf[1], snapshot(mnt, mtimes=False), names=("layerfs", "layerfs mounted again"))
        # a setgid directory (0:7 on disk): a new file takes its group; the setgid bit a caller
        # asks for stays only when the caller is in that group as shown (200007); the other
        # caller may write there by CAP_DAC_OVERRIDE, and has no CAP_FSETID
        for who, name in ((["--reuid=100004", "--groups=200007"], "in"),
                          (["--reuid=100005", "--groups=200001", "--inh-caps=+dac_override",
                            "--ambient-caps=+dac_override"], "out")):
            proc = subprocess.run(["setpriv", "--regid=200001", *who, sys.executable, "-c", SETGID_FILE,
                                   str(mnt / "sg" / name)], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        # a group of the caller's own (no setgid parent) is the caller's, even unmapped: the bit
        # stays (before: the unmapped group, taken as the overflow ID, was not the caller's)
        proc = subprocess.run(["setpriv", "--reuid=100005", "--regid=4343", "--clear-groups", sys.executable, "-c",
                               SETGID_FILE, str(mnt / "d" / "own")], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        shown_in, shown_out = os.lstat(mnt / "sg" / "in"), os.lstat(mnt / "sg" / "out")
        shown_own = os.lstat(mnt / "d" / "own")
    finally:
        site.umount("lf")
    assert (shown_own.st_uid, shown_own.st_gid, stat.S_IMODE(shown_own.st_mode)) == (100005, NOBODY, 0o2755)
    assert (shown_in.st_uid, shown_in.st_gid, stat.S_IMODE(shown_in.st_mode)) == (100004, 200007, 0o2755)
    assert (shown_out.st_uid, shown_out.st_gid, stat.S_IMODE(shown_out.st_mode)) == (100005, 200007, 0o755)
    on_disk = os.lstat(site.base / "lf" / "up" / "sg" / "in")
    assert (on_disk.st_uid, on_disk.st_gid, stat.S_IMODE(on_disk.st_mode)) == (4, 7, 0o2755)


# ---------------------------------------------------------------------------------------------
# As nobody

_CAPS = "+dac_override,+dac_read_search,+chown,+fowner,+fsetid"
#: nobody with root's powers over files, as the root of a rootless container has them
AS_NOBODY_ACTING = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", f"--inh-caps={_CAPS}",
                    f"--ambient-caps={_CAPS}"]

USER_STEPS = """set -e
cd "$1"
chown 100003:200004 f0
chown 65534:65534 f5
chown 4242:4343 f1000
chgrp 200009 d/x
echo more >> t
echo mine > mine
mkdir mydir
echo theirs > d/theirs
"""
OWNERS = ("import json, os, sys; r = sys.argv[1]; out = {}\n"
          "for d, dirs, files in os.walk(r):\n"
          "    for n in ['.'] if d == r else []:\n"
          "        st = os.lstat(d); out['.'] = [st.st_uid, st.st_gid]\n"
          "    for n in dirs + files:\n"
          "        p = os.path.join(d, n); st = os.lstat(p); out[os.path.relpath(p, r)] = [st.st_uid, st.st_gid]\n"
          "print(json.dumps(out))")


def _shown_owners(mnt: Path) -> dict[str, list[int]]:
    """The owner of every path the mount shows, read by nobody (only the mounting user may enter)."""
    proc = subprocess.run([*AS_NOBODY_ACTING, sys.executable, "-c", OWNERS, str(mnt)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    owners: dict[str, list[int]] = json.loads(proc.stdout)
    return owners


@pytest.mark.parametrize("site", ["nobody"], indirect=True)
def test_as_nobody_layerfs_maps_as_fuse_overlayfs_does(site: Site) -> None:
    """nobody's mounts of lowers that keep their owners in overrides: the caller (nobody) is the
    image's root, the other IDs shown through the ranges; what it changes lands in the upper's
    overrides as the IDs on disk.  Before: the mapping was refused."""
    require(Path("/proc/sys/kernel/overflowuid").read_text().strip() == str(NOBODY), "overflowuid 65534")
    views: dict[str, list[dict[str, list[int]]]] = {}
    for name in ("fo", "lf"):
        mnt = site.mount(name, USER_UIDS, USER_GIDS)
        try:
            before = _shown_owners(mnt)
            _sh(USER_STEPS, mnt, *AS_NOBODY_ACTING)
            views[name] = [before, _shown_owners(mnt)]
        finally:
            site.umount(name)
    # fuse-overlayfs 1.10 copies a directory up (d/, to create d/theirs) with an override of its
    # own that drops the lower one: owner nobody, mode 0755 instead of 2:2 and 01777.  The kernel
    # keeps a copied-up directory's owner and mode; so does layerfs, checked by value below.
    fo_after, lf_after = dict(views["fo"][1]), dict(views["lf"][1])
    assert lf_after.pop("d") == views["lf"][0]["d"] == [100002, 200002]
    fo_after.pop("d")
    assert views["fo"][0] == views["lf"][0] and fo_after == lf_after
    ours = _disk_owners(site.base / "lf" / "up")
    theirs = _disk_owners(site.base / "fo" / "up")
    assert ours.pop("d") == (2, 2) and os.getxattr(site.base / "lf" / "up" / "d", _override.XATTR) == b"2:2:1777:dir"
    theirs.pop("d")
    # chgrp alone: fuse-overlayfs 1.10 keeps the uid chown(2) was given, -1 ("unchanged"), in its
    # override; the owner it then shows is the overflow ID, as layerfs's 0 shows (compared above)
    assert theirs.pop("d/x")[1] == 9
    assert theirs == {k: v for k, v in ours.items() if k != "d/x"}
    before = views["lf"][0]
    assert before["."] == [NOBODY, NOBODY] and before["f5"] == [100005, 200006]
    assert before["f1000"] == [NOBODY, NOBODY] and before["link"] == [NOBODY, NOBODY]   # no range holds them
    assert ours["f0"] == (3, 4) and ours["f5"] == (0, 0) and ours["f1000"] == (NOBODY, NOBODY)
    assert ours["mine"] == ours["mydir"] == ours["d/theirs"] == (0, 0) and ours["d/x"] == (0, 9)
    assert os.getxattr(site.base / "lf" / "up" / "mine", _override.XATTR) == b"0:0:0644:file"


@pytest.mark.parametrize("site", ["nobody"], indirect=True)
def test_the_namespace_root_keeps_a_setgid_bit_as_root_does(site: Site) -> None:
    """The caller the mapping makes the image's root (a rootless container's root, with
    CAP_FSETID) creates a setgid file in a setgid directory whose group it is not in: the bit
    stays, as for root and as the kernel does for a caller with CAP_FSETID.  Before: only host
    uid 0 kept it."""
    mnt = site.mount("lf", USER_UIDS, USER_GIDS)
    try:
        _sh(f"python3 -c '{SETGID_FILE}' \"$1/sg/made\"", mnt, *AS_NOBODY_ACTING)
        # only the mounting user may enter
        proc = subprocess.run([*AS_NOBODY_ACTING, "stat", "-c", "%g %a", str(mnt / "sg" / "made")],
                              capture_output=True, text=True, timeout=60)
    finally:
        site.umount("lf")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["200007", "2755"]


def test_a_users_symlinks_show_as_the_caller_under_a_mapping(tmp_path: Path) -> None:
    """A user's symlinks carry no override, so on disk they are the user's: under
    ``uidmapping=0:UID:1`` (a rootless run's) they show as the user's, as the files whose override
    says root do, and chown -h to the user works; so for a symlink made in the mount.  Before: the
    user's own ID, taken as an image ID no range holds, showed as the overflow ID, and the
    container's root could not lchown them (dpkg and tar -p do).  The user is not nobody: nobody's
    ID is the overflow ID, which would hide the difference; it is daemon (uid 1), a user of every
    Debian system that fusermount3 can name."""
    require_root()
    require_fuse()
    require_tool("setpriv")
    user = 1
    base = Path(tempfile.mkdtemp(prefix="layerfs-idmap-link-"))
    try:
        os.chmod(base, 0o755)
        for sub in ("l1", "up", "wk", "mnt", "run"):
            (base / sub).mkdir()
            os.chown(base / sub, user, user)
        (base / "l1" / "f").write_text("f\n")
        (base / "l1" / "link").symlink_to("f")
        os.chown(base / "l1" / "f", user, user)
        os.lchown(base / "l1" / "link", user, user)
        os.setxattr(base / "l1" / "f", _override.XATTR, b"0:0:0644:file")
        os.setxattr(base / "l1", _override.XATTR, b"0:0:0755:dir")
        os.setxattr(base / "up", _override.XATTR, b"0:0:0755:dir")  # root's, as a container's upper
        who = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(base / "run"), HOME=str(base / "run"))
        env.pop("LAYERFS_ROOT", None)
        opts = (f"lowerdir={base / 'l1'},upperdir={base / 'up'},workdir={base / 'wk'},"
                f"uidmapping=0:{user}:1,gidmapping=0:{user}:1")
        proc = subprocess.run([*who, sys.executable, "-m", "layerfs", "--root", str(base / "run" / "store"), "mount",
                               "-o", opts, str(base / "mnt")], capture_output=True, text=True, env=env, timeout=120,
                              cwd="/")
        assert proc.returncode == 0, proc.stderr
        try:
            _sh('set -e; ln -s f "$1/mine"; chown -h 1:1 "$1/link" "$1/mine"', base / "mnt", *who)
            # only the user may enter
            proc = subprocess.run([*who, "sh", "-c", 'cd "$1" && stat -c "%n %u %g" f link mine', "sh",
                                   str(base / "mnt")], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            owners = {n: (int(u), int(g)) for n, u, g in (line.split() for line in proc.stdout.splitlines())}
        finally:
            subprocess.run([*who, sys.executable, "-m", "layerfs", "umount", str(base / "mnt")], capture_output=True,
                           env=env, timeout=120, cwd="/")
        assert owners == {"f": (user, user), "link": (user, user), "mine": (user, user)}
        assert os.lstat(base / "up" / "link")[4:6] == os.lstat(base / "up" / "mine")[4:6] == (user, user)
    finally:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].startswith(str(base) + "/"):
                unmount(Path(line.split()[4]))
        shutil.rmtree(base, ignore_errors=True)
