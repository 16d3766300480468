"""Crash points everywhere (issue 12): a real ``layerfs`` killed with SIGKILL at a system call of
pull, load, commit, push, rm (of an image, of a container), tag, image prune, mount (of a
container, and of a new one, which mount makes) and umount, then the next command's clean-up and
``verify`` (tests/_crash.py says how points are made and what is checked after each).

CI runs a fixed subset (:data:`PER_SCENARIO` points of each command, chosen by ``_crash.subset``
from a recorded run) and the points that once showed a defect (:data:`REGRESSIONS`);
``scripts/crashtest`` runs every point and prints the table.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _crash import (
    SCENARIOS,
    KillPoint,
    World,
    _strace,
    subset,
    wait_traced,
)
from conftest import require_fuse, require_root, require_tool

from layerfs import _proc

#: Points of each command in CI (11 commands: at least 55 points killed in all).
PER_SCENARIO = 6

#: The kill points that showed a defect: the first (or, with -1, the last) point of the scenario
#: whose call, as strace shows it, matches the pattern; with what was wrong before the fix.
REGRESSIONS = {
    "prune-cut-rm-reference": ("prune", r"^rename\(.*/repositories\.json", -1, "a prune killed before it "
                               "rewrote repositories.json for the last image it removed left a reference to it; "
                               "the next prune, with nothing left to remove, ran no clean-up: verify failed"),
    "prune-half-removed-layer": ("prune", r'^unlinkat\(\d+, "rmme", AT_REMOVEDIR', 0, "a prune killed while "
                                 "removing a layer left its tree in tmp/, which the next prune never removed"),
    "pull-resume-bytes-of-a-published-layer": ("pull", r'^unlink\(".*/tmp/resume-blob-', 0, "a pull killed "
                                               "after it published a layer but before it dropped the bytes it "
                                               "kept of its blob left them in tmp/ for a day: the next pull, "
                                               "finding the layer, never looked at them"),
    "mount-record-temp": ("mount", r"^rename\(.*/mounts/", 0, "a mount killed while writing its record left "
                          "the temporary file in tmp/: no later mount removed it"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root()
    require_fuse()
    require_tool("strace", "docker-registry", "skopeo", "du")
    with World.start(tmp_path_factory.mktemp("crash")) as w:
        yield w


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_killed_anywhere_the_store_stays_consistent(world: World, scenario: str) -> None:
    points = world.points(scenario)
    assert len(points) >= PER_SCENARIO, points
    killed = [r for r in (world.run_point(p) for p in subset(points, PER_SCENARIO)) if r.killed]
    # a point the command did not reach is not counted; all but one of the chosen must be reached
    assert len(killed) >= PER_SCENARIO - 1, f"only {len(killed)} of the points were reached"


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_kill_points_that_showed_a_defect(world: World, name: str) -> None:
    scenario, pattern, which, _why = REGRESSIONS[name]
    point = _find(world.points(scenario), pattern, which)
    result = world.run_point(point)
    assert result.killed, f"{point.name} ({point.seen}) was not reached"


def _find(points: list[KillPoint], pattern: str, which: int) -> KillPoint:
    found = [p for p in points if re.search(pattern, p.seen)]
    assert found, f"no point matches {pattern!r}: {[p.seen for p in points]}"
    return found[which]


def test_a_traced_command_that_does_not_end_is_killed_with_strace(tmp_path: Path) -> None:
    """Given up waiting for, the traced command goes too, not strace only (it would run on)."""
    require_tool("strace")
    log = tmp_path / "strace.log"
    proc = subprocess.Popen([*_strace(log), sys.executable, "-c",
                             "import os, time; print(os.getpid(), flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    traced = int(proc.stdout.readline())
    with pytest.raises(AssertionError, match="the traced command did not end"):
        wait_traced(proc, log, timeout=1)
    deadline = time.monotonic() + 10
    while _proc.pid_alive(traced) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _proc.pid_alive(traced), "the traced command runs on"
