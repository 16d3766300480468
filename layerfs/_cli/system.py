"""Store upkeep: ``image prune``, ``container prune`` (and ``container ls``), ``system prune``, ``verify``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .._errors import LayerfsError
from .._maint import prune as _prune
from .._maint import verify as _verify
from .._store import containers as _containers
from .._store.store import Image, Store
from .._units import human_size, since
from .container import add_ps_options, cmd_ps
from .template import Row, Template, format_rows, render_rows


def _human_size4(size: float) -> str:
    """Sizes as ``docker system df`` prints them: 4 significant digits (``16.43MB``)."""
    return human_size(size, digits=4)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    image = sub.add_parser("image", formatter_class=fmt, help="image commands: prune",
                           description="Image commands, as `docker image ...`.")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    p = isub.add_parser("prune", formatter_class=fmt, help="remove unused images",
                        description="""\
Remove dangling images (no tag), or with -a every image no container and no mount uses, then the
layers, blobs and merged indexes no image needs any more; print what was removed and the space
freed, like `docker image prune`.  Asks first on a terminal; -f does not ask.

examples:
  layerfs image prune
  layerfs image prune -af""")
    p.add_argument("-a", "--all", action="store_true", help="every unused image, not only dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_image_prune)

    container = sub.add_parser("container", formatter_class=fmt, help="container commands: ls, prune",
                               description="Container commands, as `docker container ...`.")
    csub = container.add_subparsers(dest="container_command", metavar="COMMAND", required=True)
    p = csub.add_parser("ls", formatter_class=fmt, help="list containers (as `layerfs ps`)",
                        description="""\
List containers, as `layerfs ps` (the same options, --format templates too).

examples:
  layerfs container ls
  layerfs container ls -q
  layerfs container ls --format '{{.Names}}'""")
    add_ps_options(p)
    p.set_defaults(handler=cmd_ps)
    p = csub.add_parser("prune", formatter_class=fmt, help="remove containers that are not mounted",
                        description="""\
Remove every container no mount serves, with its changes, and print their IDs and the space
freed, like `docker container prune`.  Asks first on a terminal; -f does not ask.

examples:
  layerfs container prune
  layerfs container prune -f""")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_container_prune)

    system = sub.add_parser("system", formatter_class=fmt, help="system commands: df, prune",
                            description="Store-wide commands, as `docker system ...`.")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    p = ssub.add_parser("df", formatter_class=fmt, help="show the store's disk usage, like `docker system df`",
                        description="""\
Show what the store's images, containers and layers take, as `docker system df` does:

  TYPE         TOTAL   ACTIVE   SIZE   RECLAIMABLE
  Images       every image; ACTIVE: those a container or a mount uses; SIZE: their layers
               unpacked, each layer counted once; RECLAIMABLE: what no active image uses (what
               `image prune -a` frees)
  Containers   every container; ACTIVE: those mounted; SIZE: their changes (upper
               directories); RECLAIMABLE: the changes of those not mounted
  Layers       every layer directory; ACTIVE: those an image lists; SIZE: unpacked plus the
               blob kept for save and push; RECLAIMABLE: layers no image lists (what a
               failed pull kept for the next one, for a day)

-v adds a row per image (SIZE, SHARED SIZE: its layers other images use too, UNIQUE SIZE,
CONTAINERS), per container and per layer.  Sizes are docker's (decimal units, 4 digits).
--format takes docker's Go templates: `table`, `json`, `table TEMPLATE` or TEMPLATE with the
fields Type, TotalCount, Active, Size, Reclaimable (with -v: a template over .Images,
.Containers and .Layers).

examples:
  layerfs system df
  layerfs system df -v
  layerfs system df --format '{{.Type}}: {{.Size}}'""")
    p.add_argument("-v", "--verbose", action="store_true", help="a row per image, container and layer")
    p.add_argument("--format", metavar="FORMAT", help="table (default), json, or a Go template")
    p.set_defaults(handler=cmd_system_df)

    p = ssub.add_parser("prune", formatter_class=fmt, help="remove unused containers, then unused images",
                        description="""\
`container prune`, then `image prune` (dangling images, or every unused one with -a), as
`docker system prune`.  Asks first on a terminal; -f does not ask.

examples:
  layerfs system prune
  layerfs system prune -af""")
    p.add_argument("-a", "--all", action="store_true", help="every unused image, not only dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_system_prune)

    p = sub.add_parser("verify", formatter_class=fmt, help="check every blob, layer and record of the store",
                       description="""\
