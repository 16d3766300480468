"""README.rst's "Using it" section, as a user reads it (issue 10, "Done means").

- The session in its code block runs as written, command by command, in a directory holding the
  files it names, against a real registry (Debian's docker-registry, with Basic auth, so that
  ``login`` matters): each command must exit 0 and leave what the README says it does.  The
  block is parsed from README.rst, so an edit of the README is what is tested; the only
  substitution is the registry's address (``localhost:5000`` -> the test registry's
  ``127.0.0.1:PORT``).  Every command of the block has a check here, and every check a command
  of the block: a command added to the README without one fails the test, and so does a check
  whose command the README dropped.
- The command list names exactly the commands (and aliases) the CLI's parser knows, and each
  command's ``--help`` exits 0 with an example of that command.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _images import MEDIA_MANIFEST, build_busybox, sha256, write_layout
from _oracles import blob_path
from _registry_server import Registry, push, write_htpasswd
from conftest import REPO, require_fuse, require_root, require_tool

README = REPO / "README.rst"
#: The registry the README's session talks to, and the one the test gives it.
README_REGISTRY = "localhost:5000"
USER, PASSWORD = "me", "a-secret-token"


# -- reading the README -----------------------------------------------------------------------------


def section(title: str) -> list[str]:
    """The lines of the top-level section ``title`` of README.rst (up to the next one)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line == title and i + 1 < len(lines) and re.fullmatch(r"=+", lines[i + 1]))
    end = next((i - 1 for i in range(start + 2, len(lines) - 1)
                if lines[i] and re.fullmatch(r"=+", lines[i + 1])), len(lines))
    return lines[start + 2:end]


def session() -> list[str]:
    """The commands of the first ``.. code-block:: sh`` of "Using it", one per line, as written
    (trailing comments included: the shell drops them)."""
    lines = section("Using it")
    start = lines.index(".. code-block:: sh") + 1
    commands = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        if line.strip() and not line.strip().startswith("#"):
            commands.append(line[4:])
    return commands


def without_comment(command: str) -> str:
    """A command of the session without its trailing ``# ...`` (the key of its check)."""
    return re.sub(r"\s+#.*\Z", "", command)


def command_list() -> set[str]:
    """The names in the README's command list: ``- ``name`` (``alias``): ...`` items."""
    names: set[str] = set()
    for line in section("Using it"):
        item = re.match(r"- ((?:``[a-z-]+(?: [a-z-]+)?``(?: \(``[a-z-]+``\))?(?:, )?)+): ", line)
        if item:
            names.update(re.findall(r"``([a-z -]+)``", item.group(1)))
    return names


def parser_commands() -> dict[str, argparse.ArgumentParser]:
    """Every command the CLI knows, aliases included; a group (``image``, ``system``) is known by
    its ``group command`` pairs."""
    from layerfs._cli.main import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    found: dict[str, argparse.ArgumentParser] = {}
    for name, parser in subcommands(build_parser()).items():
        group = subcommands(parser)
        if not group:
            found[name] = parser
        for sub, subparser in group.items():
            found[f"{name} {sub}"] = subparser
    return found


# -- the command list and --help --------------------------------------------------------------------


def test_the_command_list_names_what_exists() -> None:
    listed, known = command_list(), set(parser_commands())
    assert listed, "no command list found in README.rst's Using it section"
    assert listed == known, (f"in the README only: {sorted(listed - known)}; "
                             f"known to the CLI only: {sorted(known - listed)}")


