"""scripts/bench: the harness works, reports every available system, and leaves nothing behind.

- ``--quick`` exits 0 and writes a Markdown table with a row per workload of the quick subset and
  a column per system (an unavailable one is marked "n/a" and explained, never dropped);
- interrupted (SIGINT, SIGTERM) in the middle of a run, it unmounts and stops everything it
  started;
- the whiteout conversions between an overlay upper and an OCI layer round-trip.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, require_fuse, require_root, require_tool

sys.path.insert(0, str(REPO / "scripts"))

BENCH = REPO / "scripts" / "bench"
TOOLS = ("tar", "umoci", "skopeo", "docker-registry", "fuse-overlayfs", "fusermount3")


def _mounts_under(prefix: Path) -> list[str]:
    p = str(prefix.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(p)]


def _procs_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry}: {cmd}")
    return found


def _require_bench() -> None:
    require_root()
    require_fuse()
    require_tool(*TOOLS)


def _assert_clean(cache: Path) -> None:
    assert _mounts_under(cache) == []
    deadline = time.monotonic() + 5
    while _procs_mentioning(str(cache)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _procs_mentioning(str(cache)) == []


def _table(md: str) -> tuple[list[str], list[str]]:
    """(header cells, first cells of the data rows) of the "## Results" table."""
    lines = md.split("## Results", 1)[1].strip().splitlines()
    table = [ln for ln in lines[: next((i for i, ln in enumerate(lines) if not ln.startswith("|")), len(lines))]]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [ln.strip("|").split("|")[0].strip() for ln in table[2:]]
    return head, rows


def test_quick_run_reports_every_workload_and_system(tmp_path: Path) -> None:
    _require_bench()
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = subprocess.run([str(BENCH), "--quick", "--cache", str(cache), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "results.md").read_text()
    data = json.loads((out / "results.json").read_text())
    head, rows = _table(md)

    from _bench._workloads import QUICK
    assert {(k, m) for k, modes in QUICK.items() for m in modes} == {(r["key"], r["mode"]) for r in data["rows"]}
    assert [r.rstrip(" *") for r in rows] == [f"{r['title']} ({r['mode']})" for r in data["rows"]]
    for key in data["systems"]:
        assert data["labels"][key] in head
        if key in data["unavailable"]:
            assert "not available" in md  # said, not skipped
    for key in ("native", "overlay", "fuse-overlayfs"):
        assert key not in data["unavailable"], data["unavailable"].get(key)
        for row in data["rows"]:
            if key == "native" and row["key"] == "mount":
                continue  # nothing to mount
            cell = row["cells"][key]
            assert cell["error"] is None, (row["key"], key, cell["error"])
            assert len(cell["runs"]) == 1
    # the peers' merged views match the kernel overlay's
    assert "identical" in data["verify"]["fuse-overlayfs"]
    assert "skopeo copy" in data["pull"]
    assert (out / "ratios.png").stat().st_size > 0
    assert "layerfs bench" in proc.stdout  # the table on the terminal too
    _assert_clean(cache)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    _require_bench()
    cache = tmp_path / "cache"
    proc = subprocess.Popen([str(BENCH), "--quick", "--cache", str(cache), "--out", str(tmp_path / "out"),
                             "--systems", "native,overlay,fuse-overlayfs", "--workloads", "find:warm,create"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any("fuse" in _fstype(m) for m in _mounts_under(cache / "run")):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no FUSE mount appeared"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    _assert_clean(cache)


def _fstype(mountpoint: str) -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            if line.split()[4] == mountpoint:
                return line.split(" - ", 1)[1].split()[0]
    return ""


def test_whiteout_forms_round_trip(tmp_path: Path) -> None:
    require_root()  # trusted.* xattrs
    from _bench._image import OPAQUE, oci_to_overlay, upper_to_oci

    up = tmp_path / "upper"
    (up / "opq").mkdir(parents=True)
    (up / "opq" / "kept").write_text("x")
    os.setxattr(up / "opq", OPAQUE, b"y")
    os.setxattr(up / "opq", "trusted.overlay.impure", b"y")
    os.mknod(up / "gone", stat.S_IFCHR, os.makedev(0, 0))
    os.utime(up, (1_000_000, 1_000_000))

    upper_to_oci(up)
    assert sorted(os.listdir(up)) == [".wh.gone", "opq"]
    assert sorted(os.listdir(up / "opq")) == [".wh..wh..opq", "kept"]
    assert os.listxattr(up / "opq") == []

    os.utime(up, (1_000_000, 1_000_000))
    assert oci_to_overlay(up) == 2
    st = os.lstat(up / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(up / "opq", OPAQUE) == b"y"
    assert sorted(os.listdir(up / "opq")) == ["kept"]
    assert os.stat(up).st_mtime == 1_000_000  # the tar's times survive the conversion


def test_needs_root_and_says_so() -> None:
    if os.geteuid() == 0:
        require_tool("setpriv")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BENCH), "--quick"]
    else:
        cmd = [str(BENCH), "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "needs root" in proc.stderr
