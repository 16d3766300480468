"""Containers: the writable side of an image, as records of the store.

Every writable mount of an image belongs to a container, as in docker: a name, an ID, the image it
was made from, and its upper and work directories (docs/overlay.rst "The writable upper").  A
container outlives its mounts: mounting the same name again continues where it stopped, until
``layerfs rm NAME`` removes it (refused while it is mounted).  Its image cannot be deleted while
it exists (docker's "image is being used by stopped container").

Layout (in the store root)::

    containers/<id>/container.json   id, name, image, created, where the upper and work are, --rm
    containers/<id>/upper/           the upper directory (unless --upper put it elsewhere)
    containers/<id>/work/            its work directory (unless --work put it elsewhere)

A container directory is made under ``tmp/`` and renamed into place, and removed by renaming it
back under ``tmp/`` first (no writes: it works on a full disk), so a crash leaves either all of it
or none.  Records are made and removed under the store lock, so names stay unique.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .._errors import Conflict, ImageNotFound, LayerfsError
from .files import json_bytes, now, remove_now

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .lease import Lease


class Store(Protocol):
    """What this module needs of :class:`layerfs._store.store.Store` (which imports this module)."""

    root: Path

    def _locked(self) -> AbstractContextManager[None]: ...
    def _image_ids(self) -> list[str]: ...
    def temp_dir(self, hint: str) -> Lease: ...
    def _remove_tree(self, path: Path) -> None: ...
    def mounts(self) -> Sequence[MountLike]: ...


class MountLike(Protocol):
    @property
    def mountpoint(self) -> str: ...
    @property
    def container(self) -> str | None: ...

#: docker's rule for container names.
NAME_RE = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}\Z")

# Words for generated names ("adjective_surname", as docker makes them): qualities and the family
# names of people who shaped computing and file systems.
_ADJECTIVES = (
    "agile", "bold", "brave", "bright", "calm", "careful", "clever", "cool", "curious", "daring",
    "eager", "fair", "fond", "gentle", "happy", "hardy", "keen", "kind", "lively", "loyal", "lucid",
    "merry", "modest", "neat", "nimble", "patient", "plucky", "proud", "quiet", "quick", "ready",
    "sharp", "shy", "silent", "sober", "steady", "stoic", "sunny", "swift", "tender", "tidy", "vivid",
    "warm", "wise", "witty", "zealous",
)
_NAMES = (
    "allen", "babbage", "backus", "bell", "bosack", "cerf", "codd", "conway", "corbato", "dijkstra",
    "engelbart", "floyd", "goldberg", "hamilton", "hoare", "hopper", "kahn", "kay", "kernighan",
    "knuth", "lamport", "liskov", "lovelace", "mccarthy", "mcilroy", "minsky", "moore", "naur",
    "neumann", "ossanna", "perlman", "pike", "postel", "ritchie", "shannon", "sammet", "stonebraker",
    "sutherland", "tanenbaum", "thompson", "torvalds", "turing", "wilkes", "wirth", "wozniak",
)


@dataclasses.dataclass(frozen=True)
class Container:
    """A container: an image's writable side."""

    id: str
    name: str
    image_id: str
    created: str
    upper: Path
    work: Path
    #: the upper and work directories are the store's (removed with the container)
    own_dirs: bool
    #: ``--rm``: the container goes when its mount does
    remove_on_umount: bool

    @property
    def short_id(self) -> str:
        return self.id[:12]


def _dir(store: Store, cid: str) -> Path:
    return store.root / "containers" / cid


def _load(store: Store, cid: str) -> Container:
    path = _dir(store, cid) / "container.json"
    data = json.loads(path.read_text())
    base = _dir(store, cid)
    upper = Path(data["upper"]) if data.get("upper") else base / "upper"
    work = Path(data["work"]) if data.get("work") else base / "work"
    return Container(str(data["id"]), str(data["name"]), str(data["image"]), str(data["created"]), upper, work,
                     not data.get("upper"), bool(data.get("rm")))


def containers(store: Store) -> list[Container]:
    """Every container, newest first."""
    try:
        names = os.listdir(store.root / "containers")
    except FileNotFoundError:
        return []
    out = []
    for cid in names:
        if re.fullmatch(r"[0-9a-f]{64}", cid):
            try:
                out.append(_load(store, cid))
            except (OSError, ValueError, KeyError):
                continue  # being made or removed
    out.sort(key=lambda c: (c.created, c.id), reverse=True)
    return out


