"""Commands that send images out: ``push`` (to a registry) and ``save`` (to an archive)."""

from __future__ import annotations

import argparse
import sys

from .._errors import InvalidReference
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .._store.store import Store
from .remote import add_registry_options, registry_client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("push", formatter_class=fmt, help="push an image to a registry, like `docker push`",
                       description="""\
Upload an image to an OCI / Docker v2 registry as REF (default: the IMAGE name itself, which must
then name a registry repository), with the credentials pull uses (`layerfs login`).  Blobs the
repository has are not sent again; blobs another repository of the same registry has are
mounted from it; the rest are uploaded from the store (which keeps each layer's blob as it was
pulled or loaded), the manifest last.  A pulled image pushes with its original digests.

examples:
  layerfs push 127.0.0.1:5000/app:1
  layerfs push myapp:dev registry.example.com/team/app:dev
  layerfs push --insecure-registry reg.lan:5000 app reg.lan:5000/app:latest
  layerfs push --creds ci:$TOKEN --tls-verify=false app reg.lan:5000/app:latest""")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("reference", nargs="?", metavar="REF")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="talk to this registry over plain HTTP (localhost and 127.0.0.1 always are)")
    add_registry_options(p, insecure=False)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")
    p.set_defaults(handler=cmd_push)

    p = sub.add_parser("save", formatter_class=fmt, help="save images to an archive, like `docker save`",
                       description="""\
Write images into one archive that `layerfs load`, `skopeo` and `docker load` accept: an OCI
image layout as a tar (oci-archive, the default) or what `docker save` writes (docker-archive).
The layers are the blobs the store kept as they were pulled or loaded, so a saved image loads
back with the same image ID.  To FILE with -o, else to standard output (not a terminal).

examples:
  layerfs save -o busybox.tar busybox:latest
  layerfs save --format docker-archive app:1 app:2 | gzip > apps.tar.gz
  layerfs save -o img.tar app:1 && skopeo inspect oci-archive:img.tar""")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: standard output)")
    p.add_argument("--format", choices=["oci-archive", "docker-archive"], default="oci-archive",
                   help="the archive's format (default oci-archive)")
    p.set_defaults(handler=cmd_save)


def cmd_push(args: argparse.Namespace) -> int:
    from .._transfer.progress import for_stream
    from .._transfer.push import push

    try:
        target: Reference | None = parse_reference(args.reference or args.image)
    except InvalidReference:
        target = None  # an image ID and no REF: push says what to give
    progress = for_stream(sys.stdout, quiet=args.quiet)
    with registry_client(args, target) as client:
        digest = push(Store(args.root), args.image, args.reference, progress=progress, client=client)
    if args.quiet:
        print(digest)
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from .._errors import LayerfsError
    from .._transfer.save import save_to

    if args.output is None and sys.stdout.isatty():
        raise LayerfsError("refusing to write an archive to a terminal: give -o FILE or redirect the output")
    save_to(Store(args.root), args.images, args.output, fmt=args.format)
    return 0
