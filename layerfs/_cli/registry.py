"""Registry commands: ``pull``, ``login``, ``logout`` (docker's words and behaviour)."""

from __future__ import annotations

import argparse
import getpass
import sys

from .._errors import LayerfsError
from .._oci.reference import parse as parse_reference
from .._registry.auth import Credentials, docker_config_path, remove_credentials, store_credentials
from .._store.store import Store
from .._transfer.progress import for_stream, is_terminal
from .remote import add_registry_options, registry_client

_INSECURE_HELP = ("talk to this registry (host[:port]) over plain HTTP; repeatable.  localhost and "
                  "127.0.0.1 always are, and so are registries marked insecure in "
                  "/etc/containers/registries.conf or /etc/docker/daemon.json")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("pull", formatter_class=fmt, help="pull an image from a registry, like `docker pull`",
                       description="""\
Pull an image from an OCI / Docker v2 registry into the store and print its progress the way
`docker pull` does.  REF is normalised as docker normalises it:

  alpine                         docker.io/library/alpine:latest
  localhost:5000/app:1.0         a tag on the registry at localhost:5000 (plain HTTP)
  app@sha256:<64 hex>            exactly that manifest or index
  app:1.0@sha256:<64 hex>        the digest wins; the tag is not recorded

Layers download in parallel and unpack while they stream; each blob's digest and each layer's
diff ID is verified before the layer enters the store, and a layer already there is not fetched
again ("Already exists").  A multi-platform image gives the host's platform (or --platform's),
chosen with containerd's rules.  Credentials come from `layerfs login` (the docker config and
its credential helpers), $REGISTRY_AUTH_FILE or the containers auth.json.

If the pull fails, is interrupted (Ctrl-C) or killed, no image is recorded, but the layers it
completed and the part of a blob it downloaded are kept (under the store's tmp/, for a day), as
docker keeps completed layers: the next pull of them costs only what is left (a Range request
from where the blob stopped).

examples:
  layerfs pull alpine
  layerfs pull --platform linux/arm64 localhost:5000/app:1.0
  layerfs pull -q registry.example.com:5000/team/app@sha256:...
  layerfs pull --creds ci:$TOKEN --tls-verify=false reg.lan:5000/app:1""")
    p.add_argument("reference", metavar="REF")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to pull from a multi-platform image (default: this host's)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", help=_INSECURE_HELP)
    add_registry_options(p, insecure=False)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--max-concurrent-downloads", type=_positive, default=None, metavar="N",
                   help="layers downloaded at once (default 3, as docker)")
    p.add_argument("--stall-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="a transfer that receives less than 1 KiB in this time is stalled: it is resumed twice, "
                        "then the pull fails naming the blob (default 30; env LAYERFS_STALL_TIMEOUT, which "
                        "`layerfs mount` also uses when it pulls)")
    p.set_defaults(handler=cmd_pull)

    p = sub.add_parser("login", formatter_class=fmt, help="save credentials for a registry",
                       description=f"""\
Check credentials against REGISTRY (a GET /v2/ with them, through its Basic or token auth) and,
if it accepts them, save them as docker does: with the credential helper the docker config
({docker_config_path()}, or $DOCKER_CONFIG/config.json) names for the registry (credHelpers, else
credsStore: the program docker-credential-<helper>), else in that file, where docker, podman,
skopeo and layerfs all find them (mode 0600; the password base64-encoded, not encrypted).

Without a terminal, login asks for nothing: give the user with -u and the password with
--password-stdin (docker refuses an interactive login from a non-TTY device too).

examples:
  echo "$TOKEN" | layerfs login registry.example.com -u ci --password-stdin
  layerfs login localhost:5000 -u alice""")
    p.add_argument("registry", metavar="REGISTRY", help="host[:port] of the registry")
    p.add_argument("-u", "--username", help="the user name (asked for if missing)")
    p.add_argument("-p", "--password", help="the password (insecure: it shows in `ps`; prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", help=_INSECURE_HELP)
    p.set_defaults(handler=cmd_login)

    p = sub.add_parser("logout", formatter_class=fmt, help="remove saved credentials for a registry",
                       description="""\
Remove REGISTRY's credentials from the docker config, and from the credential helper it names
for the registry.  Credentials in $REGISTRY_AUTH_FILE or the containers auth.json are not
touched.

examples:
  layerfs logout localhost:5000""")
    p.add_argument("registry", metavar="REGISTRY")
    p.set_defaults(handler=cmd_logout)


