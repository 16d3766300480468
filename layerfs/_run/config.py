"""An OCI runtime ``config.json`` for an image (opencontainers/runtime-spec, config.md and
config-linux.md), as ``docker run`` would set the container up.

What comes from the image config (image-spec config.md "Properties"):

- the process: ``Entrypoint`` + (the command given, else ``Cmd``); a command given replaces
  ``Cmd`` only, as docker does;
- ``Env`` (then ``-e`` overrides, then ``PATH`` and ``HOSTNAME`` if missing, ``TERM`` with a
  terminal), ``WorkingDir`` (``-w`` overrides; default ``/``), ``User`` (``-u`` overrides),
  resolved against the image's /etc/passwd and /etc/group (``users``).

Docker's defaults (moby's oci/defaults.go and daemon/oci_linux.go; runc's ``runc spec``):

- mounts: /proc, a minimal /dev (tmpfs, with devpts, shm and mqueue), /sys read-only
  (``sysfs``, or a read-only bind of the host's when in a user namespace, where sysfs cannot be
  mounted), the cgroup hierarchy read-only;
- namespaces: mount, PID, UTS, IPC; network unless ``--network host``; user when not root (one
  mapping: the caller's uid and gid become 0 in the container, ``runc spec --rootless``'s form,
  :func:`user_namespace`; the rootfs is mounted with the same mapping, so that the container's
  root owns what the image's root owns);
- capabilities: docker's default set for the process (chown, dac_override, fowner, fsetid, kill,
  setgid, setuid, setpcap, net_bind_service, net_raw, sys_chroot, mknod, audit_write, setfcap);
  the masked and read-only /proc and /sys paths of ``runc spec``;
- rlimits: the caller's own (soft and hard), never more: raising a hard limit needs
  CAP_SYS_RESOURCE, which some hosts (this project's CI among them) do not grant;
- the hostname: ``--hostname``, else the container's 12-digit ID, as docker names it.

With ``--network host``, the host's /etc/resolv.conf and /etc/hosts are bound read-only over the
image's when the image has those files (none is created in the container's upper).
"""

from __future__ import annotations

import dataclasses
import os
import resource
from collections.abc import Mapping, Sequence

from .._errors import LayerfsError
from .._mount import idmap as _idmap
from .users import User

#: docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("host", "none")

_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
           "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What ``layerfs run`` was asked for, beyond the image."""

    command: Sequence[str] = ()
    env: Sequence[str] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    terminal: bool = False
    network: str = "host"
    read_only: bool = False


def user_namespace() -> _idmap.IdMapping:
    """The user namespace of a rootless container: its root is the caller, nothing else is
    mapped (no ``/etc/subuid`` ranges).  The rootfs mount shows the image's owners through the
    same mapping (``_mount.idmap.for_user_namespace``)."""
    return _idmap.for_user_namespace(os.geteuid(), os.getegid())


def image_process(image_config: Mapping[str, object]) -> Mapping[str, object]:
    """The ``config`` object of an image config (``{}`` if it has none)."""
    conf = image_config.get("config")
    return conf if isinstance(conf, dict) else {}


def command_of(image_config: Mapping[str, object], command: Sequence[str]) -> list[str]:
    """``Entrypoint`` + (``command`` or ``Cmd``), as docker runs it.

    Raises:
        LayerfsError: nothing to run ("no command specified", docker's words).
    """
    conf = image_process(image_config)
    entry = conf.get("Entrypoint") or []
    cmd = list(command) if command else (conf.get("Cmd") or [])
    args = [str(a) for a in [*entry, *cmd]] if isinstance(entry, list) and isinstance(cmd, list) else []
    if not args:
        raise LayerfsError("no command specified (the image has no Entrypoint or Cmd: give one)")
    return args


