"""Running a bundle with an OCI runtime found on the machine: runc or crun.

``run_bundle(bundle_dir, container_id)`` runs ``RUNTIME run --bundle DIR ID`` in the foreground:
the runtime creates the namespaces and mounts, starts the process, passes standard input and
output through (with ``process.terminal`` it makes a pseudo-terminal of its own and relays the
caller's), forwards the signals it receives to the process, and exits with the process's status.
This module forwards the signals layerfs receives (INT, TERM, HUP, QUIT, USR1, USR2, WINCH) to the
runtime, waits, then deletes what the runtime may have left (``RUNTIME delete --force``).

A home-made namespace runner is not the goal: the runtimes are what podman and docker trust.
Where the runtime cannot work on a machine, the error names what is missing (:func:`explain`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .._errors import LayerfsError

#: The runtimes layerfs knows, in the order it prefers them (runc first: crun refuses the hybrid
#: cgroup hierarchies some hosts have).
RUNTIMES = ("runc", "crun")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
              signal.SIGWINCH)


def find(name: str | None = None) -> str:
    """The runtime's executable: ``name`` (a name on PATH or a path), else the first of :data:`RUNTIMES`.

    Raises:
        LayerfsError: none is installed (with how to get one).
    """
    for candidate in ([name] if name else RUNTIMES):
        path = shutil.which(candidate)
        if path:
            return path
    wanted = name or " or ".join(RUNTIMES)
    raise LayerfsError(f"no OCI runtime found ({wanted}): install Debian's runc package (scripts/setup does) "
                       f"or name one with --runtime")


def state_root() -> str | None:
    """Where the runtime keeps container state: its default as root, else under XDG_RUNTIME_DIR."""
    if os.geteuid() == 0:
        return None
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/layerfs-runtime-{os.geteuid()}"
    path = os.path.join(base, "layerfs-runc")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _base(runtime: str) -> list[str]:
    root = state_root()
    return [runtime, *(["--root", root] if root else [])]


def explain(stderr: str) -> str:
    """One line naming what the machine lacks, from what the runtime printed."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "the runtime failed"
    hints = [
        ("cgroup", "the runtime could not set up cgroups (a hybrid or read-only cgroup hierarchy?): try "
                   "--runtime runc, or run as root"),
        ("user namespace", "user namespaces are not available to this user (sysctl "
                           "kernel.unprivileged_userns_clone=1, or /etc/subuid): run as root"),
        ("operation not permitted", "the runtime was refused a privileged operation: run as root, or "
                                    "allow unprivileged user namespaces"),
        ("rlimit", "the runtime could not set an rlimit (no CAP_SYS_RESOURCE)"),
    ]
    for key, hint in hints:
        if key in text.lower():
            return f"{last} ({hint})"
    return last


def run_bundle(runtime: str, bundle: Path, container_id: str, *, stdin: bool) -> int:
    """Run the bundle in the foreground; return the process's exit status (128+N for a signal N).

    Args:
        runtime: the runtime's executable (:func:`find`).
        bundle: the bundle directory (``config.json``; the root path it names must be mounted).
        container_id: the runtime's name for the container (unique while it runs).
        stdin: pass standard input through (``-i``); else the process reads /dev/null.

    Raises:
        LayerfsError: the runtime could not start the container (one line, with a hint).
    """
    cmd = [*_base(runtime), "run", "--bundle", str(bundle), container_id]
    proc = subprocess.Popen(cmd, stdin=None if stdin else subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=False)
    previous = {}

    def forward(signum: int, frame: object) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        previous[sig] = signal.signal(sig, forward)
    try:
        assert proc.stderr is not None
        errors = _relay(proc.stderr.fileno())
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _delete(runtime, container_id)
    if status < 0:
        return 128 - status
    if status != 0 and errors:
        raise LayerfsError(f"{os.path.basename(runtime)}: {explain(errors[-1])}")
    return status


_LOG_RE = re.compile(r'^time="[^"]*" level=(\w+) msg="((?:[^"\\]|\\.)*)"')


def _relay(fd: int) -> list[str]:
    """Copy the process's standard error (which goes through the runtime's) to ours as it comes,
    line by line, keeping back the runtime's own log lines (``time=... level=error msg=...``):
    returns their messages, for one error line of ours instead."""
    runtime_lines: list[str] = []
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            m = _LOG_RE.match(line.decode(errors="replace"))
            if m:
                runtime_lines.append(m.group(2).replace('\\"', '"'))
            else:
                os.write(2, line + b"\n")
    if pending:
        os.write(2, pending)
    return runtime_lines


def _delete(runtime: str, container_id: str) -> None:
    subprocess.run([*_base(runtime), "delete", "--force", container_id], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def version(runtime: str) -> Sequence[str]:
    """The runtime's ``--version`` lines (for ``--debug``)."""
    out = subprocess.run([runtime, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()