Check the store: every blob against its digest, every layer directory against the tree digest
recorded when it was unpacked, every image, reference, chain, container and mount record for
consistency, every merged index for validity.  Prints one line per problem and exits 1 if any
is left.  --repair removes what is broken so that the next pull or mount makes it again; it never
touches what a live mount uses, and never removes a container (its changes are someone's).

examples:
  layerfs verify
  layerfs verify --repair""")
    p.add_argument("--repair", action="store_true", help="remove what is broken")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_verify)


def _confirm(warning: str, force: bool) -> bool:
    if force:
        return True
    if not sys.stdin.isatty():
        raise LayerfsError("standard input is not a terminal: give -f to prune without confirmation")
    print(f"WARNING! This will remove {warning}.")
    answer = input("Are you sure you want to continue? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _print(title: str, pruned: _prune.Pruned) -> None:
    if pruned.lines:
        print(title)
        for line in pruned.lines:
            print(line)
        print()
    print(f"Total reclaimed space: {human_size(pruned.freed)}")


def cmd_image_prune(args: argparse.Namespace) -> int:
    what = "all images without at least one container associated to them" if args.all else "all dangling images"
    if not _confirm(what, args.force):
        return 0
    _print("Deleted Images:", _prune.prune_images(Store(args.root), all_images=args.all))
    return 0


def cmd_container_prune(args: argparse.Namespace) -> int:
    if not _confirm("all stopped containers", args.force):
        return 0
    _print("Deleted Containers:", _prune.prune_containers(Store(args.root)))
    return 0


def cmd_system_prune(args: argparse.Namespace) -> int:
    images = "all images without at least one container associated to them" if args.all else "all dangling images"
    if not _confirm(f"all stopped containers and {images}", args.force):
        return 0
    store = Store(args.root)
    containers = _prune.prune_containers(store)
    images_pruned = _prune.prune_images(store, all_images=args.all)
    if containers.lines:
        print("Deleted Containers:")
        print("\n".join(containers.lines) + "\n")
    if images_pruned.lines:
        print("Deleted Images:")
        print("\n".join(images_pruned.lines) + "\n")
    print(f"Total reclaimed space: {human_size(containers.freed + images_pruned.freed)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    report = _verify.verify(Store(args.root), repair=args.repair, progress=progress)
    for problem in report.problems:
        print(problem.line())
    total = sum(report.checked.values())
    if report.ok:
        print(f"ok: {total} objects checked" + (f", {len(report.problems)} repaired" if report.problems else ""),
              file=sys.stderr)
        return 0
    left = sum(1 for p in report.problems if not p.repaired or p.repaired.startswith("not "))
    repairable = not args.repair and any(not p.repaired for p in report.problems)
    print(f"{left} problem(s) left in {total} objects checked" + (" (layerfs verify --repair removes them)"
                                                                    if repairable else ""), file=sys.stderr)
    return 1


# -- system df -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerUsage:
    """A layer directory of the store: its diff ID, unpacked size, kept blob's size, and how many
    images list it."""

    diff_id: str
    size: int
    blob: int
    images: int


@dataclasses.dataclass(frozen=True)
class DiskUsage:
    """What ``system df`` reports (see its help), in bytes."""

    images: list[Image]
    active_images: set[str]
    layers: list[LayerUsage]
    containers: list[_containers.Container]
    container_sizes: dict[str, int]
    mounted: set[str]

    def layer(self, diff_id: str) -> LayerUsage | None:
        return next((layer for layer in self.layers if layer.diff_id == diff_id), None)


def _store_layers(store: Store) -> list[str]:
    """The diff IDs of the layers published in the store (``layers/<hex>/layer.json``)."""
    try:
        names = sorted(os.listdir(store.root / "layers"))
    except FileNotFoundError:
        return []
    return [f"sha256:{n}" for n in names if store.has_layer(f"sha256:{n}")]


def disk_usage(store: Store) -> DiskUsage:
    """Measure the store for ``system df``: layer sizes from each layer's record, container sizes
    on disk (``du`` of each upper)."""
    images = store.images()
    containers = _containers.containers(store)
    mounts = store.mounts()
    active = {c.image_id for c in containers} | {m.image_id for m in mounts}
    users: dict[str, int] = {}
    for image in images:
        for diff_id in set(image.diff_ids):
            users[diff_id] = users.get(diff_id, 0) + 1
    layers = []
    for diff_id in _store_layers(store):
        try:
            info = store.layer_info(diff_id)
        except (OSError, LayerfsError):
            continue  # removed meanwhile
        blob = info.get("blob")
        blob_size = blob.get("size") if isinstance(blob, dict) else 0
        size = info.get("size", 0)
        layers.append(LayerUsage(diff_id, size if isinstance(size, int) else 0,
                                 blob_size if isinstance(blob_size, int) else 0, users.get(diff_id, 0)))
    return DiskUsage(images, active, layers, containers, {c.id: _containers.size(c) for c in containers},
                     {m.container for m in mounts if m.container})


def _reclaimable(reclaimable: int, total: int) -> str:
    """docker's RECLAIMABLE cell: the size, and its share of the total."""
    return f"{_human_size4(reclaimable)} ({reclaimable * 100 // total}%)" if total > 0 else _human_size4(reclaimable)


def _summary_rows(du: DiskUsage) -> list[Row]:
    def unpacked(ids: set[str]) -> int:
        return sum(layer.size for d in ids if (layer := du.layer(d)) is not None)

    all_ids = {d for image in du.images for d in image.diff_ids}
    active_ids = {d for image in du.images if image.id in du.active_images for d in image.diff_ids}
    images_size = unpacked(all_ids)
    containers_size = sum(du.container_sizes.values())
    idle = sum(size for cid, size in du.container_sizes.items() if cid not in du.mounted)
    layers_size = sum(layer.size + layer.blob for layer in du.layers)
    unused = sum(layer.size + layer.blob for layer in du.layers if not layer.images)

    def row(kind: str, total: int, active: int, size: int, reclaimable: int) -> Row:
        return Row({"Type": kind, "TotalCount": str(total), "Active": str(active), "Size": _human_size4(size),
                    "Reclaimable": _reclaimable(reclaimable, size)})

    return [row("Images", len(du.images), sum(1 for i in du.images if i.id in du.active_images), images_size,
                images_size - unpacked(active_ids)),
            row("Containers", len(du.containers), sum(1 for c in du.containers if c.id in du.mounted),
                containers_size, idle),
            row("Layers", len(du.layers), sum(1 for layer in du.layers if layer.images), layers_size, unused)]


def _image_rows(du: DiskUsage) -> list[Row]:
    """docker's ``df -v`` image rows: the first tag only, sizes with their shared part."""
    rows = []
    for image in du.images:
        shared = sum(layer.size for d in set(image.diff_ids) if (layer := du.layer(d)) is not None and layer.images > 1)
        repo, _, tag = image.repo_tags[0].rpartition(":") if image.repo_tags else ("<none>", "", "<none>")
        rows.append(Row({"Repository": repo, "Tag": tag, "ID": image.short_id, "CreatedSince": since(image.created),
                         "Size": _human_size4(image.size), "SharedSize": _human_size4(shared),
                         "UniqueSize": _human_size4(image.size - shared),
                         "Containers": str(sum(1 for c in du.containers if c.image_id == image.id))}))
    return rows


def _container_rows(du: DiskUsage, store: Store) -> list[Row]:
    names = {image.id: image.repo_tags[0] if image.repo_tags else image.short_id for image in du.images}
    mounts = {m.container: m.mountpoint for m in store.mounts() if m.container}
    return [Row({"ID": c.short_id, "Image": names.get(c.image_id, c.image_id[7:19]),
                 "Size": _human_size4(du.container_sizes.get(c.id, 0)), "RunningFor": since(c.created),
                 "MountedOn": mounts.get(c.id, ""), "Names": c.name}) for c in du.containers]


def _layer_rows(du: DiskUsage) -> list[Row]:
    return [Row({"DiffID": layer.diff_id[7:19], "Size": _human_size4(layer.size), "BlobSize": _human_size4(layer.blob),
                 "Images": str(layer.images)}) for layer in du.layers]


_DF_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"}
_DF_TABLE = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
_DF_IMAGES = ("table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}\t{{.SharedSize}}\t"
              "{{.UniqueSize}}\t{{.Containers}}")
_DF_IMAGE_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "CreatedSince": "CREATED",
                     "Size": "SIZE", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE",
                     "Containers": "CONTAINERS"}
