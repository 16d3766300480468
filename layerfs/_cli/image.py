"""Image commands: ``load``, ``images``, ``inspect``, ``tag``, ``rm`` (docker's words and columns)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import BinaryIO

from .._errors import ImageNotFound, LayerfsError
from .._oci.reference import parse as parse_reference
from .._store import containers as _containers
from .._store.store import Image, Store
from .._units import human_size, since


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("load", formatter_class=fmt, help="load an image from an OCI layout or an archive",
                       description="""\
Load images from a directory or archive into the store, verifying every digest, and print
what was loaded as `docker load` does: `Loaded image: NAME` for each name the source gives an
image, `Loaded image ID: ID` for an image it names not at all.  Each layer is unpacked once, in
overlay form, into a directory named after its diff ID; layers already in the store are not
unpacked again.  With no SOURCE, the archive is read from standard input (`docker save`'s
output, plain or compressed), as `docker load` reads it.

SOURCE is one of (skopeo's transport names):
  oci:DIR[:TAG]           an OCI image layout; TAG picks the manifest whose
                          org.opencontainers.image.ref.name is TAG (default: all of them)
  oci-archive:FILE[:TAG]  the same, as a tar file
  docker-archive:FILE     what `docker save` writes; its RepoTags name the images
  PATH                    detected: a layout directory, or either kind of archive

A transport that does not fit the source is refused, naming what the source is.  An entry
tagged with a bare TAG is named after the layout directory: oci:./busybox:1.36 loads as
busybox:1.36; in an archive it loads untagged (name it with --tag).  A multi-platform image
loads this host's platform, or --platform's.  If anything fails, the store is left as it was.

Progress goes to stdout when it is a terminal, and nowhere otherwise (as docker load).

examples:
  layerfs load oci:./busybox-layout:latest
  layerfs load -i app.tar
  docker save app:1 | layerfs load
  layerfs load --platform linux/arm64 oci-archive:multi.tar
  layerfs load --tag myapp:dev app.tar""")
    p.add_argument("source", metavar="SOURCE", nargs="?", help="what to load (default: standard input)")
    p.add_argument("-i", "--input", metavar="FILE",
                   help="read from this archive or layout instead of standard input (as docker load -i)")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="REF",
                   help="also tag the loaded image REF (repeatable)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to load from a multi-platform image (default: this host's)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.set_defaults(handler=cmd_load)

    p = sub.add_parser("images", aliases=["ls"], formatter_class=fmt, help="list images, like `docker image ls`",
                       description="""\
List the images in the store: a row per tag (REPOSITORY TAG IMAGE ID CREATED SIZE), an untagged
image as <none> <none>; with --digests, a row per tag and repo digest, as docker lists them (a
tag pulled under two manifests has two).  SIZE is what the image's layers take unpacked; layers
shared between images are counted in each.  -q prints each image ID once.

examples:
  layerfs images
  layerfs images --digests busybox
  layerfs images -q | xargs layerfs rm -f      remove every image (-f: those tagged in several
                                               repositories too, as docker rmi -f)""")
    p.add_argument("repository", nargs="?", help="only images of this repository (and tag, if given)")
    p.add_argument("--digests", action="store_true", help="show the repo digests: a row per tag and digest")
    p.add_argument("-q", "--quiet", action="store_true", help="only the image IDs")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one JSON object per row, with docker's field names")
    p.set_defaults(handler=cmd_images)

    p = sub.add_parser("inspect", formatter_class=fmt, help="show images as JSON, like `docker image inspect`",
                       description="""\
Print a JSON array with one object per image: docker's fields (Id, RepoTags, RepoDigests, Created,
Architecture, Os, Config, RootFS, Size, ...) plus "Layers", which says where each unpacked layer
lives (Path) with its diff ID, ChainID and size.  IMAGE is a name[:tag], name@digest, image ID or
a unique prefix of one.

examples:
  layerfs inspect busybox:latest
  layerfs inspect 3f57 | jq '.[0].Layers[].Path'""")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("tag", formatter_class=fmt, help="give an image another name: tag SOURCE TARGET",
                       description="""\
Point the reference TARGET (name[:tag]) at the image SOURCE.

examples:
  layerfs tag busybox:latest mybox:1
  layerfs tag 3f57 localhost:5000/team/app:2      before `layerfs push localhost:5000/team/app:2`""")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(handler=cmd_tag)

    p = sub.add_parser("rm", aliases=["rmi"], formatter_class=fmt,
                       help="remove containers or images, like `docker rm` / `docker image rm`",
                       description="""\
Remove containers and images.  A NAME that names a container (see `layerfs ps`) removes the
container and its changes; it is refused while the container is mounted.  `rmi` removes images
only.

