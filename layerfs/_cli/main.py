"""The ``layerfs`` command line: a thin layer over the public API.

Each command group lives in its own module of this package with a ``register(subparsers)`` function
that adds its subcommands; a subcommand's handler takes the parsed arguments and returns the exit
status.  Errors the user can act on (:class:`LayerfsError`) end as one line on stderr,
``Error: <what>: <cause>``, and exit status 1; ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .._errors import LayerfsError

#: The modules that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "layerfs._cli.registry",
    "layerfs._cli.image",
    "layerfs._cli.mount",
    "layerfs._cli.container",
    "layerfs._cli.run",
    "layerfs._cli.system",
]

_DESCRIPTION = """\
Pull, unpack and mount OCI and Docker images without a daemon.

layerfs keeps images in a content-addressed store (--root): every layer is unpacked once, in
overlay form, into a directory named after its diff ID and shared by all images that use it.

examples:
  layerfs pull alpine                   pull from a registry, like `docker pull` (also login, logout)
  layerfs load oci:./layout:latest      load an OCI image layout (also oci-archive:, docker-archive:)
  layerfs images                        list images, like `docker image ls`
  layerfs inspect busybox:latest        show an image's config and layers as JSON
  layerfs mount busybox:latest ./rootfs mount an image as a merged read-only tree (also umount, mounts)
"""


def default_root() -> str:
    """``$LAYERFS_ROOT``, else ``/var/lib/layerfs`` for root, else ``$XDG_DATA_HOME/layerfs``."""
    env = os.environ.get("LAYERFS_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/layerfs"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "layerfs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerfs", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", metavar="DIR", default=None,
                        help="the store directory (env LAYERFS_ROOT; default /var/lib/layerfs for root, "
                             "$XDG_DATA_HOME/layerfs otherwise)")
    parser.add_argument("--debug", action="store_true", help="log what happens, and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # The global options are accepted after the command too (`layerfs images --root R`).
    for subparser in set(sub.choices.values()):
        subparser.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.root is None:
        args.root = default_root()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.handler(args)
    except LayerfsError as err:
        if args.debug:
            logging.exception("command failed")
        print(f"Error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if args.debug:
            logging.exception("command failed")
        where = f": {err.filename}" if err.filename else ""
        print(f"Error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
