"""The ``layerfs`` command line: a thin layer over the public API.

Each command group lives in its own module of this package with a ``register(subparsers)`` function
that adds its subcommands; a subcommand's handler takes the parsed arguments and returns the exit
status.  Errors the user can act on (:class:`LayerfsError`) end as one line on stderr,
``Error: <what>: <cause>``, and exit status 1; ``--debug`` shows the traceback too, and layerfs's
own log lines (a second ``--debug`` adds the HTTP library's).  Output into a pipe whose reader is
gone (``layerfs images | head -1``) ends the command quietly by SIGPIPE, as coreutils and docker
end (the shell reports status 141).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import signal
import sys
from collections.abc import Collection, Sequence

from .._errors import LayerfsError

#: The modules that add subcommands, in the order ``--help`` lists them, each with the commands
#: (and aliases) it adds.  A command imports its own module only: a mount program's start
#: (``layerfs -o ... TARGET``) is not slowed by every other command's imports.
#: ``tests/test_cli_commands.py`` checks the lists against what each module registers.
COMMANDS: dict[str, tuple[str, ...]] = {
    "layerfs._cli.registry": ("pull", "login", "logout"),
    "layerfs._cli.remote": ("manifest", "tags"),
    "layerfs._cli.image": ("load", "images", "ls", "history", "inspect", "tag", "rm", "rmi"),
    "layerfs._cli.mount": ("mount", "umount", "unmount", "mounts", "mount-stats"),
    "layerfs._cli.container": ("ps", "containers", "diff", "commit"),
    "layerfs._cli.run": ("run", "bundle", "export"),
    "layerfs._cli.system": ("image", "container", "system", "verify"),
    "layerfs._cli.transfer": ("push", "save"),
}
COMMAND_MODULES = list(COMMANDS)
_MODULE_OF = {command: module for module, commands in COMMANDS.items() for command in commands}

_DESCRIPTION = """\
Pull, unpack and mount OCI and Docker images without a daemon.

layerfs keeps images in a content-addressed store (--root): every layer is unpacked once, in
overlay form, into a directory named after its diff ID and shared by all images that use it.

examples:
  layerfs pull alpine                   pull from a registry, like `docker pull` (also login, logout)
  layerfs load oci:./layout:latest      load an OCI image layout (also oci-archive:, docker-archive:)
  layerfs images                        list images, like `docker image ls`
  layerfs inspect busybox:latest        show an image's config and layers as JSON
  layerfs inspect docker://alpine       the same of an image in its registry, not pulled (also manifest, tags)
  layerfs history busybox:latest        how each layer was made (also system df)
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