def _positive(text: str) -> int:
    """A count of at least 1 (docker refuses ``max-concurrent-downloads`` 0 too)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of 1 or more, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"want a number of seconds above 0, not {text!r}")
    return value


def cmd_pull(args: argparse.Namespace) -> int:
    ref = parse_reference(args.reference, default_tag=False)  # before anything else: a bad one fails at once
    if not ref.tag and not ref.digest:
        ref = parse_reference(args.reference)
        if not args.quiet:
            print(f"Using default tag: {ref.tag}", flush=True)  # docker's first line
    from .._transfer.pull import MAX_CONCURRENT_DOWNLOADS, pull  # httpx costs ~50 ms to import: only here

    progress = for_stream(sys.stdout, quiet=args.quiet)
    with registry_client(args, ref, stall_timeout=args.stall_timeout) as client:
        image = pull(Store(args.root), ref, platform=args.platform, progress=progress, client=client,
                     max_concurrent_downloads=args.max_concurrent_downloads or MAX_CONCURRENT_DOWNLOADS)
    print(image.id if args.quiet else ref.familiar() if ref.digest else str(ref))
    return 0


def _registry_host(text: str) -> str:
    host = text.strip()
    for prefix in ("https://", "http://"):
        host = host.removeprefix(prefix)
    host = host.split("/", 1)[0]
    if not host:
        raise LayerfsError(f"invalid registry {text!r}")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _read_password_stdin() -> str:
    """The password given on standard input (``--password-stdin``), without its line end.

    Raises:
        LayerfsError: standard input is closed, or gives nothing.
    """
    if sys.stdin is None:
        raise LayerfsError("--password-stdin: standard input is closed")
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise LayerfsError("--password-stdin: standard input gave no password")
    return password


def _prompt(text: str, *, secret: bool) -> str:
    """Ask the terminal for a value; docker's refusal when there is no terminal to ask.

    Raises:
        LayerfsError: standard input is not a terminal (a pipe, a file, closed), or gave nothing.
    """
    if not is_terminal(sys.stdin):
        raise LayerfsError("Cannot perform an interactive login from a non TTY device (give the password with "
                           "--password-stdin, and the user with -u)")
    try:
        return getpass.getpass(text) if secret else input(text).strip()
    except EOFError:
        raise LayerfsError("login: no " + ("password" if secret else "username") + " given") from None


def cmd_login(args: argparse.Namespace) -> int:
    host = _registry_host(args.registry)
    username = args.username
    if args.password_stdin:
        if args.password:
            raise LayerfsError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise LayerfsError("must provide --username with --password-stdin")
        password = _read_password_stdin()
    else:
        if args.password is not None:
            print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
        if not username:
            username = _prompt("Username: ", secret=False)
        password = args.password if args.password is not None else _prompt("Password: ", secret=True)
    if not username or not password:
        raise LayerfsError("login: username and password are required")
    creds = Credentials(username, password)
    from .._registry.client import RegistryClient

    with RegistryClient(insecure_registries=args.insecure_registry, credentials_for=lambda _host: creds) as client:
        try:
            client.ping(host)
        except LayerfsError as err:
            raise err.with_context(f"login {host}") from err
    path = store_credentials(host, creds)
    print(f"Login Succeeded (credentials saved in {path})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    host = _registry_host(args.registry)
    if remove_credentials(host):
        print(f"Removing login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0
