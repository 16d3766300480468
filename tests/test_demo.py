"""scripts/demo, the README's main job, runs end to end and cleans up after itself."""

from __future__ import annotations

import subprocess

from conftest import REPO, require_root, require_tool


def _fuse_mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line for line in f if "layerfs-demo" in line]


def test_demo_builds_loads_pulls_mounts_and_chroots() -> None:
    require_root()
    require_tool("umoci", "skopeo", "docker-registry", "fusermount3")
    proc = subprocess.run([str(REPO / "scripts" / "demo")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for expected in ("Loaded image: demo/busybox:latest", "c--------- 1 root root 0, 0", "Pull complete",
                     "Hello from a layerfs image", "Linux"):
        assert expected in out, f"{expected!r} not in the demo's output:\n{out[-3000:]}"
    assert _fuse_mounts() == []
    registries = subprocess.run(["pgrep", "-af", "layerfs-demo"], capture_output=True, text=True).stdout
    assert registries == "", registries
