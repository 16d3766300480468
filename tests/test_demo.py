"""scripts/demo, the README's main job, runs end to end and cleans up after itself, also when it
is interrupted."""

from __future__ import annotations

import signal
import subprocess
import time

from conftest import REPO, require_root, require_tool


def _left_behind() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split()[4] for line in f if "layerfs-demo" in line]
    procs = subprocess.run(["pgrep", "-af", "layerfs-demo"], capture_output=True, text=True).stdout.splitlines()
    return mounts + procs


def test_demo_pushes_pulls_mounts_runs_commits_and_pulls_again() -> None:
    require_root()
    require_tool("umoci", "docker-registry", "fusermount3", "runc")
    proc = subprocess.run([str(REPO / "scripts" / "demo")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for expected in ("Loaded image: ", ": Pushed", "Pull complete", "layer 2's whiteout hides /var/old",
                     "Hello from a layerfs image", "pid 1", "A /etc/greeting", "D /etc/motd",
                     "written in a layerfs container"):
        assert expected in out, f"{expected!r} not in the demo's output:\n{out[-3000:]}"
    assert out.count(" ms)") >= 10  # each step says how long it took
    assert _left_behind() == []


def test_demo_cleans_up_when_interrupted() -> None:
    require_root()
    require_tool("umoci", "docker-registry", "fusermount3", "runc")
    proc = subprocess.Popen([str(REPO / "scripts" / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 300
    while "Mounting it as a writable container" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert _left_behind() == []
