"""Every whiteout and opaque-directory marker form, in one place (fuse-overlayfs ``whiteout.rs``).

This module is the one definition of the forms for Python.  The C walk that builds a mount's
merged index (``csrc/mergebuild.c``) reads the same forms and exports them under the names used
here (``layerfs._mount.index.marker_forms``); ``tests/test_whiteout.py`` checks they are equal.

The forms (docs/overlay.rst "Whiteouts and opaque directories"):

========================================  ==========================================  ===============
form                                      meaning                                     layerfs
========================================  ==========================================  ===============
char device 0/0 named X                   whiteout of X                               writes, reads
empty regular file X with xattr           whiteout of X, only if its parent dir has   reads
``trusted.overlay.whiteout`` (or          ``overlay.opaque=x``
``user.overlay.whiteout``)
dir xattr ``trusted.overlay.opaque=y``    opaque dir: lower same-named dirs ignored   writes (root)
dir xattr ``user.overlay.opaque=y``       opaque dir (userxattr / user namespace)     writes (rootless)
dir xattr ``overlay.opaque=x``            "holds xattr whiteouts", NOT opaque         reads
file ``.wh.X`` (OCI tar marker)           whiteout of X in the layers below           reads
file ``.wh..wh..opq`` (OCI tar marker)    its dir is opaque                           reads
dir xattr ``user.fuseoverlayfs.opaque=y`` opaque (fuse-overlayfs fallback)            reads
========================================  ==========================================  ===============

The unpacker converts OCI tar markers into the overlay form (docs/oci.rst "Overlay form"): ``.wh.X``
becomes a 0/0 char device X (``mknod`` of 0/0 needs no privilege since Linux 5.8), ``.wh..wh..opq``
becomes the opaque xattr on its directory, ``trusted.`` as root and ``user.`` otherwise.  Readers
(the merge) accept every form above, so a layer written by another tool, or a former upper, reads
the same.

Names starting with ``.wh..wh.`` other than the opaque marker are AUFS metadata (``.wh..wh.plnk``),
ignored like moby does.  ``.wh.`` alone, ``.wh..`` and ``.wh...`` are invalid.
"""

from __future__ import annotations

import enum
import errno
import os
import stat

from .. import _sys

#: Prefix of an OCI whiteout marker: ``.wh.X`` hides X of the layers below.
WHITEOUT_PREFIX = ".wh."
#: Prefix of AUFS/OCI metadata names (``.wh..wh..opq``, ``.wh..wh.plnk``).
META_PREFIX = ".wh..wh."
#: The OCI opaque marker: its directory hides every lower child.
OPAQUE_MARKER = ".wh..wh..opq"

#: Opaque-directory xattrs, in the order fuse-overlayfs tests them; value ``y`` means opaque.
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
#: The value of any of :data:`OPAQUE_XATTRS` that makes its directory opaque.
OPAQUE_VALUE = b"y"
#: The kernel's own opaque xattrs: only these take the value :data:`XATTR_WHITEOUTS_VALUE`.
KERNEL_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
#: The overlay.opaque value that means "this dir may hold xattr whiteouts" (not opaque).
XATTR_WHITEOUTS_VALUE = b"x"
#: xattrs that turn an empty regular file into a whiteout (kernel, userspace-written only).
WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
#: xattrs of an upper file whose data is still the lower file's (the kernel's metadata-only
#: copy-up, docs/overlay.rst "Metadata-only copy-up"); the value does not matter.
METACOPY_XATTRS = ("trusted.overlay.metacopy", "user.overlay.metacopy")
#: xattrs naming where an upper object's lower data or directory comes from after a rename
#: (the kernel's ``redirect_dir``): ``/abs/path`` from the root, or a name in the same directory.
REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
#: xattr namespaces private to overlay implementations: never taken from a layer tar, never shown
#: to users, never copied up (docs/overlay.rst "Private xattrs"); the last is where rootless
#: containers-storage and layerfs keep the owners an unprivileged unpack cannot give
#: (``layerfs._layer.override``).
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.", "user.containers.override_")


class Marker(enum.Enum):
    """What a name in an OCI layer tar means (see :func:`classify`)."""

    #: an ordinary name
    NONE = "none"
    #: ``.wh.X``: a whiteout of X
    WHITEOUT = "whiteout"
    #: ``.wh..wh..opq``: the directory is opaque
    OPAQUE = "opaque"
    #: ``.wh..wh.*`` other than the opaque marker: AUFS metadata, ignored
    META = "meta"
    #: ``.wh.``, ``.wh..``, ``.wh...``: invalid
    INVALID = "invalid"


def classify(name: str) -> Marker:
    """Classify one path component of a layer tar entry (docs/oci.rst "Whiteout markers"; image-spec
    layer.md "Whiteouts").

    Args:
        name: a single component (no ``/``).

    Returns:
        The :class:`Marker` kind.
    """
    if not name.startswith(WHITEOUT_PREFIX):
        return Marker.NONE
    if name == OPAQUE_MARKER:
        return Marker.OPAQUE
    if name.startswith(META_PREFIX):
        return Marker.META
    if name in (".wh.", ".wh..", ".wh..."):
        return Marker.INVALID
    return Marker.WHITEOUT


def whiteout_target(name: str) -> str | None:
    """``".wh.X"`` -> ``"X"``; None for anything that is not a whiteout marker of a valid name."""
    if classify(name) is not Marker.WHITEOUT:
        return None
    return name[len(WHITEOUT_PREFIX):]