Removing name:tag of an image with other tags only untags it; the image goes with its last
reference, and with it every layer no other image uses.  Removing by image ID removes every
name and the image; as with docker rmi, an image tagged in several repositories then needs -f.
An image in use by a mount (see `layerfs mounts`) is never removed, nor one a container was
made from (with -f it is untagged and kept for the container).

examples:
  layerfs rm busybox:latest
  layerfs rm quiet_turing                  a container
  layerfs rm -f 3f57a1b2c3d4
  layerfs images -q | xargs layerfs rm -f  every image""")
    p.add_argument("images", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove an image by ID although it is tagged in several repositories; untag one a "
                        "container was made from (never one a mount uses)")
    p.set_defaults(handler=cmd_rm)


def cmd_load(args: argparse.Namespace) -> int:
    from .._transfer.load import load_images
    from .._transfer.progress import for_stream, is_terminal

    if args.input and args.source:
        raise LayerfsError("load: give SOURCE or -i FILE, not both")
    source: str | BinaryIO | None = args.input or args.source
    if source is None:
        if sys.stdin is None or is_terminal(sys.stdin):
            raise LayerfsError("requested load from stdin, but stdin is empty")
        source = sys.stdin.buffer
    progress = for_stream(sys.stdout, quiet=args.quiet, plain=False)
    for loaded in load_images(Store(args.root), source, tags=args.tag, progress=progress, platform=args.platform):
        if args.quiet:
            print(loaded.image.id)
            continue
        for name in loaded.names:
            print(f"Loaded image: {name}")
        if not loaded.names:
            print(f"Loaded image ID: {loaded.image.id}")
    return 0


def _rows(image: Image, digests: bool) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) rows of an image, as docker lists them (its CLI's
    ``imageFormatTaggedAndDigest``): a row per tag; with ``digests``, a row per tag and repo
    digest of its repository; a repository with digests only: a ``<none>`` tag row per digest
    (one row without ``digests``).  Digests show only with ``digests``."""
    tags: dict[str, list[str]] = {}
    for ref in image.repo_tags:
        repo, _, tag = ref.rpartition(":")
        tags.setdefault(repo, []).append(tag)
    by_repo: dict[str, list[str]] = {}
    for ref in image.repo_digests:
        repo, _, digest = ref.rpartition("@")
        by_repo.setdefault(repo, []).append(digest)
    rows = []
    for repo, names in tags.items():
        found = by_repo.pop(repo, []) if digests else []
        by_repo.pop(repo, None)
        for tag in names:
            rows += [(repo, tag, d) for d in found] or [(repo, tag, "<none>")]
    for repo, found in by_repo.items():
        rows += [(repo, "<none>", d) for d in found] if digests else [(repo, "<none>", "<none>")]
    return rows or [("<none>", "<none>", "<none>")]


def cmd_images(args: argparse.Namespace) -> int:
    store = Store(args.root)
    wanted = None
    if args.repository:
        ref = parse_reference(args.repository, default_tag=False)
        wanted = (ref.familiar_repository, ref.tag)
    table = []
    for image in store.images():
        for repo, tag, digest in _rows(image, args.digests):
            if wanted and (repo != wanted[0] or (wanted[1] and tag != wanted[1])):
                continue
            table.append((image, repo, tag, digest))
    if args.quiet:
        seen = []
        for image, *_ in table:
            ident = image.id if args.no_trunc else image.short_id
            if ident not in seen:
                seen.append(ident)
        print("\n".join(seen)) if seen else None
        return 0
    if args.format == "json":
        for image, repo, tag, digest in table:
            print(json.dumps({"Containers": "N/A", "CreatedAt": image.created, "CreatedSince": since(image.created),
                              "Digest": digest, "ID": image.id if args.no_trunc else image.short_id,
                              "Repository": repo, "Tag": tag, "Size": human_size(image.size),
                              "VirtualSize": human_size(image.size)}))
        return 0
    header = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "CREATED", "SIZE"]
    lines = [header]
    for image, repo, tag, digest in table:
        lines.append([repo, tag, *([digest] if args.digests else []),
                      image.id if args.no_trunc else image.short_id, since(image.created), human_size(image.size)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    store = Store(args.root)
    out, missing = [], []
    for name in args.images:
        try:
            out.append(store.inspect(store.get(name)))
        except ImageNotFound as err:
            missing.append(str(err))
    print(json.dumps(out, indent=4))
    if missing:
        for line in missing:
            print(f"Error: {line}", file=sys.stderr)
        return 1
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    Store(args.root).tag(args.source, args.target)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = Store(args.root)
    status = 0
    images_only = getattr(args, "command", "rm") == "rmi"
    for name in args.images:
        try:
            if not images_only and _containers.find(store, name) is not None:
                print(_containers.remove(store, name, force=args.force))
                continue
            lines = store.remove(name, force=args.force)
        except LayerfsError as err:
            print(f"Error: {err}", file=sys.stderr)
            status = 1
            continue
        for line in lines:
            print(line)
    return status