_DF_CONTAINERS = "table {{.ID}}\t{{.Image}}\t{{.Size}}\t{{.RunningFor}}\t{{.MountedOn}}\t{{.Names}}"
_DF_CONTAINER_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Size": "SIZE", "RunningFor": "CREATED",
                         "MountedOn": "MOUNTED ON", "Names": "NAMES"}
_DF_LAYERS = "table {{.DiffID}}\t{{.Size}}\t{{.BlobSize}}\t{{.Images}}"
_DF_LAYER_HEADERS = {"DiffID": "DIFF ID", "Size": "SIZE", "BlobSize": "BLOB SIZE", "Images": "IMAGES"}


def cmd_system_df(args: argparse.Namespace) -> int:
    store = Store(args.root)
    du = disk_usage(store)
    if not args.verbose:
        sys.stdout.write(format_rows(args.format, _summary_rows(du), _DF_HEADERS, _DF_TABLE))
        return 0
    images, containers, layers = _image_rows(du), _container_rows(du, store), _layer_rows(du)
    if args.format and args.format.strip() != "table":
        everything = {"Images": images, "Containers": containers, "Layers": layers}
        sys.stdout.write(Template(args.format).render(everything) + "\n")
        return 0
    sys.stdout.write("Images space usage:\n\n" + render_rows(_DF_IMAGES, images, _DF_IMAGE_HEADERS))
    sys.stdout.write("\nContainers space usage:\n\n" + render_rows(_DF_CONTAINERS, containers, _DF_CONTAINER_HEADERS))
    sys.stdout.write("\nLayers space usage:\n\n" + render_rows(_DF_LAYERS, layers, _DF_LAYER_HEADERS))
    return 0