def environment(image_config: Mapping[str, object], extra: Sequence[str], hostname: str, terminal: bool) -> list[str]:
    """The image's ``Env``, then ``extra`` (``K=V``, or ``K`` to take the caller's value)."""
    env: dict[str, str] = {}
    image_env = image_process(image_config).get("Env") or []
    for item in [*image_env, *extra] if isinstance(image_env, list) else extra:
        text = str(item)
        key, sep, value = text.partition("=")
        if not key:
            raise LayerfsError(f"invalid environment variable {text!r}")
        if not sep:
            if key not in os.environ:
                continue
            value = os.environ[key]
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", hostname)
    if terminal:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def _rlimits() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name in ("RLIMIT_NOFILE", "RLIMIT_NPROC"):
        soft, hard = resource.getrlimit(getattr(resource, name))
        big = (1 << 63) - 1
        out.append({"type": name, "soft": big if soft == resource.RLIM_INFINITY else soft,
                    "hard": big if hard == resource.RLIM_INFINITY else hard})
    return out


def runtime_config(image_config: Mapping[str, object], rootfs: str, user: User, opts: RunOptions, *,
                   container_id: str, rootless: bool, image_has: Mapping[str, bool]) -> dict[str, object]:
    """The ``config.json`` of a bundle whose root filesystem is mounted at ``rootfs``.

    Args:
        image_config: the image's config (the JSON of its config blob).
        rootfs: the absolute path of the root filesystem (the writable mount).
        user: the resolved process identity (``users.resolve``).
        opts: what ``run`` was asked for.
        container_id: the container's ID (its 12 first digits are the default hostname).
        rootless: the caller is not root: a user namespace maps it to root inside.
        image_has: whether the image has ``/etc/resolv.conf`` and ``/etc/hosts`` (bound from the
            host with ``--network host`` only when it has them).
    """
    if opts.network not in NETWORKS:
        raise LayerfsError(f"--network {opts.network}: only {' and '.join(NETWORKS)} are available "
                           f"(no network set-up beyond the host's namespace or none)")
    conf = image_process(image_config)
    hostname = opts.hostname or container_id[:12]
    workdir = opts.workdir or str(conf.get("WorkingDir") or "/")
    if not workdir.startswith("/"):
        raise LayerfsError(f"the working directory {workdir!r} is not an absolute path")
    caps = list(DEFAULT_CAPABILITIES)
    process: dict[str, object] = {
        "terminal": opts.terminal,
        "user": {"uid": user.uid, "gid": user.gid, **({"additionalGids": list(user.additional_gids)}
                                                      if user.additional_gids else {})},
        "args": command_of(image_config, opts.command),
        "env": environment(image_config, opts.env, hostname, opts.terminal),
        "cwd": workdir,
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "rlimits": _rlimits(),
        "noNewPrivileges": False,
    }
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     *([] if rootless else ["gid=5"])]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    ]
    if rootless or opts.network == "host":
        # sysfs needs a network namespace of our own (and privilege): bind the host's, read-only
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    if opts.network == "host":
        for path in ("/etc/resolv.conf", "/etc/hosts"):
            if image_has.get(path) and os.path.exists(path):
                mounts.append({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]})
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if opts.network == "none":
        namespaces.append({"type": "network"})
    linux: dict[str, object] = {
        "namespaces": namespaces,
        "maskedPaths": _MASKED,
        "readonlyPaths": _READONLY,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    }
    if rootless:
        if user.uid != 0 or user.gid != 0:
            raise LayerfsError(f"the process would run as uid {user.uid} gid {user.gid}, which an unprivileged "
                               f"run cannot map: only root inside the container is the caller outside (no "
                               f"/etc/subuid ranges are used); run as root, or with -u 0")
        process["user"] = {"uid": 0, "gid": 0}  # supplementary groups cannot be mapped either
        namespaces.append({"type": "user"})
        userns = user_namespace()
        linux["uidMappings"] = [{"containerID": r.container, "hostID": r.host, "size": r.size} for r in userns.uids]
        linux["gidMappings"] = [{"containerID": r.container, "hostID": r.host, "size": r.size} for r in userns.gids]
        del linux["resources"]  # cgroups are not ours to set unprivileged
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }
