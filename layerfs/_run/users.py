"""``USER[:GROUP]`` of an image config (or ``run -u``), resolved as docker resolves it.

The image's own /etc/passwd and /etc/group decide (docker's ``user.GetExecUser``): a name is
looked up there; a number is taken as it is (an unknown uid runs with gid 0, as docker does); the
supplementary groups are the groups of /etc/group that list the user.  The files are read inside
the container's root: opened with ``openat2(RESOLVE_IN_ROOT)`` on the root's fd, so a symlinked
/etc/passwd of the image never leads the read out of it.
"""

from __future__ import annotations

import dataclasses
import errno
import os

from .. import _sys
from .._errors import LayerfsError

#: Bigger files than this are not an /etc/passwd worth reading.
_MAX_FILE = 4 << 20


@dataclasses.dataclass(frozen=True)
class User:
    """A process's identity in the container."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def _read_in_root(root: str, path: str) -> list[list[str]]:
    """The colon-separated records of ``path`` (e.g. ``etc/passwd``) inside ``root``; [] if absent."""
    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _sys.open_in_root(rootfd, path, os.O_RDONLY)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                return []
            raise
        try:
            data = os.read(fd, _MAX_FILE)
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def resolve(root: str, spec: str) -> User:
    """Resolve ``USER[:GROUP]`` (names or numbers; empty: root) against the image at ``root``.

    Raises:
        LayerfsError: a name the image's /etc/passwd or /etc/group does not know (docker's words:
            "unable to find user NAME: no matching entries in passwd file").
    """
    user, _, group = (spec or "0").partition(":")
    passwd = _read_in_root(root, "etc/passwd")
    groups = _read_in_root(root, "etc/group")
    uid, gid, home, name = None, 0, "/", None
    for rec in passwd:
        if len(rec) < 7:
            continue
        if rec[0] == user or (user.isdigit() and rec[2] == user):
            try:
                uid, gid, home, name = int(rec[2]), int(rec[3]), rec[5] or "/", rec[0]
            except ValueError:
                continue
            break
    if uid is None:
        if not user.isdigit():
            raise LayerfsError(f"unable to find user {user}: no matching entries in passwd file")
        uid = int(user)
    if group:
        for rec in groups:
            if len(rec) >= 3 and (rec[0] == group or (group.isdigit() and rec[2] == group)):
                gid = int(rec[2]) if rec[2].isdigit() else gid
                break
        else:
            if not group.isdigit():
                raise LayerfsError(f"unable to find group {group}: no matching entries in group file")
            gid = int(group)
    extra: list[int] = []
    if name is not None:
        for rec in groups:
            if len(rec) >= 4 and name in rec[3].split(",") and rec[2].isdigit() and int(rec[2]) != gid:
                extra.append(int(rec[2]))
    return User(uid, gid, tuple(sorted(set(extra))), home)
