"""Container commands: ``ps`` (``container ls``), ``diff``, ``commit`` (``rm`` of containers: see ``image``)."""

from __future__ import annotations

import argparse
import os
import sys

from .._errors import LayerfsError
from .._store import containers as _containers
from .._store.store import Store
from .._units import human_size, since
from .rows import go_time_string, unix_time
from .template import Row, format_rows


def add_ps_options(p: argparse.ArgumentParser) -> None:
    """The options of ``ps`` (and ``container ls``)."""
    p.add_argument("-q", "--quiet", action="store_true", help="only the container IDs")
    p.add_argument("--no-trunc", action="store_true", help="full container IDs")
    p.add_argument("--format", metavar="FORMAT",
                   help="table (default), json (an object per container), or a Go template")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("ps", aliases=["containers"], formatter_class=fmt,
                       help="list containers (writable sides of images), like `docker ps -a`",
                       description="""\
List the containers of the store: every writable mount of an image belongs to one, and keeps its
changes (its upper directory) until `layerfs rm NAME`.  MOUNTED ON is where a live mount serves
it; SIZE is what its changes take on disk.

--format takes docker's Go templates: `table` (the default), `json` (an object per container),
`table TEMPLATE` or TEMPLATE, with the fields ID, Names, Image, ImageID, RunningFor (CREATED),
CreatedAt, MountedOn, Size and Upper (the directory of its changes).

examples:
  layerfs ps
  layerfs ps -q | xargs layerfs rm
  layerfs ps --format json
  layerfs ps --format '{{.Names}} {{.Upper}}'""")
    add_ps_options(p)
    p.set_defaults(handler=cmd_ps)

    p = sub.add_parser("diff", formatter_class=fmt, help="show a container's changes, like `docker diff`",
                       description="""\
Print the changes of a container (by name or ID, or the mount point of its mount) against its
image, one per line, as `docker diff` prints them: `A /path` added, `C /path` changed, `D /path`
deleted; a directory with changes below it is `C`.  Sorted by path.

examples:
  layerfs diff web
  layerfs diff ./rootfs""")
    p.add_argument("container", metavar="CONTAINER|MOUNTPOINT")
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("commit", formatter_class=fmt, help="make a new image of a container's changes",
                       description="""\
Make a new image from a container's changes, as `docker commit` does: its upper directory becomes
one layer (an OCI tar with .wh. whiteouts and .wh..wh..opq markers, as docker converts overlay
uppers) on top of the container's image, with a new config (history entry, -c changes) and an
OCI manifest.  Mounting the new image shows what the container showed.  A container that is
mounted is committed as its upper is at that moment (docker's --pause=false): let the programs
writing in it finish first.

examples:
  layerfs commit web myapp:2
  layerfs commit -m "add tools" -c 'CMD ["/bin/sh"]' ./rootfs myapp:dev
  layerfs commit --compress zstd web""")
    p.add_argument("container", metavar="CONTAINER|MOUNTPOINT")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-m", "--message", default="", help="the commit message (the history entry's comment)")
    p.add_argument("-a", "--author", default="", help='the author (e.g. "Jane <jane@example.com>")')
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                        "USER, VOLUME, WORKDIR, ...); repeatable")
    p.add_argument("--compress", choices=["gzip", "zstd", "plain"], default="gzip",
                   help="the new layer's compression (default gzip)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID (the default output)")
    p.set_defaults(handler=cmd_commit)


def _container_arg(store: Store, text: str) -> _containers.Container:
    """A container by name, ID, unique ID prefix, or the mount point of its live mount."""
    c = _containers.find(store, text)
    if c is not None:
        return c
    if os.path.isdir(text):
        real = os.path.realpath(text)
        for m in store.mounts():
            if m.container and os.path.realpath(m.mountpoint) == real:
                c = _containers.find(store, m.container)
                if c is not None:
                    return c
        raise LayerfsError(f"{text}: not the mount point of a container")
    return _containers.get(store, text)


def cmd_diff(args: argparse.Namespace) -> int:
    from .._layer.changes import changes

    store = Store(args.root)
    c = _container_arg(store, args.container)
    image = store.get(c.image_id)
    for change in changes(c.upper, store.layer_dirs(image)):
        print(change)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from .._transfer.commit import commit

    store = Store(args.root)
    c = _container_arg(store, args.container)
    image = commit(store, c.upper, c.image_id, args.reference, message=args.message, author=args.author,
                   changes=args.change, compress=args.compress, created_by=f"layerfs commit {c.name}")
    print(image.id)
    return 0


#: docker's column names for the fields of a ``ps`` row, and layerfs's own.
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "ImageID": "IMAGE ID", "RunningFor": "CREATED",
              "CreatedAt": "CREATED AT", "MountedOn": "MOUNTED ON", "Size": "SIZE", "Names": "NAMES", "Upper": "UPPER"}
PS_TABLE = "table {{.ID}}\t{{.Image}}\t{{.RunningFor}}\t{{.MountedOn}}\t{{.Size}}\t{{.Names}}"


def ps_rows(store: Store, *, trunc: bool) -> list[Row]:
    """A row per container of the store (docker's ``ContainerContext`` fields where they apply):
    Image is the image's first tag, else its short ID; MountedOn where a live mount serves it."""
    mounts = {m.container: m.mountpoint for m in store.mounts() if m.container}
    names = {image.id: image.repo_tags[0] if image.repo_tags else image.short_id for image in store.images()}
    return [Row({"ID": c.short_id if trunc else c.id, "Image": names.get(c.image_id, c.image_id[7:19]),
                 "ImageID": c.image_id, "Names": c.name, "CreatedAt": go_time_string(unix_time(c.created)),
                 "RunningFor": since(c.created), "MountedOn": mounts.get(c.id, ""), "Upper": str(c.upper),
                 "Size": human_size(_containers.size(c))})
            for c in _containers.containers(store)]


def cmd_ps(args: argparse.Namespace) -> int:
    store = Store(args.root)
    if args.quiet and (not args.format or args.format.strip() == "table"):
        for c in _containers.containers(store):
            print(c.id if args.no_trunc else c.short_id)
        return 0
    sys.stdout.write(format_rows(args.format, ps_rows(store, trunc=not args.no_trunc), PS_HEADERS, PS_TABLE))
    return 0
