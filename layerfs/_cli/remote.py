"""Looking at a registry without pulling: ``inspect --remote`` (``inspect docker://REF``),
``manifest``, ``tags``; and the registry options skopeo users type, ``--creds USER:PASS`` and
``--tls-verify=false``, shared with ``pull`` and ``push`` (:func:`add_registry_options`,
:func:`registry_client`).
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from typing import TYPE_CHECKING

from .._errors import LayerfsError
from .._oci import platform as _platform
from .._oci.reference import Reference
from .._oci.reference import parse as parse_reference
from .template import Template

if TYPE_CHECKING:
    from .._registry.client import RegistryClient

#: skopeo's transport prefix for a registry.
DOCKER_TRANSPORT = "docker://"

_INSECURE_HELP = ("talk to this registry (host[:port]) over plain HTTP; repeatable (localhost and 127.0.0.1 "
                  "always are)")

#: skopeo's --format values that mean its default JSON (containers/common report.IsJSON).
_JSON_FORMAT = re.compile(r"\A\s*(json|\{\{\s*json\s*\.?\s*\}\})\s*\Z")


def go_bool(text: str) -> bool:
    """A boolean as Go's ``strconv.ParseBool`` reads one (``--tls-verify=false``, ``-H=0``)."""
    value = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"want true or false, not {text!r}")
    return value


def add_registry_options(p: argparse.ArgumentParser, *, insecure: bool = True) -> None:
    """Add ``--creds``, ``--tls-verify`` (and ``--insecure-registry`` unless the command has it)."""
    p.add_argument("--creds", metavar="USER[:PASSWORD]",
                   help="the credentials for this registry, instead of the saved ones (as skopeo's --creds; "
                        "without :PASSWORD, asked for on the terminal)")
    p.add_argument("--tls-verify", type=go_bool, default=True, metavar="BOOL",
                   help="--tls-verify=false: talk to this reference's registry over plain HTTP, as "
                        "--insecure-registry HOST does (skopeo's spelling)")
    if insecure:
        p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", help=_INSECURE_HELP)


def strip_transport(text: str) -> str:
    """``text`` without skopeo's ``docker://`` prefix."""
    return text[len(DOCKER_TRANSPORT):] if text.startswith(DOCKER_TRANSPORT) else text


def _credentials(text: str) -> tuple[str, str]:
    """(user, password) of a ``--creds`` value; the password asked for on a terminal if missing.

    Raises:
        LayerfsError: no user, or no password and no terminal to ask.
    """
    user, sep, password = text.partition(":")
    if not user:
        raise LayerfsError("--creds: give USER:PASSWORD (the user is empty)")
    if not sep:
        if sys.stdin is None or not sys.stdin.isatty():
            raise LayerfsError("--creds: give USER:PASSWORD (standard input is not a terminal to ask for the "
                               "password)")
        try:
            password = getpass.getpass("Password: ")
        except EOFError:
            raise LayerfsError("--creds: no password given") from None
    return user, password


def registry_client(args: argparse.Namespace, ref: Reference | None, *,
                    stall_timeout: float | None = None) -> RegistryClient:
    """A registry client with the command's registry options: ``--insecure-registry`` hosts, the
    reference's host when ``--tls-verify=false``, and ``--creds`` for every host it talks to
    (a command talks to one registry) instead of the saved credentials.

    Raises:
        LayerfsError: a ``--creds`` value without a user, or without a password and no terminal.
    """
    from .._registry.auth import Credentials
    from .._registry.client import RegistryClient  # httpx costs ~50 ms to import: only here

    insecure = list(getattr(args, "insecure_registry", []) or [])
    if not getattr(args, "tls_verify", True) and ref is not None:
        insecure.append(ref.domain)
    creds_text = getattr(args, "creds", None)
    if creds_text is None:
        return RegistryClient(insecure_registries=insecure, stall_timeout=stall_timeout)
    creds = Credentials(*_credentials(creds_text))
    return RegistryClient(insecure_registries=insecure, credentials_for=lambda _host: creds,
                          stall_timeout=stall_timeout)


def _reference(text: str, what: str) -> Reference:
    """The reference a user gave to a remote command, ``docker://`` allowed."""
    try:
        return parse_reference(strip_transport(text))
    except LayerfsError as err:
        raise err.with_context(what) from err