def find(store: Store, name: str) -> Container | None:
    """The container named ``name`` (or with that ID, or a unique ID prefix of 3+), or None."""
    all_ = containers(store)
    for c in all_:
        if c.name == name or c.id == name:
            return c
    if len(name) >= 3 and re.fullmatch(r"[0-9a-f]+", name):
        matches = [c for c in all_ if c.id.startswith(name)]
        if len(matches) == 1:
            return matches[0]
    return None


def get(store: Store, name: str) -> Container:
    """Like :func:`find`, but raise ``No such container: NAME`` (docker's words)."""
    c = find(store, name)
    if c is None:
        raise LayerfsError(f"No such container: {name}")
    return c


def _generated_name(taken: set[str]) -> str:
    for _ in range(1000):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}"
        if name not in taken:
            return name
    return f"layerfs_{secrets.token_hex(4)}"


def create(store: Store, image_id: str, *, name: str | None = None, upper: Path | None = None,
           work: Path | None = None, remove_on_umount: bool = False) -> Container:
    """Make a container of ``image_id``: its record and, unless given, its upper and work dirs.

    Raises:
        ImageNotFound: the image is not (or no longer) in the store.
        Conflict: the name is taken (docker's words).
        LayerfsError: the name is not a valid container name.
    """
    if name is not None and not NAME_RE.match(name):
        raise LayerfsError(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    with store._locked():
        if image_id not in store._image_ids():
            raise ImageNotFound(f"No such image: {image_id}")
        existing = containers(store)
        if name is not None:
            for c in existing:
                if c.name == name:
                    raise Conflict(f'Conflict. The container name "/{name}" is already in use by container '
                                   f'"{c.id}". You have to remove (or rename) that container to be able to '
                                   f'reuse that name.')
        else:
            name = _generated_name({c.name for c in existing})
        cid = secrets.token_hex(32)
        record = {"id": cid, "name": name, "image": image_id, "created": now(),
                  "upper": str(upper) if upper else None, "work": str(work) if work else None,
                  "rm": remove_on_umount}
        final = _dir(store, cid)
        final.parent.mkdir(exist_ok=True)
        try:
            _make(store, cid, record, final, upper is None, work is None)
        except OSError as err:
            raise OSError(err.errno, f"create container {name}: {err.strerror or err}") from err
    return _load(store, cid)


def _make(store: Store, cid: str, record: Mapping[str, object], final: Path, own_upper: bool, own_work: bool) -> None:
    """Make a container's directory under ``tmp/`` and rename it into place (all or nothing)."""
    with store.temp_dir(f"container-{cid[:12]}") as lease:
        try:
            tmp = Path(lease.path)
            if own_upper:
                (tmp / "upper").mkdir(mode=0o755)
            if own_work:
                (tmp / "work").mkdir(mode=0o700)
            with open(tmp / "container.json", "xb") as f:
                f.write(json_bytes(record))
                os.fsync(f.fileno())
            os.chmod(tmp, 0o700)
            os.rename(tmp, final)
        except BaseException:
            remove_now(Path(lease.path))  # still leased by us: not through _remove_tree's lock
            raise


def mounted_at(store: Store, c: Container) -> list[str]:
    """The mount points where a live mount of the container is recorded."""
    return [m.mountpoint for m in store.mounts() if m.container == c.id]


def remove(store: Store, name: str, *, force: bool = False) -> str:
    """``layerfs rm`` of a container: its record, and its upper and work if they are the store's.

    Refused while it is mounted (``force`` does not change that: unmount it first).

    Returns:
        The container's name, as docker prints it.
    Raises:
        LayerfsError: no such container.
        Conflict: it is mounted.
    """
    with store._locked():
        c = get(store, name)
        where = mounted_at(store, c)
        if where:
            raise Conflict(f"cannot remove container {c.name}: it is mounted at {', '.join(where)} "
                           f"(run `layerfs umount {where[0]}` first)")
        store._remove_tree(_dir(store, c.id))
    return c.name


def users_of_image(store: Store, image_id: str) -> list[Container]:
    """The containers made from ``image_id`` (they keep it from being deleted)."""
    return [c for c in containers(store) if c.image_id == image_id]


def size(c: Container) -> int:
    """Bytes the container's upper uses on disk (``du``)."""
    try:
        out = subprocess.run(["du", "-sb", "--", str(c.upper)], capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return 0
