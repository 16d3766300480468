"""Commands that use an image: ``run`` (through a real OCI runtime) and ``bundle``."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from .._errors import LayerfsError
from .._mount import daemon as _mount
from .._run import bundle as _bundle
from .._run import config as _config
from .._run import runtime as _runtime
from .._store import containers as _containers
from .._store.containers import Container
from .._store.store import Image, Store
from .mount import _ensure_image


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("run", formatter_class=fmt, help="run a command in an image, through runc or crun",
                       description="""\
Run a command in a container of IMAGE, as `docker run` does, through an OCI runtime found on the
machine (runc, else crun; --runtime to choose).  The image is pulled if the store lacks it.  The
container's root filesystem is a writable layerfs mount; what the command changes stays in the
container (see `layerfs ps`, `diff`, `commit`) unless --rm.

The process is the image's Entrypoint and Cmd (a COMMAND given replaces Cmd), with its Env,
WorkingDir and User (-e, -w, -u override them; a user name is looked up in the image's own
/etc/passwd).  It runs in new mount, PID, UTS and IPC namespaces (and a user namespace when not
root), with /proc, a minimal /dev and a read-only /sys, docker's default capabilities, and the
caller's own rlimits.  Standard output and error pass through; standard input only with -i; -t
gives it a terminal.  layerfs exits with the command's exit status, and signals it receives go
to the command.

Networking: no network set-up of its own.  --network host (the default) shares the host's
network namespace (and binds its /etc/resolv.conf and /etc/hosts over the image's, when the
image has them); --network none gives an empty network namespace.

examples:
  layerfs run busybox echo hello
  layerfs run --rm -it debian:12 bash
  layerfs run --name build -w /src -e CC=gcc debian:12 make
  layerfs run -u nobody --network none alpine id""")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    _add_run_options(p)
    p.add_argument("--runtime", metavar="RUNTIME", help=f"the OCI runtime to run with (default: the first of "
                                                          f"{', '.join(_runtime.RUNTIMES)} found on PATH)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("bundle", formatter_class=fmt, help="make an OCI runtime bundle of an image (mounted)",
                       description="""\
