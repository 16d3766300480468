"""Image commands: ``load``, ``images``, ``inspect``, ``tag``, ``rm`` (docker's words and columns)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from .._errors import BadImage, ImageNotFound, LayerfsError
from .._oci.reference import parse as parse_reference
from .._store import containers as _containers
from .._store.store import Image, Store
from .._units import human_duration, human_size, parse_time, since
from .remote import DOCKER_TRANSPORT, add_registry_options, cmd_inspect_remote, go_bool
from .rows import ellipsis, go_time_string, rfc3339, unix_time
from .template import Row, Template, format_rows


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("load", formatter_class=fmt, help="load an image from an OCI layout or an archive",
                       description="""\
Load images from a directory or archive into the store, verifying every digest, and print
what was loaded as `docker load` does: `Loaded image: NAME` for each name the source gives an
image, `Loaded image ID: ID` for an image it names not at all.  Each layer is unpacked once, in
overlay form, into a directory named after its diff ID; layers already in the store are not
unpacked again.  With no SOURCE, the archive is read from standard input (`docker save`'s
output, plain or compressed), as `docker load` reads it.

SOURCE is one of (skopeo's transport names):
  oci:DIR[:TAG]           an OCI image layout; TAG picks the manifest whose
                          org.opencontainers.image.ref.name is TAG (default: all of them)
  oci-archive:FILE[:TAG]  the same, as a tar file
  docker-archive:FILE     what `docker save` writes; its RepoTags name the images
  PATH                    detected: a layout directory, or either kind of archive

A transport that does not fit the source is refused, naming what the source is.  An entry
tagged with a bare TAG is named after the layout directory: oci:./busybox:1.36 loads as
busybox:1.36; in an archive it loads untagged (name it with --tag).  A multi-platform image
loads this host's platform, or --platform's.  If anything fails, the store is left as it was.

Progress goes to stdout when it is a terminal, and nowhere otherwise (as docker load).

examples:
  layerfs load oci:./busybox-layout:latest
  layerfs load -i app.tar
  docker save app:1 | layerfs load
  layerfs load --platform linux/arm64 oci-archive:multi.tar
  layerfs load --tag myapp:dev app.tar""")
    p.add_argument("source", metavar="SOURCE", nargs="?", help="what to load (default: standard input)")
    p.add_argument("-i", "--input", metavar="FILE",
                   help="read from this archive or layout instead of standard input (as docker load -i)")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="REF",
                   help="also tag the loaded image REF (repeatable)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to load from a multi-platform image (default: this host's)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.set_defaults(handler=cmd_load)

    p = sub.add_parser("images", aliases=["ls"], formatter_class=fmt, help="list images, like `docker image ls`",
                       description="""\
List the images in the store: a row per tag (REPOSITORY TAG IMAGE ID CREATED SIZE), an untagged
image as <none> <none>; with --digests, a row per tag and repo digest, as docker lists them (a
tag pulled under two manifests has two).  SIZE is what the image's layers take unpacked; layers
shared between images are counted in each (`layerfs system df -v` shows what is shared).  -q
prints each image ID once.

REPOSITORY[:TAG], and --filter reference=, take docker's patterns (Go's path.Match: * and ?
match within one /-separated part) against the familiar name with and without its tag.  Filters
(repeatable; several of one kind: any may match; of different kinds: all must):
  reference=PATTERN      rows whose name matches: reference='busybox', reference='*/app:1.*'
  dangling=true|false    only images without a tag, or only images with one
  before=IMAGE           images created before IMAGE (by the config's created time)
  since=IMAGE            images created after IMAGE
  label=KEY, label=KEY=VALUE   images whose config has the label (with that value)

--format takes docker's Go templates: `table` (the default), `json` (an object per row),
`table TEMPLATE` (with a header) or TEMPLATE, with the fields Repository, Tag, Digest, ID,
CreatedSince, CreatedAt, Size, VirtualSize (and SharedSize, UniqueSize, Containers: N/A, as
docker prints them here).  layerfs records no parent images (docker's intermediate images of
a build), so -a lists what the default lists; it is accepted for docker's scripts.

examples:
  layerfs images
  layerfs images --digests busybox
  layerfs images --filter dangling=true -q
  layerfs images --filter 'reference=*/app' --format '{{.Repository}}:{{.Tag}} {{.Size}}'
  layerfs images --format 'table {{.ID}}\\t{{.Repository}}\\t{{.CreatedAt}}'
  layerfs images -q | xargs layerfs rm -f      remove every image (-f: those tagged in several
                                               repositories too, as docker rmi -f)""")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]",
                   help="only images of this repository (and tag, if given); a pattern as reference=")
    p.add_argument("-a", "--all", action="store_true",
                   help="all images (docker hides intermediate images: layerfs has none)")
    p.add_argument("--digests", action="store_true", help="show the repo digests: a row per tag and digest")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="only the images that match (reference, dangling, before, since, label); repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help="only the image IDs")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.add_argument("--format", metavar="FORMAT",
                   help="table (default), json (an object per row, docker's fields), or a Go template")
    p.set_defaults(handler=cmd_images)

    p = sub.add_parser("history", formatter_class=fmt, help="show an image's layers and how they were made, "
                                                             "like `docker history`",
                       description="""\
Show the history of an image as `docker history` does: a row per entry of its config's history,
newest first: IMAGE (the image's ID on the newest row, <missing> below: layerfs keeps no parent
images), CREATED, CREATED BY (the instruction, cut to 45 columns unless --no-trunc), SIZE (what
the entry's layer takes unpacked; 0B for an entry that made no layer) and COMMENT.  An image
whose config has no history shows none, as docker shows it.

--format takes docker's Go templates (`table`, `json`, `table TEMPLATE`, TEMPLATE) with the
fields ID, CreatedSince, CreatedAt, CreatedBy, Size, Comment.  -H=false prints times in RFC 3339
and sizes in bytes.

examples:
  layerfs history busybox:latest
  layerfs history --no-trunc --format '{{.CreatedBy}}' debian:12
  layerfs history -H=false --format json app:1""")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-H", "--human", type=go_bool, default=True, metavar="BOOL",
                   help="sizes and dates in human readable form (default true; -H=false: RFC 3339 and bytes)")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs and instructions")
    p.add_argument("-q", "--quiet", action="store_true", help="only the image IDs")
    p.add_argument("--format", metavar="FORMAT", help="table (default), json, or a Go template")
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("inspect", formatter_class=fmt,
                       help="show images as JSON, like `docker image inspect` (in a registry: `skopeo inspect`)",
                       description="""\
Print a JSON array with one object per image of the store: docker's fields (Id, RepoTags,
RepoDigests, Created, Architecture, Os, Config, RootFS, Size, ...) plus "Layers", which says
where each unpacked layer lives (Path) with its diff ID, ChainID and size.  IMAGE is a
name[:tag], name@digest, image ID or a unique prefix of one.  --format prints a Go template
for each image instead, as `docker inspect -f` does ({{.Id}}, {{.Config.Env}},
{{json .Config}}, ...; `json` is the default output).

With --remote, or a reference written docker://REF, the image is looked at in its registry
without pulling it, and printed as `skopeo inspect` prints it: Name, Digest (of what REF names:
the index, for a multi-platform image), RepoTags (the repository's tags), and this host's (or
--platform's) image: Created, DockerVersion, Labels, Architecture, Os, Layers, LayersData, Env.
--config prints its config instead (as the OCI image-spec's Image holds it), --raw the exact
manifest bytes (with --config: the config's); --format a Go template of skopeo's fields.
Nothing is added to the store.

examples:
  layerfs inspect busybox:latest
  layerfs inspect 3f57 | jq '.[0].Layers[].Path'
  layerfs inspect --format '{{.Id}} {{json .Config.Env}}' busybox
  layerfs inspect docker://alpine:3.20
  layerfs inspect --remote --config --raw localhost:5000/app:1 | sha256sum
  layerfs inspect --creds ci:$TOKEN --format '{{.Digest}}' docker://registry.example.com/app:1""")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--format", metavar="TEMPLATE",
                   help="a Go template printed for each image (docker's and skopeo's field names); json: the "
                        "default output")
    p.add_argument("--remote", action="store_true",
                   help="look at REF in its registry, without pulling it (as `skopeo inspect docker://REF`)")
    p.add_argument("--raw", action="store_true", help="with --remote: the manifest (or with --config the config) "
                                                      "as the registry serves it")
    p.add_argument("--config", action="store_true", help="with --remote: the image's config")
    p.add_argument("-n", "--no-tags", action="store_true", help="with --remote: do not list the repository's tags")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="with --remote: the image of this platform from a multi-platform one (default: this host's)")
    add_registry_options(p)
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("tag", formatter_class=fmt, help="give an image another name: tag SOURCE TARGET",
                       description="""\
Point the reference TARGET (name[:tag]) at the image SOURCE.

examples:
  layerfs tag busybox:latest mybox:1
  layerfs tag 3f57 localhost:5000/team/app:2      before `layerfs push localhost:5000/team/app:2`""")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(handler=cmd_tag)

    p = sub.add_parser("rm", aliases=["rmi"], formatter_class=fmt,
                       help="remove containers or images, like `docker rm` / `docker image rm`",
                       description="""\
Remove containers and images.  A NAME that names a container (see `layerfs ps`) removes the
container and its changes; it is refused while the container is mounted.  `rmi` removes images
only.

Removing name:tag of an image with other tags only untags it; the image goes with its last
reference, and with it every layer no other image uses.  Removing by image ID removes every
name and the image; as with docker rmi, an image tagged in several repositories then needs -f.
An image in use by a mount (see `layerfs mounts`) is never removed, nor one a container was
made from (with -f it is untagged and kept for the container).

examples:
  layerfs rm busybox:latest
  layerfs rm quiet_turing                  a container
  layerfs rm -f 3f57a1b2c3d4
  layerfs images -q | xargs layerfs rm -f  every image""")
    p.add_argument("images", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove an image by ID although it is tagged in several repositories; untag one a "
                        "container was made from (never one a mount uses)")
    p.set_defaults(handler=cmd_rm)


def cmd_load(args: argparse.Namespace) -> int:
    from .._transfer.load import load_images
    from .._transfer.progress import for_stream, is_terminal

    if args.input and args.source:
        raise LayerfsError("load: give SOURCE or -i FILE, not both")
    source: str | BinaryIO | None = args.input or args.source
    if source is None:
        if sys.stdin is None or is_terminal(sys.stdin):
            raise LayerfsError("requested load from stdin, but stdin is empty")
        source = sys.stdin.buffer
    progress = for_stream(sys.stdout, quiet=args.quiet, plain=False)
    for loaded in load_images(Store(args.root), source, tags=args.tag, progress=progress, platform=args.platform):
        if args.quiet:
            print(loaded.image.id)
            continue
        for name in loaded.names:
            print(f"Loaded image: {name}")
        if not loaded.names:
            print(f"Loaded image ID: {loaded.image.id}")
    return 0


def _rows(repo_tags: Sequence[str], repo_digests: Sequence[str], digests: bool) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) rows of an image's references, as docker lists them (its CLI's
    ``imageFormatTaggedAndDigest``): a row per tag; with ``digests``, a row per tag and repo
    digest of its repository; a repository with digests only: a ``<none>`` tag row per digest
    (one row without ``digests``).  Digests show only with ``digests``."""
    tags: dict[str, list[str]] = {}
    for ref in repo_tags:
        repo, _, tag = ref.rpartition(":")
        tags.setdefault(repo, []).append(tag)
    by_repo: dict[str, list[str]] = {}
    for ref in repo_digests:
        repo, _, digest = ref.rpartition("@")
        by_repo.setdefault(repo, []).append(digest)
    rows = []
    for repo, names in tags.items():
        found = by_repo.pop(repo, []) if digests else []
        by_repo.pop(repo, None)
        for tag in names:
            rows += [(repo, tag, d) for d in found] or [(repo, tag, "<none>")]
    for repo, found in by_repo.items():
        rows += [(repo, "<none>", d) for d in found] if digests else [(repo, "<none>", "<none>")]
    return rows or [("<none>", "<none>", "<none>")]


#: The filters ``images --filter`` takes (docker's, moby ``daemon/images/images.go``).
IMAGE_FILTERS = ("reference", "dangling", "before", "since", "label")


def parse_filters(values: Sequence[str], accepted: Sequence[str]) -> dict[str, list[str]]:
    """``--filter KEY=VALUE`` values by key, as docker's ``filters.ParseFlag`` reads them (the
    key lower-cased, both sides trimmed).

    Raises:
        LayerfsError: a value without ``=``, or a key not in ``accepted`` (docker's words).
    """
    out: dict[str, list[str]] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep:
            raise LayerfsError(f"bad format of filter {text!r} (expected name=value)")
        key = key.strip().lower()
        if key not in accepted:
            raise LayerfsError(f"invalid filter '{key}' (the filters are {', '.join(accepted)})")
        out.setdefault(key, []).append(value.strip())
    return out


def _glob(pattern: str) -> re.Pattern[str]:
    """Go's ``path.Match`` pattern as a regex: ``*`` any run of characters but ``/``, ``?`` one
    character but ``/``, ``[...]`` a class (``[^...]`` negated, ``a-z`` ranges), ``\\`` escapes.

    Raises:
        LayerfsError: a malformed pattern (Go's ``syntax error in pattern``).
    """
    bad = LayerfsError(f"invalid filter 'reference={pattern}': syntax error in pattern")
    out, i, n = [], 0, len(pattern)

    def char(j: int) -> tuple[str, int]:
        if j >= n:
            raise bad
        if pattern[j] == "\\":
            if j + 1 >= n:
                raise bad
            return pattern[j + 1], j + 2
        return pattern[j], j + 1

    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            i += negated
            items: list[str] = []
            while True:
                if i >= n:
                    raise bad
                if pattern[i] == "]" and items:
                    i += 1
                    break
                if pattern[i] in "-]":
                    raise bad
                low, i = char(i)
                if i < n and pattern[i] == "-":
                    high, i = char(i + 1)
                    if high < low:
                        raise bad
                    items.append(f"{re.escape(low)}-{re.escape(high)}")
                else:
                    items.append(re.escape(low))
            out.append(f"[{'^' if negated else ''}{''.join(items)}]")
        else:
            literal, i = char(i)
            out.append(re.escape(literal))
    return re.compile("".join(out) + r"\Z", re.S)


def _familiar_match(patterns: Sequence[re.Pattern[str]], ref: str) -> bool:
    """docker's ``reference.FamiliarMatch``: a pattern matches the familiar reference, or its name."""
    name = ref.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return any(p.match(ref) or p.match(name) for p in patterns)


def _created(image: Image) -> datetime.datetime:
    return parse_time(image.created) or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def _image_row(image: Image, repo: str, tag: str, digest: str, trunc: bool) -> Row:
    return Row({"Containers": "N/A", "CreatedAt": go_time_string(unix_time(image.created)) if image.created else "",
                "CreatedSince": since(image.created), "Digest": digest,
                "ID": image.short_id if trunc else image.id, "Repository": repo, "SharedSize": "N/A",
                "Size": human_size(image.size), "Tag": tag, "UniqueSize": "N/A", "VirtualSize": human_size(image.size)})


#: docker's column names for the fields of an ``images`` row (``formatter.NewImageContext``).
IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
                 "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE", "Containers": "CONTAINERS",
                 "VirtualSize": "SIZE", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE"}
_IMAGES_TABLE = "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}"
_IMAGES_TABLE_DIGESTS = "table {{.Repository}}\\t{{.Tag}}\\t{{.Digest}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}"


def select_images(store: Store, filters: Mapping[str, Sequence[str]]) -> list[tuple[Image, list[str], list[str]]]:
    """The images ``filters`` keep, with the tags and repo digests that pass the reference filter,
    by docker's rules (moby ``ImageService.Images``): ``dangling=true`` keeps untagged images
    only, ``dangling=false`` drops images left without a reference; ``before``/``since`` compare
    the config's created time (strictly); ``label`` filters must all match; ``reference``
    patterns (any may match) keep an image's matching references and drop an image with none.

    Raises:
        LayerfsError: a bad ``dangling`` value or pattern; ImageNotFound: a ``before``/``since``
            image the store lacks.
    """
    dangling = filters.get("dangling", [])
    if any(v not in ("true", "false") for v in dangling):
        raise LayerfsError(f"invalid filter 'dangling={','.join(dangling)}' (true or false)")
    dangling_only = "true" in dangling
    before = _created(store.get(filters["before"][-1])) if filters.get("before") else None
    after = _created(store.get(filters["since"][-1])) if filters.get("since") else None
    patterns = [_glob(p) for p in filters.get("reference", [])]
    out = []
    for image in store.images():
        created = _created(image)
        if (before is not None and created >= before) or (after is not None and created <= after):
            continue
        if filters.get("label"):
            config = image.config.get("config")
            labels = config.get("Labels") if isinstance(config, Mapping) else None
            labels = labels if isinstance(labels, Mapping) else {}
            wanted = [v.partition("=") for v in filters["label"]]
            if not all(k in labels and (not sep or labels[k] == v) for k, sep, v in wanted):
                continue
        tags = [r for r in image.repo_tags if not patterns or _familiar_match(patterns, r)]
        digests = [r for r in image.repo_digests if not patterns or _familiar_match(patterns, r)]
        if dangling_only and tags:
            continue
        if not tags and not digests and ((dangling and not dangling_only) or patterns):
            continue
        out.append((image, tags, digests))
    return out


def cmd_images(args: argparse.Namespace) -> int:
    store = Store(args.root)
    filters = parse_filters(args.filter, IMAGE_FILTERS)
    if args.repository:
        pattern = args.repository
        if not any(c in pattern for c in "*?[\\"):
            with contextlib.suppress(LayerfsError):
                pattern = parse_reference(pattern, default_tag=False).familiar()
        filters.setdefault("reference", []).append(pattern)
    table = []
    for image, tags, digests in select_images(store, filters):
        for repo, tag, digest in _rows(tags, digests, args.digests):
            table.append((image, repo, tag, digest))
    if args.quiet and (not args.format or args.format.strip() == "table"):
        seen = []
        for image, *_ in table:
            ident = image.id if args.no_trunc else image.short_id
            if ident not in seen:
                seen.append(ident)
        print("\n".join(seen)) if seen else None
        return 0
    rows = [_image_row(image, repo, tag, digest, not args.no_trunc) for image, repo, tag, digest in table]
    sys.stdout.write(format_rows(args.format, rows, IMAGE_HEADERS,
                                 _IMAGES_TABLE_DIGESTS if args.digests else _IMAGES_TABLE))
    return 0


#: docker's column names for the fields of a ``history`` row.
HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY",
                   "Size": "SIZE", "Comment": "COMMENT"}
#: Before this time (2000-01-01), docker history shows no CREATED (a reproducible build's 0).
_HISTORY_EPOCH = 946684800


def history_rows(store: Store, image: Image, *, trunc: bool, human: bool) -> list[Row]:
    """The rows of ``history``, newest first (moby ``ImageService.ImageHistory``, docker/cli
    ``historyContext``): one per entry of the config's history; each entry that made a layer
    (no ``empty_layer``) takes the next layer, base first, and its size.

    Raises:
        BadImage: the history lists more layers than the image has.
    """
    history = image.config.get("history")
    entries = [h for h in history if isinstance(h, Mapping)] if isinstance(history, list) else []
    rows: list[Row] = []
    layer = 0
    for entry in entries:
        size = 0
        if not entry.get("empty_layer"):
            if layer >= len(image.diff_ids):
                raise BadImage(f"history {image.short_id}: the config's history lists more layers than its "
                               f"{len(image.diff_ids)}")
            size = int(store.layer_info(image.diff_ids[layer]).get("size", 0))  # type: ignore[call-overload]
            layer += 1
        created = unix_time(str(entry.get("created") or ""))
        created_at = rfc3339(created)
        if not human:
            created_since = created_at
        elif created <= _HISTORY_EPOCH:
            created_since = ""
        else:
            created_since = f"{human_duration(time.time() - created)} ago"
        created_by = str(entry.get("created_by") or "").replace("\t", " ")
        rows.insert(0, Row({"ID": "<missing>", "CreatedAt": created_at, "CreatedSince": created_since,
                            "CreatedBy": ellipsis(created_by, 45) if trunc else created_by,
                            "Size": human_size(size) if human else str(size),
                            "Comment": str(entry.get("comment") or "")}))
    if rows:
        rows[0]["ID"] = image.short_id if trunc else image.id
    return rows


def cmd_history(args: argparse.Namespace) -> int:
    store = Store(args.root)
    image = store.get(args.image)
    rows = history_rows(store, image, trunc=not args.no_trunc, human=args.human)
    fmt = args.format
    if not fmt or fmt.strip() == "table":
        if args.quiet:
            fmt = "{{.ID}}"
        else:
            fmt = ("table {{.ID}}\\t{{.CreatedSince}}\\t{{.CreatedBy}}\\t{{.Size}}\\t{{.Comment}}" if args.human else
                   "table {{.ID}}\\t{{.CreatedAt}}\\t{{.CreatedBy}}\\t{{.Size}}\\t{{.Comment}}")
    sys.stdout.write(format_rows(fmt, rows, HISTORY_HEADERS, fmt))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.remote or any(name.startswith(DOCKER_TRANSPORT) for name in args.images):
        return cmd_inspect_remote(args)
    for flag, given in (("--raw", args.raw), ("--config", args.config), ("--no-tags", args.no_tags),
                        ("--platform", args.platform), ("--creds", args.creds),
                        ("--tls-verify=false", not args.tls_verify), ("--insecure-registry", args.insecure_registry)):
        if given:
            raise LayerfsError(f"inspect: {flag} is for an image in a registry: inspect --remote REF or "
                               f"inspect docker://REF")
    store = Store(args.root)
    out, missing = [], []
    for name in args.images:
        try:
            out.append(store.inspect(store.get(name)))
        except ImageNotFound as err:
            missing.append(str(err))
    if args.format and args.format.strip() != "json":
        template = Template(args.format)
        for obj in out:
            print(template.render(obj))
    else:
        print(json.dumps(out, indent=4))
    if missing:
        for line in missing:
            print(f"Error: {line}", file=sys.stderr)
        return 1
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    Store(args.root).tag(args.source, args.target)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = Store(args.root)
    status = 0
    images_only = getattr(args, "command", "rm") == "rmi"
    for name in args.images:
        try:
            if not images_only and _containers.find(store, name) is not None:
                print(_containers.remove(store, name, force=args.force))
                continue
            lines = store.remove(name, force=args.force)
        except LayerfsError as err:
            print(f"Error: {err}", file=sys.stderr)
            status = 1
            continue
        for line in lines:
            print(line)
    return status
