"""Store upkeep: ``image prune``, ``container prune`` (and ``container ls``), ``system prune``, ``verify``."""

from __future__ import annotations

import argparse
import sys

from .._errors import LayerfsError
from .._maint import prune as _prune
from .._maint import verify as _verify
from .._store.store import Store
from .._units import human_size
from .container import cmd_ps


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
List containers, as `layerfs ps`.

examples:
  layerfs container ls
  layerfs container ls -q""")
    p.add_argument("-q", "--quiet", action="store_true", help="only the container IDs")
    p.add_argument("--no-trunc", action="store_true", help="full container IDs")
    p.add_argument("--format", choices=["table", "json"], default="table")
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

    system = sub.add_parser("system", formatter_class=fmt, help="system commands: prune",
                            description="Store-wide commands, as `docker system ...`.")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
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
    print(f"{left} problem(s) left in {total} objects checked" + ("" if args.repair else
                                                                    " (layerfs verify --repair removes them)"),
          file=sys.stderr)
    return 1
