"""The registry client: the distribution API over one pooled ``httpx.Client``.

What it does for a pull (docs/oci.rst "Registry endpoints", "Content negotiation", "Authentication",
"Redirects, retries and Range", "Digests and identifiers"):

- **Endpoints**: ``https://HOST/v2/…``; plain ``http`` for ``localhost``, ``127.0.0.1``, ``::1`` and
  for the insecure registries (``--insecure-registry``, ``insecure = true`` in containers'
  ``registries.conf``, ``insecure-registries`` in ``/etc/docker/daemon.json``).  Docker Hub is
  ``registry-1.docker.io``.  TLS uses the system's CA store.
- **Negotiation**: every manifest HEAD and GET sends the four manifest types in ``Accept``; the answer's
  ``Content-Type`` must be one of them (schema 1 is refused), a ``mediaType`` in the JSON must agree
  with it (CVE-2021-41190), and the bytes must hash to the digest asked for.
- **Auth**: a 401 goes to :class:`~layerfs._auth.Authorizer`, then the request is sent once more.
- **Retries**: 408, 429 (honouring ``Retry-After``), 5xx and dropped connections are retried with
  capped exponential back-off; a refused connection to the registry itself fails at once.
- **Redirects** (up to 10) are followed by hand so that ``Authorization`` is sent to the registry's
  origin only (scheme, host and port), never to a storage host it redirects to, nor over plain
  ``http`` after a redirect from ``https``.
- **Blobs** stream through :class:`BlobReader`, a file object over the raw (undecoded) body that, when
  the connection drops, asks again with ``Range: bytes=N-`` and continues (206 from N, or 200 and
  skip N bytes).  It does not verify: the store hashes what it reads.
- **Stalls**: every transfer has a stall timeout (``stall_timeout``, default
  ``$LAYERFS_STALL_TIMEOUT`` or 30 s): a response that sends nothing, or less than
  :data:`STALL_BYTES`, for that long is stalled.  A stalled blob is resumed (``Range``) twice,
  then fails naming the blob; a stalled manifest or config fails naming it.  (A connection that
  goes silent is caught by the read timeout; one that drips a byte a second by the byte count.)

All failures are :class:`~layerfs._errors.RegistryError` with docker's words, without the reference
(the caller adds it as context).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from .._errors import BadImage, DigestMismatch, RegistryError
from .._oci.digest import check_digest, of_bytes
from .._oci.manifest import MANIFEST_TYPES, SCHEMA1_TYPES, Descriptor, json_object
from .._oci.manifest import media_type as manifest_media_type
from .._oci.reference import Reference
from .auth import Authorizer, Credentials, find_credentials

log = logging.getLogger(__name__)

#: Largest manifest or config read into memory (docs/oci.rst "Size limits").
MAX_MANIFEST_BYTES = 4 << 20
#: Largest error body read.
MAX_ERROR_BYTES = 1 << 20
USER_AGENT = "layerfs/0.1 (+https://github.com/opencontainers/distribution-spec)"
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 10

#: A transfer that receives fewer bytes than this in ``stall_timeout`` seconds is stalled.
STALL_BYTES = 1024
#: How often a stalled blob is resumed before the pull fails.
STALL_RETRIES = 2
#: The stall timeout when neither the caller nor ``$LAYERFS_STALL_TIMEOUT`` gives one.
DEFAULT_STALL_TIMEOUT = 30.0


def stall_timeout_from_env() -> float:
    """``$LAYERFS_STALL_TIMEOUT`` (seconds, > 0), else :data:`DEFAULT_STALL_TIMEOUT`.

    Raises:
        RegistryError: the variable is set to something else than a positive number.
    """
    text = os.environ.get("LAYERFS_STALL_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_STALL_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise RegistryError(f"LAYERFS_STALL_TIMEOUT={text!r}: want a number of seconds above 0")
    return value


class Stalled(Exception):
    """Raised inside the client when a transfer stalls (turned into a retry or a RegistryError)."""


class _Pace:
    """Watches the bytes a transfer receives: fewer than :data:`STALL_BYTES` in ``timeout`` seconds
    raises :class:`Stalled`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.restart()

    def restart(self) -> None:
        self._since = time.monotonic()
        self._bytes = 0

    def got(self, n: int) -> None:
        self._bytes += n
        now = time.monotonic()
        if now - self._since >= self.timeout:
            if self._bytes < STALL_BYTES:
                raise Stalled(f"stalled: less than {STALL_BYTES} bytes in {self.timeout:g} s")
            self._since, self._bytes = now, 0