def whiteout_name(name: str) -> str:
    """The OCI marker name that whites out ``name``: ``"X"`` -> ``".wh.X"``."""
    return WHITEOUT_PREFIX + name


def is_private_xattr(name: str) -> bool:
    """True for xattrs private to overlay implementations (:data:`PRIVATE_XATTR_PREFIXES`)."""
    return name.startswith(PRIVATE_XATTR_PREFIXES)


# -- writing (overlay form) -------------------------------------------------------------------

def opaque_xattr(privileged: bool) -> str:
    """The xattr that marks an opaque dir: ``trusted.overlay.opaque`` as root, else ``user.``."""
    return OPAQUE_XATTRS[0] if privileged else OPAQUE_XATTRS[1]


def write_whiteout(dirfd: int, name: str, *, uid: int | None = None, gid: int | None = None) -> None:
    """Create the overlay whiteout of ``name`` in ``dirfd``: a 0/0 char device, mode 0000.

    Args:
        dirfd: the directory (an O_PATH fd is fine).
        name: a single component.
        uid, gid: the owner to give it (the marker's, as moby/containerd do); None leaves ours.

    Raises:
        OSError: ``EEXIST`` if the name exists; ``EPERM`` before Linux 5.8 unprivileged.
    """
    os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dirfd)
    if uid is not None and gid is not None:
        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    # mknod applies the umask; the kernel's own whiteouts are mode 0000
    os.chmod(name, 0, dir_fd=dirfd)


def write_opaque(fd: int, *, privileged: bool) -> None:
    """Mark directory ``fd`` opaque (``<ns>.overlay.opaque=y``).

    Raises:
        OSError: ``EPERM`` for ``trusted.*`` without CAP_SYS_ADMIN, ``ENOTSUP``.
    """
    _sys.setxattrat(fd, "", opaque_xattr(privileged), b"y")


# -- reading (every form) ---------------------------------------------------------------------

def is_whiteout_device(st: os.stat_result) -> bool:
    """True for the kernel whiteout form: a char device 0/0.  (Never use nlink to spot one.)"""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_whiteout(st: os.stat_result, *, dirfd: int | None = None, name: str | None = None,
                xattr_whiteouts: bool = False) -> bool:
    """True if the entry ``name`` in ``dirfd`` with lstat result ``st`` is a whiteout.

    Args:
        st: the entry's ``lstat``.
        dirfd, name: where it is; needed only to read xattr whiteouts.
        xattr_whiteouts: True if the parent dir holds xattr whiteouts (see
            :func:`holds_xattr_whiteouts`); only then is an empty regular file carrying
            ``*.overlay.whiteout`` a whiteout (the kernel's overlayfs.rst "Nesting overlayfs mounts").

    Returns:
        True for a 0/0 char device, or an xattr whiteout as above.  OCI ``.wh.X`` marker files
        are names, not whiteouts of themselves: see :func:`whiteout_target`.
    """
    if is_whiteout_device(st):
        return True
    if not (xattr_whiteouts and dirfd is not None and name is not None):
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    return any(_sys.getxattrat(dirfd, name, attr) is not None for attr in WHITEOUT_XATTRS)


def _opaque_values(fd: int, attrs: tuple[str, ...] = OPAQUE_XATTRS) -> list[bytes]:
    values = []
    for attr in attrs:
        try:
            value = _sys.getxattrat(fd, "", attr)
        except PermissionError:
            value = None   # trusted.* unreadable without privilege: not ours to see
        if value is not None:
            values.append(value)
    return values


def is_opaque(fd: int) -> bool:
    """True if directory ``fd`` is opaque in any form: an ``overlay.opaque=y`` xattr of any
    namespace (fuse-overlayfs order), or an OCI ``.wh..wh..opq`` file inside it.

    ``fd`` may be an O_PATH fd.

    Raises:
        OSError: on I/O errors (missing xattrs are not errors).
    """
    if any(value == OPAQUE_VALUE for value in _opaque_values(fd)):
        return True
    try:
        os.stat(OPAQUE_MARKER, dir_fd=fd, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    return True


def holds_xattr_whiteouts(fd: int) -> bool:
    """True if directory ``fd`` carries the kernel's ``overlay.opaque=x``
    (:data:`KERNEL_OPAQUE_XATTRS`): its empty files with ``overlay.whiteout`` are whiteouts (and
    the dir itself is not opaque)."""
    return any(value == XATTR_WHITEOUTS_VALUE for value in _opaque_values(fd, KERNEL_OPAQUE_XATTRS))


def whited_out_names(fd: int) -> set[str]:
    """The names that directory ``fd`` whites out, in every form: 0/0 devices, xattr whiteouts
    (when the dir holds them), and OCI ``.wh.X`` marker files (the X).

    This is the per-layer whiteout set the merge wants instead of probing ``.wh.<name>`` per
    lookup (docs/overlay.rst "Layers and lookup").

    Raises:
        OSError: if the directory cannot be listed.
    """
    xattr_ok = holds_xattr_whiteouts(fd)
    names: set[str] = set()
    with os.scandir(fd) as it:
        for entry in it:
            target = whiteout_target(entry.name)
            if target is not None:
                names.add(target)
                continue
            if entry.is_dir(follow_symlinks=False) or entry.is_symlink():
                continue
            st = entry.stat(follow_symlinks=False)
            if is_whiteout(st, dirfd=fd, name=entry.name, xattr_whiteouts=xattr_ok):
                names.add(entry.name)
    return names
