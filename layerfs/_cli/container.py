"""Container commands: ``ps`` (``container ls``), ``diff``, ``commit`` (``rm`` of containers: see ``image``)."""

from __future__ import annotations

import argparse
import json
import os

from .._errors import LayerfsError
from .._store import containers as _containers
from .._store.store import Store
from .._units import human_size, since


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("ps", aliases=["containers"], formatter_class=fmt,
                       help="list containers (writable sides of images), like `docker ps -a`",
                       description="""\\
List the containers of the store: every writable mount of an image belongs to one, and keeps its
changes (its upper directory) until `layerfs rm NAME`.  MOUNTED ON is where a live mount serves
it; SIZE is what its changes take on disk.

examples:
  layerfs ps
  layerfs ps -q | xargs layerfs rm
  layerfs ps --format json""")
    p.add_argument("-q", "--quiet", action="store_true", help="only the container IDs")
    p.add_argument("--no-trunc", action="store_true", help="full container IDs")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one JSON object per container")
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


def cmd_ps(args: argparse.Namespace) -> int:
    store = Store(args.root)
    rows = _containers.containers(store)
    if args.quiet:
        for c in rows:
            print(c.id if args.no_trunc else c.short_id)
        return 0
    mounts = {m.container: m.mountpoint for m in store.mounts() if m.container}
    names = {}
    for image in store.images():
        names[image.id] = image.repo_tags[0] if image.repo_tags else image.short_id
    if args.format == "json":
        for c in rows:
            print(json.dumps({"ID": c.id if args.no_trunc else c.short_id, "Image": names.get(c.image_id, c.image_id),
                              "ImageID": c.image_id, "Names": c.name, "CreatedAt": c.created,
                              "MountedOn": mounts.get(c.id, ""), "Upper": str(c.upper),
                              "Size": human_size(_containers.size(c))}))
        return 0
    table = [["CONTAINER ID", "IMAGE", "CREATED", "MOUNTED ON", "SIZE", "NAMES"]]
    for c in rows:
        table.append([c.id if args.no_trunc else c.short_id, names.get(c.image_id, c.image_id[7:19]),
                      since(c.created), mounts.get(c.id, ""), human_size(_containers.size(c)), c.name])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0
