"""Registry authentication: challenges, the bearer-token flow, Basic, and credential files.

- A registry that wants credentials answers 401 with ``WWW-Authenticate`` (the distribution
  project's ``docs/spec/auth/token.md``): ``Basic realm=…`` means Basic credentials on every request
  to that host; ``Bearer realm=…, service=…,scope=…`` means
  "fetch a token from realm for that scope".  :func:`parse_challenges` reads the header,
  :class:`Authorizer` acts on it and caches tokens per (host, scope set).
- Tokens are fetched like containerd's authorizer: with a secret, ``POST realm`` with an OAuth form
  (``grant_type=password`` or ``refresh_token``), falling back to ``GET realm?service=…&scope=…`` with
  Basic credentials on 400/401/404/405; without one, an anonymous ``GET``.
- Credentials are read, like docker and podman, from ``$REGISTRY_AUTH_FILE``, the docker config
  (``$DOCKER_CONFIG/config.json``, default ``~/.docker/config.json``) and the containers auth files
  (``${XDG_RUNTIME_DIR}/containers/auth.json``, ``~/.config/containers/auth.json``), first hit wins.
  ``login`` / ``logout`` write the docker config only, keeping every other key in it.
- Credential helpers, as docker runs them: a file whose ``credHelpers`` names a helper for the
  registry, or whose ``credsStore`` names one for all, keeps that registry's secrets in the
  program ``docker-credential-<helper>`` (docker-credential-helpers' protocol: ``get``,
  ``store``, ``erase``, the server URL or a JSON object on stdin, JSON on stdout, "credentials not
  found in native keychain" when it has none).  Its answer replaces the file's ``auths`` entry
  for that registry; ``login`` stores the secret with the helper and writes only an empty
  ``auths`` entry (docker's marker), ``logout`` erases it there too.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import urlencode

from .._errors import LayerfsError, RegistryError

#: docker's key for Docker Hub in ``auths``.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"

#: Largest token response read (docs/oci.rst "Size limits").
MAX_TOKEN_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str]


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(?:,|\Z)')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|\Z)")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (RFC 7235 §4.1).

    ``Bearer realm="https://a/token",service="reg",scope="repository:x:pull"`` gives one challenge
    with three parameters; several challenges may share the header, separated by commas.  Garbage
    yields what could be read before it.
    """
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        while pos < len(header) and header[pos] in " ,":
            pos += 1
        m = _SCHEME_RE.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            p = _PARAM_RE.match(header, pos)
            if not p:
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What to authenticate with: a user and password, or an identity (refresh) token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r})"


# -- credential files ------------------------------------------------------------------------------


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def auth_file_paths() -> list[Path]:
    """Every file credentials are read from, in the order they are tried."""
    paths: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    paths.append(docker_config_path())
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    paths.append(Path(config_home) / "containers" / "auth.json")
    return paths


def _normalize_key(key: str) -> str:
    """``https://host:5000/v2/`` -> ``host:5000``; docker's hub keys -> ``docker.io``."""
    host = re.sub(r"\A[a-z]+://", "", key.strip()).split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io", "docker.io") else host


def config_key(registry: str) -> str:
    """The key ``docker login`` writes for ``registry`` (Docker Hub has its legacy URL)."""
    host = _normalize_key(registry)
    return DOCKER_HUB_KEY if host == "docker.io" else host


def _read_json(path: Path) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise LayerfsError(f"read credentials from {path}: {err}") from err
    if not isinstance(data, dict):
        raise LayerfsError(f"read credentials from {path}: not a JSON object")
    return data