def test_each_help_exits_0_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from layerfs._cli.main import main

    lacking = []
    for name, parser in sorted(parser_commands().items()):
        primary = " ".join(parser.prog.split()[1:])  # an alias shows its command's help
        with pytest.raises(SystemExit) as done:
            main([*name.split(), "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0, name
        examples = out.partition("\nexamples:\n")[2]
        if not re.search(rf"^  (.*\| )?layerfs {re.escape(primary)}( |$)", examples, re.MULTILINE):
            lacking.append(name)
    assert lacking == [], f"--help without an example of the command: {lacking}"


# -- the session ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    """Where the session runs, and what its checks look at."""

    cwd: Path
    env: dict[str, str]
    host: str

    def layerfs(self, *args: str) -> subprocess.CompletedProcess[str]:
        """What a user would type next to look (not part of the session)."""
        return subprocess.run(["layerfs", *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=120, check=True)

    def image(self, ref: str) -> dict[str, object]:
        inspected: list[dict[str, object]] = json.loads(self.layerfs("inspect", ref).stdout)
        return inspected[0]

    def has_image(self, ref: str) -> bool:
        return subprocess.run(["layerfs", "inspect", ref], cwd=self.cwd, env=self.env, capture_output=True,
                              timeout=120).returncode == 0

    def containers(self) -> dict[str, str]:
        """Container name -> image."""
        rows = self.layerfs("ps", "--format", "json").stdout.splitlines()
        return {row["Names"]: row["Image"] for row in map(json.loads, rows)}

    def mounted(self, path: str) -> bool:
        return str(self.cwd / path).rstrip("/") in mountpoints()


def mountpoints() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f]


def manifest_in_registry(s: Session, repo: str, tag: str) -> bool:
    auth = b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(f"http://{s.host}/v2/{repo}/manifests/{tag}", method="HEAD",
                                     headers={"Authorization": f"Basic {auth}", "Accept": MEDIA_MANIFEST})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


Check = Callable[[Session, subprocess.CompletedProcess[str]], None]


@dataclasses.dataclass(frozen=True)
class Step:
    check: Check
    stdin: str = ""  # what the user types (a terminal is given to -t commands)


def _logged_in(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    config = json.loads((Path(s.env["HOME"]) / ".docker" / "config.json").read_text())
    assert s.host in config["auths"], config
    assert "Login Succeeded" in p.stdout


def _pulled(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert s.image(f"{s.host}/alpine:3.20")["Architecture"] == "amd64"


def _pulled_arm64(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert s.image(f"{s.host}/app:1")["Architecture"] == "arm64"


def _loaded_layout(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert p.stdout.splitlines()[-1] == "Loaded image: busybox:latest", p.stdout
    assert s.has_image("busybox:latest")


def _loaded_archive(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert p.stdout.splitlines()[-1] == "Loaded image: app:1", p.stdout


def _listed(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"], lines
    assert {tuple(line.split()[:2]) for line in lines[1:]} == {
        (f"{s.host}/alpine", "3.20"), (f"{s.host}/app", "1"), ("busybox", "latest"), ("app", "1")}, lines


def _inspected(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    [image] = json.loads(p.stdout)
    assert image["RepoTags"] == ["busybox:latest"]
    assert image["Layers"] and all((Path(layer["Path"]) / "bin" / "busybox").exists() for layer in image["Layers"])


def _tagged(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert s.image("mybox:1")["Id"] == s.image("busybox:latest")["Id"]


def _untagged(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert not s.has_image("mybox:1") and s.has_image("busybox:latest")


def _made_dirs(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert (s.cwd / "rootfs").is_dir() and (s.cwd / "mnt").is_dir()


def _mounted_dev(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert s.mounted("rootfs") and (s.cwd / "rootfs" / "bin" / "busybox").exists()
    assert s.containers() == {"dev": "busybox:latest"}


def _changed_in_chroot(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert (s.cwd / "rootfs" / "hello").read_text() == "written in dev\n"


def _listed_mounts(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    [row] = p.stdout.splitlines()[1:]
    assert row.split()[:3] == [str(s.cwd / "rootfs"), "busybox:latest", "dev"], row


def _unmounted_rootfs(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert not s.mounted("rootfs") and os.listdir(s.cwd / "rootfs") == []


def _listed_containers(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    [row] = p.stdout.splitlines()[1:]
    assert row.split()[1] == "busybox:latest" and row.split()[-1] == "dev", row


def _diffed(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert "A /hello" in p.stdout.splitlines(), p.stdout


def _mounted_dev_again(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert (s.cwd / "rootfs" / "hello").read_text() == "written in dev\n"


def _mounted_read_only(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert (s.cwd / "mnt" / "bin" / "busybox").exists()
    with pytest.raises(OSError) as err:
        (s.cwd / "mnt" / "x").write_text("x")
    assert err.value.errno == errno.EROFS


def _unmounted_both(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert not s.mounted("rootfs") and not s.mounted("mnt")


def _committed(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    image = s.image("mybox:2")
    assert len(image["Layers"]) == 2  # type: ignore[arg-type]
    assert (Path(image["Layers"][-1]["Path"]) / "hello").read_text() == "written in dev\n"  # type: ignore[index]


def _pushed(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert manifest_in_registry(s, "mybox", "2")


def _removed_dev(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert "dev" not in s.containers()


def _ran_in_a_terminal(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert "pid-1-is-me 1" in p.stdout, p.stdout
    assert s.containers() == {}  # --rm


def _ran_and_kept(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert s.containers() == {"build": "busybox:latest"}
    assert "A /tmp/out" in s.layerfs("diff", "build").stdout.splitlines()


def _bundled(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    config = json.loads((s.cwd / "bb" / "config.json").read_text())
    assert config["root"]["path"] in ("rootfs", str(s.cwd / "bb" / "rootfs")), config["root"]
    assert s.mounted("bb/rootfs") and (s.cwd / "bb" / "rootfs" / "bin" / "busybox").exists()


def _unmounted_bundle(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert not s.mounted("bb/rootfs")


def _merged_lowers(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    mnt = s.cwd / "mnt"
    assert sorted(os.listdir(mnt)) == ["base-only", "mid-only", "shadowed", "top-only"]
    assert (mnt / "shadowed").read_text() == "top\n"  # the first lowerdir is the top layer
    with pytest.raises(OSError) as err:
        (mnt / "x").write_text("x")
    assert err.value.errno == errno.EROFS


def _unmounted_mnt(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    assert not s.mounted("mnt")


def _merged_writable(s: Session, p: subprocess.CompletedProcess[str]) -> None:
    mnt = s.cwd / "mnt"
    assert sorted(os.listdir(mnt)) == ["base-only", "shadowed", "top-only"]
    (mnt / "new").write_text("written\n")
    os.unlink(mnt / "base-only")
    assert (s.cwd / "up" / "new").read_text() == "written\n"
    assert os.lstat(s.cwd / "up" / "base-only").st_rdev == 0  # a whiteout, in the kernel's form
    assert (s.cwd / "base" / "base-only").exists()  # lower layers never change


#: Each command of the session (README.rst as written, trailing comment dropped) -> its check.
STEPS: dict[str, Step] = {
    "layerfs login localhost:5000 -u me --password-stdin < token.txt": Step(_logged_in),
    "layerfs pull localhost:5000/alpine:3.20": Step(_pulled),
    "layerfs pull --platform linux/arm64 localhost:5000/app:1": Step(_pulled_arm64),
    "layerfs load oci:./busybox:latest": Step(_loaded_layout),
    "layerfs load -i app.tar": Step(_loaded_archive),
    "layerfs images": Step(_listed),
    "layerfs inspect busybox:latest": Step(_inspected),
    "layerfs tag busybox:latest mybox:1": Step(_tagged),
    "layerfs rm mybox:1": Step(_untagged),
    "mkdir rootfs mnt": Step(_made_dirs),
    "layerfs mount --name dev busybox:latest rootfs/": Step(_mounted_dev),
    "chroot rootfs/ /bin/sh": Step(_changed_in_chroot, stdin="echo written in dev > /hello\n"),
    "layerfs mounts": Step(_listed_mounts),
    "layerfs umount rootfs/": Step(_unmounted_rootfs),
    "layerfs ps": Step(_listed_containers),
    "layerfs diff dev": Step(_diffed),
    "layerfs mount --read-only localhost:5000/alpine:3.20 mnt/": Step(_mounted_read_only),
    "layerfs umount rootfs/ mnt/": Step(_unmounted_both),
    "layerfs commit dev mybox:2": Step(_committed),
    "layerfs push mybox:2 localhost:5000/mybox:2": Step(_pushed),
    "layerfs rm dev": Step(_removed_dev),
    "layerfs run --rm -it localhost:5000/alpine:3.20 sh": Step(_ran_in_a_terminal,
                                                               stdin="echo pid-1-is-me $$; exit\n"),
    "layerfs run --name build -w /tmp busybox:latest sh -c 'echo built > out'": Step(_ran_and_kept),
    "layerfs bundle busybox ./bb": Step(_bundled),
    "layerfs umount ./bb/rootfs": Step(_unmounted_bundle),
    "layerfs mount -o lowerdir=top:mid:base mnt/": Step(_merged_lowers),
    "layerfs umount mnt/": Step(_unmounted_mnt),
    "layerfs mount -o lowerdir=top:base,upperdir=up,workdir=work mnt/": Step(_merged_writable),
}
#: A command the session runs twice is checked the second time by this instead.
AGAIN: dict[str, Step] = {
    "layerfs mount --name dev busybox:latest rootfs/": Step(_mounted_dev_again),
}


def multi_platform_layout(path: Path) -> None:
    """An OCI layout whose ``1`` is an index of a linux/amd64 and a linux/arm64 image."""
    entries = []
    for arch in ("amd64", "arm64"):
        config = {"architecture": arch, "os": "linux", "created": "2020-09-13T12:26:40Z"}
        img = write_layout(path, arch, [], config=config)
        entries.append({"mediaType": MEDIA_MANIFEST, "digest": img.manifest_digest,
                        "size": blob_path(path, img.manifest_digest).stat().st_size,
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    blob_path(path, sha256(index)).write_bytes(index)
    top = json.loads((path / "index.json").read_text())
    top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(index),
                             "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "1"}})
    (path / "index.json").write_text(json.dumps(top))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A Basic-auth registry holding alpine:3.20 (busybox: a shell to run), app:1 (amd64 and arm64)."""
    require_tool("docker-registry", "htpasswd", "skopeo", "umoci")
    work = tmp_path / "registry"
    work.mkdir()
    reg = Registry.start(work, work / "storage", htpasswd=write_htpasswd(work / "htpasswd", {USER: PASSWORD}))
    try:
        creds = f"{USER}:{PASSWORD}"
        push(build_busybox(work / "busybox").source, f"{reg.host}/alpine:3.20", creds=creds)
        multi_platform_layout(work / "multi")
        push(f"oci:{work / 'multi'}:1", f"{reg.host}/app:1", "--all", creds=creds)
        yield reg
    finally:
        reg.stop()


def in_terminal(command: str, *, cwd: Path, env: dict[str, str], typed: str) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c command`` on a pseudo-terminal, typing ``typed`` once it runs; returns its exit
    status and everything it wrote (the terminal echoes what was typed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        os.chdir(cwd)
        os.execve("/bin/sh", ["sh", "-c", command], env)
    out, sent = b"", False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                if not sent and out:  # it is up and waiting
                    os.write(fd, typed.encode())
                    sent = True
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the last process holding the terminal is gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended == 0:  # still running at the deadline
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), out.decode(errors="replace"), "")


def test_the_using_it_session_runs_as_written(registry: Registry, tmp_path: Path) -> None:
    require_root()  # chroot, and runc as it runs here
    require_fuse()
    require_tool("runc", "skopeo")
    commands = session()
    keys = [without_comment(c) for c in commands]
    assert set(keys) == set(STEPS), (f"README commands without a check here: {sorted(set(keys) - set(STEPS))}; "
                                     f"checks of commands the README no longer has: {sorted(set(STEPS) - set(keys))}")
    assert all(README_REGISTRY in c for c in commands if "localhost" in c)

    cwd = tmp_path / "session"
    cwd.mkdir()
    (cwd / "token.txt").write_text(PASSWORD + "\n")
    busybox = build_busybox(tmp_path / "busybox")
    os.rename(busybox.source.split(":")[1], cwd / "busybox")
    app = write_layout(tmp_path / "app", "1", [], config={"architecture": "amd64", "os": "linux",
                                                          "created": "2020-09-13T12:26:40Z"})
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", app.source, f"docker-archive:{cwd / 'app.tar'}:app:1"],
                   check=True, capture_output=True, timeout=120)
    for name, files in {"top": {"top-only": "t\n", "shadowed": "top\n"}, "mid": {"mid-only": "m\n"},
                        "base": {"base-only": "b\n", "shadowed": "base\n"}, "up": {}, "work": {}}.items():
        (cwd / name).mkdir()
        for file, text in files.items():
            (cwd / name / file).write_text(text)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "CONTAINERS_REGISTRIES_CONF", "LAYERFS_ENGINE")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(home / ".config"),
               LAYERFS_ROOT=str(tmp_path / "store"), LAYERFS_RUNTIME_DIR=str(tmp_path / "run"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    (tmp_path / "xdg").mkdir(mode=0o700)
    s = Session(cwd, env, registry.host)
    done: set[str] = set()
    try:
        for command, key in zip(commands, keys):
            step = AGAIN[key] if key in done and key in AGAIN else STEPS[key]
            done.add(key)
            line = command.replace(README_REGISTRY, registry.host)
            if re.search(r" -[a-z]*t[a-z]* ", line):  # -t, -it: a terminal, as a user has
                proc = in_terminal(line, cwd=cwd, env=env, typed=step.stdin)
            else:
                proc = subprocess.run(["sh", "-c", line], cwd=cwd, env=env, input=step.stdin, capture_output=True,
                                      text=True, timeout=300)
            assert proc.returncode == 0, f"{command}\nexited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            try:
                step.check(s, proc)
            except AssertionError as err:
                raise AssertionError(f"{command}\ndid not do what the README says: {err}") from err
    finally:
        left = [m for m in mountpoints() if m.startswith(str(tmp_path))]
        for mnt in reversed(left):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, check=False)
        for record in (tmp_path / "run").glob("*/mount.json"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(json.loads(record.read_text()).get("pid", 0))
                if pid > 0:
                    os.kill(pid, signal.SIGKILL)
    assert left == [], f"the session left mounted: {left}"