Make DIR an OCI runtime bundle of IMAGE: DIR/config.json generated from the image's config (as
`layerfs run` generates it) and DIR/rootfs, a writable layerfs mount of a new container (or of
--name's).  What `umoci unpack` makes, but mounted, not copied.  Run it by hand with
`runc run -b DIR ID`; `layerfs umount DIR/rootfs` ends the mount.

examples:
  layerfs bundle busybox ./bb && runc run -b ./bb mybox
  layerfs bundle --name dev -u 1000 debian:12 ./dev-bundle""")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    _add_run_options(p)
    p.set_defaults(handler=cmd_bundle)

    p = sub.add_parser("export", formatter_class=fmt, help="write the merged tree of a container or image as a tar",
                       description="""\
Write the merged tree of a container (its image with its changes) or of an image as one plain tar
archive, as `docker export` does: to FILE with -o, else to standard output.  Entries keep type,
mode, owner, times (PAX, to the nanosecond), xattrs, hard links, devices and link targets; no
whiteouts (it is one tree, not a layer).

examples:
  layerfs export -o rootfs.tar web
  layerfs export busybox:latest | tar -tvf -""")
    p.add_argument("source", metavar="CONTAINER|IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: standard output)")
    p.set_defaults(handler=cmd_export)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="NAME", help="the container (made if missing; reused with its changes)")
    p.add_argument("--rm", action="store_true", help="remove the container and its changes afterwards")
    p.add_argument("--read-only", action="store_true", help="the root filesystem is read-only for the process")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (K alone: the caller's value); repeatable")
    p.add_argument("-w", "--workdir", metavar="DIR", help="the working directory (absolute)")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run as this user (name or number)")
    p.add_argument("--hostname", metavar="NAME", help="the container's hostname (default: its 12-digit ID)")
    p.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="pass standard input through")
    p.add_argument("--network", choices=_config.NETWORKS, default="host",
                   help="host: share the host's network namespace (default); none: an empty one")


def _options(args: argparse.Namespace) -> _config.RunOptions:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    return _config.RunOptions(command=command, env=args.env, workdir=args.workdir, user=args.user,
                              hostname=args.hostname, terminal=args.tty, network=args.network,
                              read_only=args.read_only)


def _container(store: Store, image: Image, args: argparse.Namespace) -> tuple[Container, bool]:
    """The container ``--name`` names (its image must be IMAGE), or a new one; True if new."""
    existing = _containers.find(store, args.name) if args.name else None
    if existing is not None:
        if existing.image_id != image.id:
            raise LayerfsError(f"container {existing.name} belongs to image {existing.image_id[7:19]}, not "
                               f"{args.image}")
        return existing, False
    return _containers.create(store, image.id, name=args.name, remove_on_umount=args.rm), True


def cmd_run(args: argparse.Namespace) -> int:
    if args.tty and not sys.stdin.isatty():
        # runc relays its own terminal to the container's: without one it can only fail, later and vaguely
        raise LayerfsError("the input device is not a TTY (run from a terminal, or without -t)")
    store = Store(args.root)
    opts = _options(args)
    runtime = _runtime.find(args.runtime)
    _ensure_image(store, args.image)
    image = store.get(args.image)
    _config.command_of(image.config, opts.command)  # no command: fail before making anything
    container, new = _container(store, image, args)
    bundle_dir = _mount.runtime_root(create=True) / "bundles" / container.id
    status = 1
    made = None
    try:
        made = _bundle.make(store, image, container, bundle_dir, opts, rootless=os.geteuid() != 0)
        status = _runtime.run_bundle(runtime, made.path, f"layerfs-{container.id[:16]}",
                                     stdin=args.interactive or args.tty)
    finally:
        if made is not None and made.mounted_here:
            with contextlib.suppress(LayerfsError, OSError):
                _mount.umount(made.rootfs, store=Store(args.root))
        shutil.rmtree(bundle_dir, ignore_errors=True)
        if (args.rm or (new and made is None)) and _containers.find(store, container.id) is not None:
            with contextlib.suppress(LayerfsError, OSError):
                _containers.remove(store, container.id)
    sys.stdout.flush()
    return status


def cmd_bundle(args: argparse.Namespace) -> int:
    store = Store(args.root)
    opts = _options(args)
    _ensure_image(store, args.image)
    image = store.get(args.image)
    _config.command_of(image.config, opts.command)
    container, new = _container(store, image, args)
    try:
        made = _bundle.make(store, image, container, Path(os.path.abspath(args.dir)), opts,
                            rootless=os.geteuid() != 0)
    except BaseException:
        if new:
            with contextlib.suppress(LayerfsError, OSError):
                _containers.remove(store, container.id)
        raise
    print(f"{made.path}: config.json and rootfs/ (container {container.name}); run it with "
          f"`runc run -b {made.path} {container.name}`, end it with `layerfs umount {made.rootfs}`")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Mount the source (read-only for an image; a container where it is mounted, or a temporary
    mount of it), write its tree as a tar, unmount what was mounted for this."""
    import tempfile

    from .._layer.compress import Compression
    from .._layer.generate import generate_layer

    store = Store(args.root)
    container = _containers.find(store, args.source)
    if container is None:
        store.get(args.source)  # No such image / container: one line, before anything is made
    if args.output is None and sys.stdout.isatty():
        raise LayerfsError("refusing to write a tar archive to a terminal: give -o FILE or redirect the output")
    where = _containers.mounted_at(store, container) if container else []
    tmp = None
    if where:
        mapped = next((m.idmap for m in _mount.mounts() if m.mountpoint == where[0]), ())
        if mapped:  # the tar would hold the owners the mount shows, not the container's
            raise LayerfsError(f"container {args.source} is mounted at {where[0]} with -o {','.join(mapped)}: "
                               f"its owners show mapped there; run `layerfs umount {where[0]}` first")
        tree = Path(where[0])
    else:
        tmp = Path(tempfile.mkdtemp(prefix="layerfs-export-"))
        tree = tmp / "root"
        tree.mkdir()
        if container is not None:
            _mount.mount(store, container.image_id, tree, container=container)
        else:
            _mount.mount(store, args.source, tree)
    try:
        if args.output:
            out_path = Path(args.output)
            part = out_path.with_name(f".{out_path.name}.part")
            with open(part, "wb") as out:
                generate_layer(tree, [], out, compression=Compression.PLAIN)
            os.replace(part, out_path)
        else:
            with os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=1 << 20) as out:
                generate_layer(tree, [], out, compression=Compression.PLAIN)
    finally:
        if tmp is not None:
            with contextlib.suppress(LayerfsError, OSError):
                _mount.umount(tree, store=store)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
