"""Container commands: ``ps`` (``container ls``), and ``rm`` of containers (see ``_store.containers``)."""

from __future__ import annotations

import argparse
import json

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