def _entry_credentials(entry: object, path: Path, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return Credentials(username=str(entry.get("username", "")), identity_token=entry["identitytoken"])
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as err:
            raise LayerfsError(f"read credentials from {path}: bad auth for {key}") from err
        if not sep:
            raise LayerfsError(f"read credentials from {path}: bad auth for {key}")
        return Credentials(user, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


#: What a helper prints when it holds nothing for the server (docker-credential-helpers'
#: ``credentials.errCredentialsNotFoundMessage``).
_NOT_FOUND = "credentials not found in native keychain"
#: The user name a helper stores an identity token under (docker's ``tokenUsername``).
_TOKEN_USER = "<token>"
#: How long a helper may take (one may ask a keyring daemon, or a user).
HELPER_TIMEOUT = 60.0


def credential_helper(config: Mapping[str, object], registry: str) -> str | None:
    """The helper a config names for ``registry``: its ``credHelpers`` entry, else ``credsStore``."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if _normalize_key(key) == _normalize_key(registry) and isinstance(name, str) and name:
                return name
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def run_helper(helper: str, action: str, data: str) -> str | None:
    """Run ``docker-credential-<helper> <action>`` with ``data`` on stdin; its stdout.

    Returns:
        What it printed, or None when ``get`` or ``erase`` found nothing for the server.
    Raises:
        LayerfsError: the program is missing, fails or takes too long (its own words).
    """
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, action], input=data.encode(), capture_output=True, timeout=HELPER_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise LayerfsError(f"credential helper {program}: not found in $PATH (the docker config's "
                           f"credsStore or credHelpers names it)") from None
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LayerfsError(f"credential helper {program} {action}: {err}") from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if out == _NOT_FOUND and action in ("get", "erase"):
            return None
        said = (out or proc.stderr.decode(errors="replace").strip()).splitlines()
        raise LayerfsError(f"credential helper {program} {action}: "
                           f"{said[0] if said else f'exit status {proc.returncode}'}")
    return out


def _helper_credentials(helper: str, registry: str) -> Credentials | None:
    out = run_helper(helper, "get", config_key(registry))
    if out is None:
        return None
    try:
        data = json.loads(out)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("Secret"), str):
        raise LayerfsError(f"credential helper docker-credential-{helper} get: not a JSON object with a Secret")
    user = str(data.get("Username") or "")
    if user == _TOKEN_USER:
        return Credentials(identity_token=data["Secret"])
    return Credentials(user, data["Secret"])


def find_credentials(registry: str, paths: Iterable[Path] | None = None) -> Credentials | None:
    """The credentials stored for ``registry`` (a host[:port]), or None.

    A file naming a credential helper for the registry answers with what the helper holds.

    Raises:
        LayerfsError: a credential file exists but cannot be read, or its helper fails.
    """
    wanted = _normalize_key(registry)
    for path in auth_file_paths() if paths is None else paths:
        config = _read_json(path)
        helper = credential_helper(config, registry)
        if helper is not None:
            creds = _helper_credentials(helper, registry)
            if creds is not None:
                return creds
            continue
        auths = config.get("auths")
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if _normalize_key(key) == wanted:
                creds = _entry_credentials(entry, path, key)
                if creds is not None:
                    return creds
    return None


def _write_json_atomically(path: Path, data: Mapping[str, object]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def store_credentials(registry: str, creds: Credentials, path: Path | None = None) -> str:
    """Save ``creds`` for ``registry`` as ``docker login`` does: with the credential helper the
    docker config names for it, else in the file (mode 0600, base64, not encrypted).

    Returns:
        Where they went: the file, or ``docker-credential-<helper>``.
    Raises:
        LayerfsError: the file cannot be read, or the helper failed (the file is then unchanged).
    """
    path = path or docker_config_path()
    data = _read_json(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    key = config_key(registry)
    helper = credential_helper(data, registry)
    if helper is not None:
        secret = {"ServerURL": key, "Username": _TOKEN_USER if creds.identity_token else creds.username,
                  "Secret": creds.identity_token or creds.password}
        run_helper(helper, "store", json.dumps(secret))
    for other in [k for k in auths if _normalize_key(k) == _normalize_key(registry)]:
        del auths[other]
    if helper is not None:
        auths[key] = {}  # docker's marker: the secret is with the helper
    elif creds.identity_token:
        auths[key] = {"auth": "", "identitytoken": creds.identity_token}
    else:
        auths[key] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    data["auths"] = auths
    _write_json_atomically(path, data)
    return f"docker-credential-{helper}" if helper is not None else str(path)


def remove_credentials(registry: str, path: Path | None = None) -> bool:
    """Remove ``registry``'s credentials from the docker config, and from its credential helper.

    Returns:
        False if neither held any.
    Raises:
        LayerfsError: the file cannot be read, or the helper failed.
    """
    path = path or docker_config_path()
    data = _read_json(path)
    helper = credential_helper(data, registry)
    erased = helper is not None and run_helper(helper, "erase", config_key(registry)) is not None
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return erased
    keys = [k for k in auths if _normalize_key(k) == _normalize_key(registry)]
    if not keys:
        return erased
    for key in keys:
        del auths[key]
    _write_json_atomically(path, data)
    return True


# -- the authorizer --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenResponse:
    """What a token server answered."""

    token: str
    expires_in: float
    refresh_token: str = ""


#: Fetches a token: (method, url, headers, form or None) -> (status, body bytes).
TokenTransport = Callable[[str, str, Mapping[str, str], Mapping[str, str] | None], tuple[int, bytes]]


@dataclasses.dataclass(frozen=True)
class AuthStatistics:
    """Counters of an :class:`Authorizer`."""

    tokens_fetched: int
    token_cache_hits: int
    challenges: int


class Authorizer:
    """Turns 401 challenges into ``Authorization`` headers, per host; thread-safe.

    Args:
        transport: how token requests are sent (the registry client's HTTP client).
        credentials_for: looks up the credentials of a host (None = anonymous).
    """

    def __init__(self, transport: TokenTransport,
                 credentials_for: Callable[[str], Credentials | None] = find_credentials) -> None:
        self._transport = transport
        self._credentials_for = credentials_for
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, frozenset[str]], tuple[str, float]] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._fetched = self._hits = self._challenged = 0

    def statistics(self) -> AuthStatistics:
        return AuthStatistics(self._fetched, self._hits, self._challenged)

    def credentials(self, host: str) -> Credentials | None:
        with self._lock:
            if host not in self._creds:
                self._creds[host] = self._credentials_for(host)
            return self._creds[host]

    def header(self, host: str, scopes: Iterable[str]) -> str | None:
        """The ``Authorization`` value to send to ``host`` for ``scopes``, or None (anonymous).

        May block: fetches a token when the host asked for bearer tokens and none is cached.
        """
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(host)
            return creds.basic() if creds and not creds.identity_token else None
        return "Bearer " + self._token(host, challenge, frozenset(scopes))

    def challenge(self, host: str, www_authenticate: str, scopes: Iterable[str]) -> bool:
        """Record a 401's challenge; True if retrying with new credentials may succeed.

        Raises:
            RegistryError: the token server refused or failed.
        """
        self._challenged += 1
        parsed = {c.scheme: c for c in parse_challenges(www_authenticate)}
        chosen = parsed.get("bearer") or parsed.get("basic")
        if chosen is None:
            return False
        scope_set = frozenset(scopes)
        if chosen.scheme == "bearer" and chosen.params.get("scope"):
            scope_set |= frozenset(chosen.params["scope"].split(" "))
        with self._lock:
            previous = self._challenges.get(host)
            self._challenges[host] = chosen
            stale = [k for k in self._tokens if k[0] == host and k[1] <= scope_set]
            had_token = bool(stale)
            for k in stale:
                del self._tokens[k]
        if chosen.scheme == "basic":
            # Retry only if we have credentials we did not send yet.
            return self.credentials(host) is not None and (previous is None or previous.scheme != "basic")
        error = chosen.params.get("error", "")
        if error in ("insufficient_scope", "invalid_token") and had_token:
            return False  # containerd: the fresh token was not good enough; give up
        return previous is None or previous != chosen or not had_token

    def _token(self, host: str, challenge: Challenge, scopes: frozenset[str]) -> str:
        if challenge.params.get("scope"):
            scopes = scopes | frozenset(challenge.params["scope"].split(" "))
        key = (host, scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                self._hits += 1
                return cached[0]
        realm = challenge.params.get("realm")
        if not realm or not re.match(r"\Ahttps?://", realm):
            raise RegistryError(f"{host}: bad bearer challenge: realm {realm!r}")
        creds = self.credentials(host)
        answer = self._fetch(realm, challenge.params.get("service", ""), sorted(scopes), creds)
        self._fetched += 1
        lifetime = max(answer.expires_in, 10.0)
        with self._lock:
            self._tokens[key] = (answer.token, time.monotonic() + lifetime - 5.0)
        return answer.token

    def _fetch(self, realm: str, service: str, scopes: list[str], creds: Credentials | None) -> TokenResponse:
        if creds is not None:
            secret = creds.identity_token or creds.password
            form = {"grant_type": "refresh_token" if creds.identity_token else "password",
                    "service": service, "scope": " ".join(scopes), "client_id": "layerfs"}
            if creds.identity_token:
                form["refresh_token"] = secret
            else:
                form.update(username=creds.username, password=secret)
            status, body = self._transport("POST", realm, {}, form)
            if status == 200:
                return _parse_token(body, realm)
            if status not in (400, 401, 404, 405) or creds.identity_token:
                raise _token_error(status, body, realm)
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        if creds is not None and creds.username:
            query.append(("account", creds.username))
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"Authorization": creds.basic()} if creds is not None and not creds.identity_token else {}
        status, body = self._transport("GET", url, headers, None)
        if status != 200:
            raise _token_error(status, body, realm)
        return _parse_token(body, realm)


def _parse_token(body: bytes, realm: str) -> TokenResponse:
    try:
        data = json.loads(body[:MAX_TOKEN_BYTES])
    except ValueError as err:
        raise RegistryError(f"token from {realm}: not JSON") from err
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError(f"token from {realm}: no token in the answer")
    expires = data.get("expires_in", 60)
    expires = float(expires) if isinstance(expires, (int, float)) and expires > 0 else 60.0
    refresh = data.get("refresh_token", "")
    return TokenResponse(token, expires, refresh if isinstance(refresh, str) else "")


def _token_error(status: int, body: bytes, realm: str) -> RegistryError:
    detail = ""
    try:
        data = json.loads(body[:MAX_TOKEN_BYTES])
        if isinstance(data, dict):
            errors = data.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                detail = str(errors[0].get("message", ""))
            detail = detail or str(data.get("details") or data.get("error") or "")
    except ValueError:
        pass
    if status == 401:
        return RegistryError(f"unauthorized: incorrect username or password ({realm}: {detail or 'HTTP 401'})")
    return RegistryError(f"token request to {realm} failed: HTTP {status}{': ' + detail if detail else ''}")