@dataclasses.dataclass(frozen=True)
class RegistryStatistics:
    """Counters of a :class:`RegistryClient` (read by tests and ``scripts/bench``)."""

    requests: int
    retries: int
    redirects: int
    resumes: int
    auth_retries: int
    blob_bytes: int


def insecure_from_config() -> set[str]:
    """Registries marked insecure in containers' registries.conf and docker's daemon.json.

    ``$CONTAINERS_REGISTRIES_CONF`` replaces ``/etc/containers/registries.conf`` (as in containers'
    tools); files that are missing or unreadable are ignored.
    """
    out: set[str] = set()
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    paths = [Path(conf)] if conf else [Path("/etc/containers/registries.conf"),
                                       *sorted(Path("/etc/containers/registries.conf.d").glob("*.conf"))]
    for path in paths:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for entry in data.get("registry", []) if isinstance(data.get("registry"), list) else []:
            if isinstance(entry, dict) and entry.get("insecure") is True:
                location = entry.get("location") or entry.get("prefix")
                if isinstance(location, str):
                    out.add(location.split("/", 1)[0])
        legacy = data.get("registries", {})
        insecure = legacy.get("insecure", {}) if isinstance(legacy, dict) else {}
        if isinstance(insecure, dict) and isinstance(insecure.get("registries"), list):
            out.update(r for r in insecure["registries"] if isinstance(r, str))
    try:
        daemon = json.loads(Path("/etc/docker/daemon.json").read_text(encoding="utf-8"))
        if isinstance(daemon, dict) and isinstance(daemon.get("insecure-registries"), list):
            out.update(r for r in daemon["insecure-registries"] if isinstance(r, str))
    except (OSError, ValueError):
        pass
    return out


def _error_detail(body: bytes) -> tuple[str, str]:
    """(code, message) of a distribution error body, or ("", "")."""
    try:
        data = json.loads(body[:MAX_ERROR_BYTES])
    except ValueError:
        return "", ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("code", "")), str(errors[0].get("message", ""))
    return "", ""


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit (RFC 6454 origins)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme)


#: Go's words for a TLS handshake answered in plain HTTP (docker says them too).
_PLAIN_HTTP = "http: server gave HTTP response to HTTPS client"


def _transport_cause(err: Exception) -> str:
    """docker-like words for a transport failure."""
    seen: Exception | None = err
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return "connect: connection refused"
        if isinstance(seen, ssl.SSLError):
            if "WRONG_VERSION_NUMBER" in str(seen) or "record layer failure" in str(seen):
                return _PLAIN_HTTP
            return f"tls: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(err) or type(err).__name__
    if "Connection refused" in text:
        return "connect: connection refused"
    if "WRONG_VERSION_NUMBER" in text:
        return _PLAIN_HTTP
    return text


#: A request body, made afresh for each attempt: bytes, or an iterable of chunks (a file's).
Body = Callable[[], "bytes | Iterable[bytes]"]


