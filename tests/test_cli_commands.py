"""The command table of the CLI (``layerfs._cli.main.COMMANDS``) against what each module adds:
main imports only the module of the command it runs, so a command missing from the table would
not exist, and one listed under the wrong module would fail to parse."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from layerfs._cli.main import COMMANDS, build_parser


@pytest.mark.parametrize("module", list(COMMANDS))
def test_each_module_adds_the_commands_the_table_lists(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    assert tuple(sub.choices) == COMMANDS[module]


def test_a_command_imports_its_module_only() -> None:
    """``layerfs mount --help`` (and the mount program's start) loads none of the registry's or
    the runtime's modules; the full parser still has every command, and nothing else."""
    code = ("import sys\nfrom layerfs._cli.main import main\n"
            "try:\n    main(['mount', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('layerfs._cli.')), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = proc.stderr.strip()
    assert "layerfs._cli.mount" in loaded and "layerfs._cli.registry" not in loaded and "layerfs._cli.run" \
        not in loaded, loaded
    assert "usage: layerfs mount" in proc.stdout
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {command for commands in COMMANDS.values() for command in commands}


#: Calls of ``mount`` (after mount_program_argv), and whether parse_plain_mount takes them (else
#: argparse parses them: each of these is either refused by argparse or uses what only it knows).
PLAIN_MOUNTS: list[tuple[list[str], bool]] = [
    (["-o", "lowerdir=l/A,upperdir=c/diff,workdir=c/work", "c/merged"], True),
    (["-olowerdir=/a", "/m"], True),
    (["-f", "-olowerdir=/a", "-d", "/m"], True),
    (["--root", "/s", "--debug", "-o", "lowerdir=/a", "/m"], True),
    (["--root=/s", "-o", "lowerdir=/a", "/m", "--root", "/t"], True),
    (["--debug", "-o", "x", "-d", "-d", "/m"], True),
    (["none", "/m", "-o", "rw,lowerdir=/a,dev,suid"], True),
    (["busybox:latest", "/m", "-o", "rw"], True),
    (["-o", "", "-o", "b", "/m"], True),
    (["mount", "-o", "lowerdir=/a", "/m"], True),
    (["mount", "busybox:latest", "./rootfs", "-f", "--debug"], True),
    (["mount", "-o", "lowerdir=/a", "/m", "--root=/r"], True),
    (["-o", "-d", "/m"], False),
    (["-o", "lowerdir=/a"], False),
    (["-o", "x", "/a", "-f", "/b"], False),
    (["-o", "x", "--read-only", "/m"], False),
    (["-o", "x", "--fore", "/m"], False),
    (["-o=x", "/m"], False),
    (["-o", "x", "--", "/m"], False),
    (["-o", "x", "-", "/m"], False),
    (["-o", "x", "-fd", "/m"], False),
    (["--root", "", "-o", "x", "/m"], False),
    (["-o", "x", "--root=", "/m"], False),
    (["-o", "x", "--root", "-r", "/m"], False),
    (["mount", "--name", "web", "busybox", "/m"], False),
    (["mount", "--called-as", "podman", "-o", "x", "/m"], False),
    (["mount", "--help"], False),
    (["mounts"], False),
]


@pytest.mark.parametrize("argv,plain", PLAIN_MOUNTS, ids=[" ".join(a) for a, _ in PLAIN_MOUNTS])
def test_a_plain_mount_is_parsed_as_the_parser_parses_it(argv: list[str], plain: bool,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """main parses the plain calls of ``mount`` (a mount program's) without building the parser:
    the arguments must be those argparse gives, and anything else must be left to argparse."""
    from layerfs._cli.main import _command_word, mount_program_argv, parse_plain_mount

    words = mount_program_argv(argv, build_parser().get_default("commands")) or argv
    fast = parse_plain_mount(words)
    assert (fast is not None) == plain
    if fast is not None:
        assert fast == build_parser(_command_word(words)).parse_args(words)
