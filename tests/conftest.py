"""Shared fixtures and the suite's rules.

- Real parts only.  A test that needs root, /dev/fuse or an outside tool asks for it with
  :func:`require`; outside CI a missing part skips the test with the reason, but when ``CI`` is set
  it fails it: a green CI must never hide a missing install step.
- ``store``: a fresh :class:`layerfs.Store` in a temporary directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs import _proc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def require(condition: bool, what: str) -> None:
    """Skip the test when ``condition`` is false, or fail it under CI."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {what} is missing: scripts/setup must provide it", pytrace=False)
    pytest.skip(f"{what} is missing")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"the tool {name!r}")


def require_root() -> None:
    require(os.geteuid() == 0, "root (uid 0)")


def require_fuse() -> None:
    require(os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK), "/dev/fuse")
    require_tool("fusermount3")


@pytest.fixture
def store(tmp_path: Path) -> Iterator["object"]:
    from layerfs import Store

    yield Store(tmp_path / "store")


def run_layerfs(*args: str, root: Path, check: bool = True, input: bytes | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``python -m layerfs --root ROOT ARGS``) and return what it did."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "layerfs", "--root", str(root), *args],
                          capture_output=True, text=True, input=input.decode() if input else None,
                          env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"layerfs {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def check_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which layerfs logged a warning or an error it did not expect
    (pyfuse3's pytest_checklogs).  Mark a test ``@pytest.mark.expect_warnings`` to allow them."""
    collector = _Collector()
    logger = logging.getLogger("layerfs")
    logger.addHandler(collector)
    try:
        yield
    finally:
        logger.removeHandler(collector)
    if collector.records and request.node.get_closest_marker("expect_warnings") is None:
        lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in collector.records[:10])
        pytest.fail(f"unexpected log messages (mark the test expect_warnings if they are meant):\n{lines}",
                    pytrace=False)


def daemons_of(mnt: Path) -> list[int]:
    """Live processes whose command line names ``mnt`` (a mount daemon keeps its parent's)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.fsencode(str(mnt)) in argv and _proc.pid_alive(int(name)):
                out.append(int(name))
    return out