class RegistryClient:
    """A synchronous, thread-safe client for OCI / Docker v2 registries.

    Args:
        insecure_registries: hosts (``host[:port]``) to talk to over plain HTTP; the registries.conf /
            daemon.json ones are added unless ``read_config`` is false.
        credentials_for: looks up the credentials of a host (default: the credential files).
        retries: attempts after the first one for retryable failures.
        backoff: first back-off delay in seconds (doubles, capped at 10 s).
        timeout: connect timeout in seconds.
        stall_timeout: seconds after which a transfer receiving (almost) nothing is stalled (see
            the module docstring); default :func:`stall_timeout_from_env`.
        max_connections: size of the connection pool.
        ssl_context: the TLS settings (e.g. trusting a private CA); default the system's CA store.
    """

    def __init__(self, *, insecure_registries: Iterable[str] = (),
                 credentials_for: Callable[[str], Credentials | None] = find_credentials,
                 retries: int = 5, backoff: float = 0.5, timeout: float = 30.0, max_connections: int = 16,
                 read_config: bool = True, stall_timeout: float | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._insecure = set(insecure_registries) | (insecure_from_config() if read_config else set())
        self.stall_timeout = stall_timeout if stall_timeout is not None else stall_timeout_from_env()
        self._client = httpx.Client(
            follow_redirects=False, trust_env=False, verify=ssl_context if ssl_context is not None else True,
            timeout=httpx.Timeout(timeout, read=self.stall_timeout, write=self.stall_timeout),
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))
        self.retries = retries
        self.backoff = backoff
        self.auth = Authorizer(self._token_transport, credentials_for)
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "retries": 0, "redirects": 0, "resumes": 0, "auth_retries": 0,
                        "blob_bytes": 0}

    # -- plumbing -----------------------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> RegistryStatistics:
        with self._lock:
            return RegistryStatistics(**self._counts)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def base_url(self, host: str) -> str:
        """``http(s)://host`` for a registry host (Docker Hub's is ``registry-1.docker.io``)."""
        if host == "docker.io":
            host = "registry-1.docker.io"
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        secure = bare not in _LOCAL_HOSTS and host not in self._insecure and bare not in self._insecure
        return f"{'https' if secure else 'http'}://{host}"

    def _sleep_for(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            if after.isdigit():
                return min(float(after), 30.0)
        return min(float(self.backoff) * 2.0 ** attempt, 10.0)

    def _token_transport(self, method: str, url: str, headers: Mapping[str, str],
                         form: Mapping[str, str] | None) -> tuple[int, bytes]:
        self._count("requests")
        try:
            resp = self._client.request(method, url, headers=dict(headers), data=dict(form) if form else None,
                                        follow_redirects=True)
        except httpx.HTTPError as err:
            raise RegistryError(f'{method} "{url}": {_transport_cause(err)}') from err
        return resp.status_code, resp.content[: 1 << 20]

    def _send_once(self, method: str, url: str, host: str, headers: Mapping[str, str],
                   authorization: str | None, body: Body | None = None) -> httpx.Response:
        """One request, following redirects by hand; ``Authorization`` only to the registry's origin
        (scheme, host and port: never to another host, nor in clear after an https -> http hop)."""
        registry = _origin(self.base_url(host))
        for _hop in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization and _origin(url) == registry:
                sent["Authorization"] = authorization
            self._count("requests")
            content = body() if body is not None else None
            resp = self._client.send(self._client.build_request(method, url, headers=sent, content=content),
                                     stream=True)
            log.debug("%s %s%s: %d %s", method, url, f" ({sent['Range']})" if "Range" in sent else "",
                      resp.status_code, resp.reason_phrase)
            location = resp.headers.get("location")
            if resp.status_code not in _REDIRECTS or not location:
                return resp
            resp.close()
            self._count("redirects")
            url = urljoin(url, location)
            if not url.startswith(("http://", "https://")):
                raise RegistryError(f"redirect to unsupported URL {url!r}")
            if resp.status_code == 303 and method != "HEAD":
                method = "GET"
        raise RegistryError(f'{method} "{url}": stopped after {_MAX_REDIRECTS} redirects')

    def request(self, method: str, host: str, path: str, *, scopes: Iterable[str] = (),
                headers: Mapping[str, str] | None = None, retry_connect: bool = False,
                body: Body | None = None) -> httpx.Response:
        """Send a request to ``host``'s ``path`` with auth, retries and redirects.

        ``body`` makes the request's content afresh for every attempt and redirect hop (an upload
        is sent again from its start).

        Returns:
            The final response, streaming (the caller reads or closes it); any status.
        Raises:
            RegistryError: the registry could not be reached, or the retries ran out.
        """
        scopes = tuple(scopes)
        url = self.base_url(host) + path
        attempt = 0
        auth_retried = False
        while True:
            authorization = self.auth.header(host, scopes)
            try:
                resp = self._send_once(method, url, host, headers or {}, authorization, body)
            except httpx.TransportError as err:
                refused = isinstance(err, httpx.ConnectError)
                if attempt >= self.retries or (refused and not retry_connect):
                    cause = _transport_cause(err)
                    if cause == _PLAIN_HTTP:
                        cause += f" (if {host} serves plain HTTP, pass --insecure-registry {host})"
                    raise RegistryError(f'{method} "{url}": {cause}') from err
                log.debug("%s %s: %s; retrying", method, url, err)
                time.sleep(self._sleep_for(attempt))
                attempt += 1
                self._count("retries")
                continue
            status = resp.status_code
            if status == 401 and not auth_retried:
                challenge = resp.headers.get("www-authenticate", "")
                auth_retried = True
                # Retry if the challenge is news, or if another thread learnt it while this request
                # was on its way unauthenticated (parallel blob requests): then the credentials
                # to send differ from the ones sent.
                if challenge and (self.auth.challenge(host, challenge, scopes)
                                  or self.auth.header(host, scopes) != authorization):
                    resp.close()
                    self._count("auth_retries")
                    continue
                return resp
            if (status in (408, 429) or status >= 500) and attempt < self.retries:
                delay = self._sleep_for(attempt, resp)
                resp.close()
                log.debug("%s %s: HTTP %d; retrying in %.1fs", method, url, status, delay)
                time.sleep(delay)
                attempt += 1
                self._count("retries")
                continue
            return resp

    def _fail(self, resp: httpx.Response, what: str, scope_repo: str) -> RegistryError:
        """Map an unexpected answer to docker's words."""
        try:
            body = b"" if resp.request.method == "HEAD" else resp.read()[:MAX_ERROR_BYTES]
        except httpx.HTTPError:
            body = b""
        finally:
            resp.close()
        code, message = _error_detail(body)
        if code:
            detail = f"{code.lower()}: {message}" if message.strip() else code.lower()
        else:
            detail = f"HTTP {resp.status_code} {resp.reason_phrase}"
        status = resp.status_code
        if status in (401, 403):
            host = urlsplit(str(resp.request.url)).netloc
            if self.auth.credentials(host) is None:
                return RegistryError(f"pull access denied for {scope_repo}, repository does not exist or may "
                                     f"require 'layerfs login': {detail or 'denied'}")
            return RegistryError(f"unauthorized: {what}: {detail}")
        if status == 404:
            if not code:
                detail = "manifest unknown" if what.startswith("manifest") else "blob unknown"
            return RegistryError(f"{what} not found: {detail}")
        if status == 429:
            return RegistryError(f"toomanyrequests: {what}: {detail}")
        return RegistryError(f"{what}: {detail}")

    # -- API ----------------------------------------------------------------------------------------

    def ping(self, host: str) -> None:
        """``GET /v2/`` with the stored credentials, as ``docker login`` checks them.

        Raises:
            RegistryError: the registry cannot be reached or refuses the credentials.
        """
        resp = self.request("GET", host, "/v2/")
        if resp.status_code != 200:
            resp.close()
            raise RegistryError(f"login attempt to {self.base_url(host)}/v2/ failed with status: "
                                f"{resp.status_code} {resp.reason_phrase}")
        resp.close()

    @staticmethod
    def _scope(ref: Reference) -> str:
        return f"repository:{ref.path}:pull"

    def resolve(self, ref: Reference) -> Descriptor:
        """HEAD the manifest a tag or digest names: its media type, digest and size.

        Falls back to GET when HEAD is refused (405) or lacks ``Docker-Content-Digest``.
        """
        what = ref.digest or ref.tag or "latest"
        path = f"/v2/{ref.path}/manifests/{what}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        resp = self.request("HEAD", ref.domain, path, scopes=[self._scope(ref)], headers=headers)
        if resp.status_code == 200:
            resp.close()
            digest = resp.headers.get("docker-content-digest", "")
            media_type = resp.headers.get("content-type", "").split(";")[0].strip()
            length = resp.headers.get("content-length", "")
            if ref.digest:
                digest = ref.digest
            if digest and length.isdigit() and media_type:
                check_digest(digest)
                _check_media_type(media_type, f"manifest {what}")
                return Descriptor(media_type, digest, int(length))
        elif resp.status_code not in (405,):
            raise self._fail(resp, f"manifest for {ref.familiar()}", ref.familiar_repository)
        resp.close()
        data, media_type = self._get_manifest(ref, what, None)
        return Descriptor(media_type, ref.digest or of_bytes(data), len(data))

    def fetch_manifest(self, ref: Reference, digest: str) -> tuple[bytes, str]:
        """GET a manifest or index by digest, verified.  Returns (exact bytes, media type)."""
        return self._get_manifest(ref, check_digest(digest), digest)

    def get_manifest(self, ref: Reference) -> tuple[bytes, str]:
        """GET the manifest or index ``ref`` names (its digest, else its tag, else ``latest``) as
        the registry serves it; by digest it is verified.  Returns (exact bytes, media type)."""
        if ref.digest:
            return self.fetch_manifest(ref, ref.digest)
        return self._get_manifest(ref, ref.tag or "latest", None)

    def list_tags(self, ref: Reference, *, page_size: int | None = None) -> list[str]:
        """The tags of ``ref``'s repository, in the registry's order: ``GET /v2/<name>/tags/list``,
        following the ``Link: <URL>; rel="next"`` pages (distribution-spec "Listing Tags").

        Args:
            page_size: ask for pages of this many tags (``?n=``); default the registry's choice.
        Raises:
            RegistryError: the registry refused, or a page is not a tag list.
        """
        what = "repository"
        path = f"/v2/{ref.path}/tags/list" + (f"?{urlencode({'n': page_size})}" if page_size else "")
        tags: list[str] = []
        seen: set[str] = set()
        while True:
            seen.add(path)
            resp = self.request("GET", ref.domain, path, scopes=[self._scope(ref)])
            if resp.status_code != 200:
                raise self._fail(resp, what, ref.familiar_repository)
            link = resp.headers.get("link", "")
            data = self._read_capped(resp, MAX_MANIFEST_BYTES, what)
            try:
                page = json.loads(data)
            except ValueError:
                page = None
            found = page.get("tags") if isinstance(page, dict) else []
            if not isinstance(page, dict) or not (found is None or isinstance(found, list)) or \
                    not all(isinstance(t, str) for t in found or []):
                raise RegistryError(f"{what}: the registry sent no tag list")
            tags += found or []
            m = _NEXT_LINK_RE.search(link)
            if not m:
                return tags
            path = self._upload_path(ref, m.group(1), "the next page of tags")  # its own origin only
            if path in seen:
                raise RegistryError(f"{what}: the registry's next page is one it sent already")

    def _get_manifest(self, ref: Reference, what: str, digest: str | None) -> tuple[bytes, str]:
        path = f"/v2/{ref.path}/manifests/{what}"
        resp = self.request("GET", ref.domain, path, scopes=[self._scope(ref)],
                            headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if resp.status_code != 200:
            # By digest (an index's child): name that manifest, not the reference that led to it.
            name = f"manifest {digest}" if digest is not None else f"manifest for {ref.familiar()}"
            raise self._fail(resp, name, ref.familiar_repository)
        data = self._read_capped(resp, MAX_MANIFEST_BYTES, f"manifest {what}")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        media_type = _check_media_type(media_type, f"manifest {what}", data)
        if digest is not None:
            actual = of_bytes(data, digest.partition(":")[0])
            if actual != digest:
                raise DigestMismatch(f"manifest {what}", digest, actual)
        return data, media_type

    def _read_capped(self, resp: httpx.Response, limit: int, what: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        pace = _Pace(self.stall_timeout)
        try:
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise BadImage(f"{what}: larger than {limit} bytes")
                chunks.append(chunk)
                pace.got(len(chunk))
        except httpx.ReadTimeout as err:
            raise RegistryError(f"{what}: stalled: nothing received in {self.stall_timeout:g} s") from err
        except Stalled as err:
            raise RegistryError(f"{what}: {err}") from None
        except httpx.HTTPError as err:
            raise RegistryError(f"{what}: {_transport_cause(err)}") from err
        finally:
            resp.close()
        return b"".join(chunks)

    def fetch_blob(self, ref: Reference, digest: str, size: int, *, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """GET a small blob (a config) into memory, verified against digest and size."""
        if size > limit:
            raise BadImage(f"blob {digest}: {size} bytes is more than the {limit} allowed")
        reader = self.open_blob(ref, digest, size)
        try:
            data = reader.read()
        finally:
            reader.close()
        actual = of_bytes(data, digest.partition(":")[0])
        if len(data) != size or actual != digest:
            raise DigestMismatch(f"blob {digest}", digest, actual)
        return data

    def open_blob(self, ref: Reference, digest: str, size: int | None, *,
                  on_bytes: Callable[[int], None] | None = None,
                  cancelled: threading.Event | None = None) -> BlobReader:
        """A resumable file object over blob ``digest``'s bytes as transferred (not verified)."""
        return BlobReader(self, ref, check_digest(digest), size, on_bytes=on_bytes, cancelled=cancelled)

    # -- push (distribution-spec "Pushing blobs", "Pushing Manifests") -------------------------------

    @staticmethod
    def _push_scope(ref: Reference) -> str:
        return f"repository:{ref.path}:pull,push"

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        """``HEAD /v2/<name>/blobs/<digest>``: whether the repository has the blob (no upload needed)."""
        resp = self.request("HEAD", ref.domain, f"/v2/{ref.path}/blobs/{check_digest(digest)}",
                            scopes=[self._push_scope(ref)])
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"blob {digest}", ref.familiar_repository)

    def mount_blob(self, ref: Reference, digest: str, from_path: str) -> bool:
        """Cross-repository blob mount: ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>``.

        Returns:
            True when the registry mounted it (201); False when it opened an upload instead
            (202: the blob is not mountable from there), which is then cancelled.
        """
        query = urlencode({"mount": check_digest(digest), "from": from_path})
        resp = self.request("POST", ref.domain, f"/v2/{ref.path}/blobs/uploads/?{query}",
                            scopes=[self._push_scope(ref), f"repository:{from_path}:pull"],
                            headers={"Content-Length": "0"})
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:
            location = resp.headers.get("location")
            if location:
                with contextlib.suppress(RegistryError):
                    self.request("DELETE", ref.domain, self._upload_path(ref, location),
                                 scopes=[self._push_scope(ref)]).close()
            return False
        raise self._fail(resp, f"mount of blob {digest} from {from_path}", ref.familiar_repository)

    def _upload_path(self, ref: Reference, location: str, what: str = "an upload") -> str:
        """The path (and query) of an upload (or other) URL the registry gave, which must be on its
        own origin."""
        parts = urlsplit(urljoin(self.base_url(ref.domain) + "/", location))
        if _origin(parts.geturl()) != _origin(self.base_url(ref.domain)):
            raise RegistryError(f"the registry sent {what} to another host ({parts.netloc}): not supported")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def upload_blob(self, ref: Reference, digest: str, size: int, opener: Callable[[], BinaryIO], *,
                    chunk_size: int = 0, on_bytes: Callable[[int], None] | None = None) -> None:
        """Upload a blob: ``POST`` an upload, then one ``PUT ?digest=`` with the whole body
        (monolithic), or, with ``chunk_size``, ``PATCH`` chunks then the closing ``PUT``.

        Args:
            opener: opens the blob's bytes from the start (called again for a retried attempt).
            chunk_size: 0 for a monolithic upload, else the size of each PATCH.
            on_bytes: called with the number of bytes sent, as they go.
        Raises:
            RegistryError: the registry refused or the retries ran out (docker's words).
        """
        check_digest(digest)
        scopes = [self._push_scope(ref)]
        resp = self.request("POST", ref.domain, f"/v2/{ref.path}/blobs/uploads/", scopes=scopes,
                            headers={"Content-Length": "0"})
        resp.close()
        if resp.status_code != 202 or not resp.headers.get("location"):
            raise self._fail(resp, f"upload of blob {digest}", ref.familiar_repository)
        location = self._upload_path(ref, resp.headers["location"])

        def chunks(start: int, length: int) -> Iterator[bytes]:
            with opener() as f:
                f.seek(start)
                left = length
                while left > 0:
                    data = f.read(min(1 << 20, left))
                    if not data:
                        raise RegistryError(f"blob {digest}: its file ended at {length - left} of {length} bytes")
                    left -= len(data)
                    if on_bytes is not None:
                        on_bytes(len(data))
                    yield data

        offset = 0
        if chunk_size > 0:
            while offset < size:
                n = min(chunk_size, size - offset)
                resp = self.request("PATCH", ref.domain, location, scopes=scopes,
                                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(n),
                                             "Content-Range": f"{offset}-{offset + n - 1}"},
                                    body=functools.partial(chunks, offset, n))
                resp.close()
                if resp.status_code != 202 or not resp.headers.get("location"):
                    raise self._fail(resp, f"upload of blob {digest}", ref.familiar_repository)
                location = self._upload_path(ref, resp.headers["location"])
                offset += n
        sep = "&" if "?" in location else "?"
        final = f"{location}{sep}{urlencode({'digest': digest})}"
        rest = size - offset
        resp = self.request("PUT", ref.domain, final, scopes=scopes,
                            headers={"Content-Type": "application/octet-stream", "Content-Length": str(rest)},
                            body=(lambda: chunks(offset, rest)) if rest else (lambda: b""))
        resp.close()
        if resp.status_code != 201:
            raise self._fail(resp, f"upload of blob {digest}", ref.familiar_repository)
        self._count("blob_bytes", size)

    def put_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """``PUT /v2/<name>/manifests/<tag or digest>``; returns the digest the registry gives
        (checked against the bytes sent)."""
        what = ref.digest or ref.tag or "latest"
        resp = self.request("PUT", ref.domain, f"/v2/{ref.path}/manifests/{what}", scopes=[self._push_scope(ref)],
                            headers={"Content-Type": media_type, "Content-Length": str(len(data))},
                            body=lambda: data)
        resp.close()
        if resp.status_code != 201:
            raise self._fail(resp, f"manifest for {ref.familiar()}", ref.familiar_repository)
        digest = of_bytes(data)
        given = resp.headers.get("docker-content-digest")
        if given and given != digest:
            raise DigestMismatch(f"manifest for {ref.familiar()}", digest, given)
        return digest


#: Content-Types some registries and proxies send for a manifest; the body's ``mediaType`` decides.
_GENERIC_TYPES = ("", "application/json", "application/octet-stream", "text/plain")


def _check_media_type(media_type: str, what: str, data: bytes | None = None) -> str:
    """Check a manifest's ``Content-Type`` (and, given the body, its ``mediaType``, by
    :func:`layerfs._oci.manifest.media_type`); return the type."""
    if data is None:
        if media_type in SCHEMA1_TYPES:
            raise BadImage(f"{what}: Docker Image manifest schema 1 is not supported; push it again with a "
                           f"current tool")
        if media_type not in MANIFEST_TYPES:
            raise BadImage(f"{what}: unsupported media type {media_type!r}")
        return media_type
    doc = json_object(data, what)
    if media_type in _GENERIC_TYPES and not doc.get("mediaType"):
        raise BadImage(f"{what}: unsupported media type {media_type!r}")
    return manifest_media_type(doc, "" if media_type in _GENERIC_TYPES else media_type, what)


_CONTENT_RANGE_RE = re.compile(r"\Abytes (\d+)-(\d+|\*)/(\d+|\*)\Z")
#: The next page of a tag list (RFC 8288 ``Link``, as distribution-spec "Listing Tags" sends it).
_NEXT_LINK_RE = re.compile(r'<([^>]*)>\s*;[^,]*\brel="?next"?', re.I)


class BlobReader:
    """A blob's body as a file object (``read(n)``), resuming with ``Range`` after a dropped connection.

    Counts the bytes it hands out (``on_bytes``); stops at ``size`` bytes.  A transport error, or a body
    that ends early, re-sends the GET with ``Range: bytes=N-``: a 206 must start at N, a 200 is read and
    N bytes skipped.  After ``client.retries`` attempts without progress it raises
    :class:`RegistryError`; a stalled body (see the module docstring) is resumed
    :data:`STALL_RETRIES` times.  Setting ``cancelled`` makes the next read raise.
    """

    def __init__(self, client: RegistryClient, ref: Reference, digest: str, size: int | None, *,
                 on_bytes: Callable[[int], None] | None = None,
                 cancelled: threading.Event | None = None) -> None:
        self._client = client
        self._ref = ref
        self.digest = digest
        self.size = size
        self.offset = 0
        self._on_bytes = on_bytes
        self._cancelled = cancelled
        self._resp: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._pos = 0
        self._failures = 0
        self._stalls = 0
        self._pace = _Pace(client.stall_timeout)
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
            self._chunks = None

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        ref = self._ref
        path = f"/v2/{ref.path}/blobs/{self.digest}"
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        resp = self._client.request("GET", ref.domain, path, scopes=[RegistryClient._scope(ref)],
                                    headers=headers, retry_connect=True)
        skip = 0
        if resp.status_code == 206 and self.offset:
            m = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
            if not m or int(m.group(1)) != self.offset:
                resp.close()
                raise RegistryError(f"blob {self.digest}: resume at {self.offset} answered with "
                                    f"Content-Range {resp.headers.get('content-range')!r}")
        elif resp.status_code == 200:
            skip = self.offset
        else:
            raise self._client._fail(resp, f"blob {self.digest}", ref.familiar_repository)
        self._resp = resp
        self._chunks = resp.iter_raw()
        self._pace.restart()
        while skip:
            chunk = next(self._chunks, b"")
            if not chunk:
                raise httpx.ReadError("body ended while skipping to the resume offset")
            if len(chunk) > skip:
                self._buf, self._pos = chunk[skip:], 0
                skip = 0
            else:
                skip -= len(chunk)

    def _fill(self) -> bool:
        """Get the next chunk into the buffer; False at the end of the blob."""
        while True:
            if self._cancelled is not None and self._cancelled.is_set():
                self.close()
                raise RegistryError(f"blob {self.digest}: cancelled")
            if self.size is not None and self.offset >= self.size:
                self.close()
                return False
            try:
                if self._chunks is None:
                    self._open()
                    if self._pos < len(self._buf):
                        return True
                assert self._chunks is not None
                chunk = next(self._chunks, b"")
                if not chunk:
                    if self.size is None:
                        self.close()
                        return False
                    raise httpx.ReadError(f"body ended at {self.offset} of {self.size} bytes")
                self._pace.got(len(chunk))
                self._buf, self._pos = chunk, 0
                self._failures = 0
                return True
            except (Stalled, httpx.ReadTimeout) as err:
                self.close()
                why = str(err) if isinstance(err, Stalled) else \
                    f"stalled: nothing received in {self._client.stall_timeout:g} s"
                if self._stalls >= STALL_RETRIES:
                    raise RegistryError(f"blob {self.digest}: {why} (resumed {self._stalls} times)") from None
                self._stalls += 1
                self.resumes += 1
                self._client._count("resumes")
                log.debug("blob %s: %s at %d; resuming", self.digest, why, self.offset)
            except (httpx.TransportError, httpx.StreamError) as err:
                self.close()
                if self._failures >= self._client.retries:
                    raise RegistryError(f"blob {self.digest}: {_transport_cause(err)} "
                                        f"(after {self._failures} retries)") from err
                delay = self._client._sleep_for(self._failures)
                self._failures += 1
                self.resumes += 1
                self._client._count("resumes")
                log.debug("blob %s: %s at %d; resuming in %.1fs", self.digest, err, self.offset, delay)
                time.sleep(delay)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all the rest if ``n`` < 0); ``b""`` at the end."""
        if n is None or n < 0:
            parts: list[bytes] = []
            while True:
                part = self.read(1 << 20)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        if n == 0:
            return b""
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        end = min(len(self._buf), self._pos + n)
        if self.size is not None:
            end = min(end, self._pos + (self.size - self.offset))
        data = self._buf[self._pos:end]
        self._pos = end
        self.offset += len(data)
        self._client._count("blob_bytes", len(data))
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)