def version() -> str:
    """The installed layerfs's version (``setup.py``'s), or ``unknown`` outside an install."""
    from importlib import metadata  # only here: reading the install's metadata costs milliseconds

    try:
        return metadata.version("layerfs")
    except metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: the version, read when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"layerfs version {version()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command``, of that command's module only (what
    :func:`main` uses when the command is known: the others' modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="layerfs", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--root", metavar="DIR", default=None,
                        help="the store directory (env LAYERFS_ROOT; default /var/lib/layerfs for root, "
                             "$XDG_DATA_HOME/layerfs otherwise)")
    parser.add_argument("--debug", action="count", default=0,
                        help="log what layerfs does, and show tracebacks; twice: the HTTP library's "
                             "lines too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name in [_MODULE_OF[command]] if command in _MODULE_OF else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    parser.set_defaults(commands=tuple(_MODULE_OF))  # the names and aliases, for mount_program_argv
    # The global options are accepted after the command too (`layerfs images --root R`).
    for subparser in set(sub.choices.values()):
        subparser.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        subparser.add_argument("--debug", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


#: fuse-overlayfs's flags that may come with its ``-o`` form, as ``mount`` spells them (libfuse's
#: ``-d`` is debug output in the foreground).
_FUSE_FLAGS = {"-f": ["--foreground"], "-d": ["--debug", "--foreground"]}


def _is_o(arg: str) -> bool:
    return arg.startswith("-o")


def _after_globals(argv: Sequence[str]) -> int:
    """The index of the first word of ``argv`` after the global options (``--root DIR``,
    ``--root=DIR``, ``--debug``): the command, or ``len(argv)``."""
    i = 0
    while i < len(argv) and (argv[i] in ("--root", "--debug") or argv[i].startswith("--root=")):
        i += 2 if argv[i] == "--root" else 1
    return min(i, len(argv))


def mount_program_argv(argv: Sequence[str], commands: Collection[str]) -> list[str] | None:
    """The two ways a mount program is called, as ``layerfs mount`` arguments; None for others.

    - ``layerfs -o OPTIONS TARGET`` (also ``-oOPTIONS``, ``-f``, ``-d``): fuse-overlayfs's form,
      which containers-storage's overlay driver uses to run its ``mount_program``;
    - ``layerfs SOURCE TARGET -o OPTIONS``: what mount.fuse3 runs for mount(8) and fstab entries
      of type ``fuse.layerfs`` (SOURCE is ignored with ``lowerdir=``, else it is the image).

    The global options (``--root DIR``, ``--debug``) may come first.  The arguments returned say
    which form it was (``--called-as``): ``mount`` takes what these programs pass (mount(8)'s
    ``rw`` and source on every mount) where it refuses the same from a person.
    """
    i = _after_globals(argv)
    if i >= len(argv):
        return None
    rest = list(argv[i:])
    if _is_o(rest[0]) or rest[0] in _FUSE_FLAGS:
        out, j = ["--called-as", "fuse-overlayfs"], 0
        while j < len(rest):
            if rest[j] == "-o" and j + 1 < len(rest):
                out += rest[j:j + 2]
                j += 2
                continue
            out += _FUSE_FLAGS.get(rest[j], [rest[j]])
            j += 1
        return [*argv[:i], "mount", *out]
    if not rest[0].startswith("-") and rest[0] not in commands and any(_is_o(a) for a in rest[1:]):
        return [*argv[:i], "mount", "--called-as", "mount.fuse", *rest]
    return None


def parse_plain_mount(words: Sequence[str]) -> argparse.Namespace | None:
    """The arguments of a plain ``mount`` command (a mount program's, as :func:`mount_program_argv`
    returns them, or a person's) as :func:`build_parser`'s parser would parse them, without
    building it: ~3 ms of a mount program's start (issue 9).  None for any other command or a
    call that is not plain (``_cli.mount.plain_args`` says which are): argparse parses those."""
    i = _after_globals(words)
    if i >= len(words) or words[i] != "mount":
        return None
    root, debug, j = None, 0, 0
    while j < i:
        if words[j] == "--debug":
            debug, j = debug + 1, j + 1
            continue
        root, j = (words[j + 1], j + 2) if words[j] == "--root" else (words[j][len("--root="):], j + 1)
        if not root or root.startswith("-"):
            return None
    from . import mount

    sub = mount.plain_args(words[i + 1:])
    if sub is None:
        return None
    return argparse.Namespace(**{"root": root, "debug": debug, "command": "mount", "commands": tuple(_MODULE_OF),
                                 **sub})


#: Boolean flags spelled as Go programs spell them, by the commands that have them: given alone
#: they mean true, and a value goes after ``=`` only (``--tls-verify=false``, ``-H=false``): the
#: next word is never theirs.
GO_BOOL_FLAGS = {"pull": ("--tls-verify",), "push": ("--tls-verify",), "inspect": ("--tls-verify",),
                 "manifest": ("--tls-verify",), "tags": ("--tls-verify",), "history": ("-H", "--human")}


def go_bool_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with each :data:`GO_BOOL_FLAGS` flag of its command given alone written
    ``FLAG=true`` (before any ``--``), so that argparse never takes the next word as its value.
    Other commands' words are left alone (``run IMAGE ls -H`` passes ``-H`` to ``ls``)."""
    out = list(argv)
    i = _after_globals(out)
    flags = GO_BOOL_FLAGS.get(out[i], ()) if i < len(out) else ()
    for j in range(i + 1, len(out)):
        if out[j] == "--":
            break
        if out[j] in flags:
            out[j] = f"{out[j]}=true"
    return out


def _command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (after the global options), or None (``--help``, a typo)."""
    i = _after_globals(argv)
    return argv[i] if i < len(argv) and argv[i] in _MODULE_OF else None


def _configure_logging(debug: int) -> None:
    """``--debug``: layerfs's own lines at DEBUG (the HTTP library logs every request and socket
    step: those stay out); ``--debug --debug``: every library's too."""
    logging.basicConfig(level=logging.DEBUG if debug >= 2 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if debug:
        logging.getLogger("layerfs").setLevel(logging.DEBUG)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed: poll(2) says POLLERR."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & (select.POLLERR | select.POLLNVAL) == select.POLLERR for _, events in poller.poll(0))


def _die_of_sigpipe_if_stdout_is_gone() -> None:
    """End quietly as coreutils and docker (a Go program) do when their reader has gone: killed by
    SIGPIPE (Python ignores SIGPIPE and raises BrokenPipeError instead; nothing more is written)."""
    if _stdout_reader_gone():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the status."""
    words = list(sys.argv[1:] if argv is None else argv)
    words = mount_program_argv(words, _MODULE_OF) or go_bool_flags(words)
    args = parse_plain_mount(words) or build_parser(_command_word(words)).parse_args(words)
    if args.root is None:
        args.root = default_root()
    _configure_logging(args.debug)
    try:
        status = _run(args)
    finally:
        _say_what_was_not_kept()
    if argv is None and args.command == "mount":
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """End the process with ``status`` at once, without the interpreter's teardown (freeing every
    module and object: ~15 ms of a mount program's start, issue 9, where the daemon it forked
    keeps serving).  Nothing is lost: stdout, stderr and logging's handlers are flushed first, and
    layerfs leaves no work to exit (no atexit function, no thread that is not a daemon's).  If a
    flush fails, this returns and the usual exit reports it.
    """
    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(status)


def _say_what_was_not_kept() -> None:
    """Once, after the command's own output: what its unprivileged unpacks could not keep (the
    unpacker counts it; a command that unpacked nothing never imported it)."""
    if "layerfs._layer.unpack" not in sys.modules:
        return
    from .._layer import unpack

    lost = unpack.take_not_kept()
    if lost:
        print(unpack.not_kept_line(lost), file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        status: int = args.handler(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, where a reader that went away can still be told apart
    except LayerfsError as err:
        _die_of_sigpipe_if_stdout_is_gone()
        if args.debug:
            logging.exception("command failed")
        print(f"Error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        _die_of_sigpipe_if_stdout_is_gone()
        if args.debug:
            logging.exception("command failed")
        where = f": {err.filename}" if err.filename else ""
        print(f"Error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