def _platform_arg(text: str | None) -> _platform.Platform | None:
    return _platform.parse(text) if text else None


def _write(data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("manifest", formatter_class=fmt,
                       help="print an image's manifest from its registry, like `crane manifest`",
                       description="""\
Print the manifest or index REF names, byte for byte as the registry serves it (what its digest
is computed over), without pulling anything, as `crane manifest` does.  With --platform, an
index gives way to the manifest of that platform's image (chosen as pull chooses).  Nothing is
added to the store.  The output ends where the manifest ends (no newline is added).

examples:
  layerfs manifest alpine:3.20 | jq .
  layerfs manifest --platform linux/arm64 alpine:3.20
  layerfs manifest localhost:5000/app@sha256:... | sha256sum""")
    p.add_argument("reference", metavar="REF", help="name[:tag] or name@digest (docker:// allowed)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="from an index, the manifest of this platform's image (default: the index itself)")
    add_registry_options(p)
    p.set_defaults(handler=cmd_manifest)

    p = sub.add_parser("tags", formatter_class=fmt,
                       help="list a repository's tags in its registry, like `skopeo list-tags` / `crane ls`",
                       description="""\
List the tags of REPOSITORY in its registry, one per line as `crane ls` prints them (the
registry's order, every page of the list); --format json prints skopeo list-tags's object,
{"Repository": ..., "Tags": [...]}.  Nothing is added to the store.

examples:
  layerfs tags alpine
  layerfs tags docker://localhost:5000/team/app --format json
  layerfs tags --creds ci:$TOKEN registry.example.com/team/app""")
    p.add_argument("repository", metavar="REPOSITORY", help="a repository, without tag or digest (docker:// allowed)")
    p.add_argument("--format", choices=["lines", "json"], default="lines",
                   help="lines: a tag per line (default); json: skopeo list-tags's output")
    add_registry_options(p)
    p.set_defaults(handler=cmd_tags)


def cmd_manifest(args: argparse.Namespace) -> int:
    from .._transfer.remote import for_platform, top_manifest

    ref = _reference(args.reference, "manifest")
    wanted = _platform_arg(args.platform)
    with registry_client(args, ref) as client:
        try:
            data, media_type, digest = top_manifest(client, ref)
            if wanted is not None:
                data, media_type, digest = for_platform(client, ref, data, media_type, digest, wanted)
        except LayerfsError as err:
            raise err.with_context(f"manifest {ref.familiar()}") from err
    _write(data)
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    from .._transfer.remote import go_json

    text = strip_transport(args.repository)
    ref = _reference(text, "tags")
    bare = parse_reference(text, default_tag=False)
    if bare.tag or bare.digest:
        raise LayerfsError(f"tags {text}: give a repository, without a tag or digest")
    with registry_client(args, ref) as client:
        try:
            tags = client.list_tags(ref)
        except LayerfsError as err:
            raise err.with_context(f"tags {ref.familiar_repository}") from err
    if args.format == "json":
        print(go_json({"Repository": ref.repository, "Tags": tags}))
    else:
        for tag in tags:
            print(tag)
    return 0


def cmd_inspect_remote(args: argparse.Namespace) -> int:
    """``inspect --remote REF`` / ``inspect docker://REF``: skopeo inspect's output (see
    :mod:`layerfs._transfer.remote`)."""
    from .._transfer.remote import fetch, go_json, oci_config, skopeo_inspect, top_manifest

    if len(args.images) != 1:
        raise LayerfsError("inspect --remote: give one image reference")
    if args.raw and args.format:
        raise LayerfsError("inspect --remote: --raw output does not support --format")
    ref = _reference(args.images[0], "inspect")
    wanted = _platform_arg(args.platform)
    with registry_client(args, ref) as client:
        try:
            if args.raw and not args.config:
                _write(top_manifest(client, ref)[0])
                return 0
            image = fetch(client, ref, wanted)
            if args.config:
                _write(image.config if args.raw else go_json(oci_config(image.config, image.config_digest)) + "\n")
                return 0
            tags = [] if args.no_tags else client.list_tags(ref)
        except LayerfsError as err:
            raise err.with_context(f"inspect {ref.familiar()}") from err
    out = skopeo_inspect(image, tags)
    if not args.format or _JSON_FORMAT.match(args.format):
        print(go_json(out))
    else:
        print(Template(args.format).render(out))
    return 0
