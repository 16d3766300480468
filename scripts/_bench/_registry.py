"""A throw-away ``docker-registry`` on 127.0.0.1, started and stopped by PID.

Its storage lives in the bench cache, so an image pushed once stays there between runs; the
process itself lives only as long as one ``scripts/bench`` invocation.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from ._util import BenchError, Janitor, log


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """``with Registry(storage, janitor) as reg: reg.address`` → ``127.0.0.1:PORT``."""

    def __init__(self, storage: Path, janitor: Janitor) -> None:
        self.storage = storage
        self.janitor = janitor
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._undo = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        exe = shutil.which("docker-registry") or shutil.which("registry")
        if exe is None:
            raise BenchError("docker-registry: not found (Debian package docker-registry; scripts/setup)")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        config = self.storage / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.storage / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '127.0.0.1:{self.port}'}}\n")
        logf = open(self.storage / "registry.log", "ab")
        self.proc = subprocess.Popen([exe, "serve", str(config)], stdout=logf, stderr=logf,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self._undo = self.janitor.pid(self.proc.pid, "docker-registry")
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise BenchError(f"docker-registry exited ({self.proc.returncode}); see {self.storage}/registry.log")
            if time.monotonic() > deadline:
                raise BenchError("docker-registry did not answer on /v2/ within 30 s")
            time.sleep(0.1)
        log(f"registry: {self.address} (pid {self.proc.pid})")
        return self

    def stop(self) -> None:
        if self._undo is not None:
            self.janitor.done(self._undo)
            self._undo = None
        if self.proc is not None:
            self.proc.wait()
            self.proc = None

    def has_repo(self, repo: str) -> bool:
        """Whether the storage already holds ``repo`` (pushed by an earlier run)."""
        return (self.storage / "data/docker/registry/v2/repositories" / repo / "_manifests").is_dir()

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
