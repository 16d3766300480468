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
