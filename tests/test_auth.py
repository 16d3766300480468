"""Registry auth: WWW-Authenticate parsing, credential files, the token flow against a real token server."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _registry_server import TokenServer

from layerfs import LayerfsError, RegistryError
from layerfs._registry.auth import (
    Authorizer,
    Credentials,
    auth_file_paths,
    find_credentials,
    parse_challenges,
    remove_credentials,
    store_credentials,
)

CHALLENGES = {
    "bearer with scope": (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"',
        [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                     "scope": "repository:library/alpine:pull"})]),
    "basic": ('Basic realm="layerfs-test"', [("basic", {"realm": "layerfs-test"})]),
    "scheme case and spaces": ('BEARER  realm = "r" , service="s"', [("bearer", {"realm": "r", "service": "s"})]),
    "error param": ('Bearer realm="r",service="s",scope="repository:x:pull",error="insufficient_scope"',
                    [("bearer", {"realm": "r", "service": "s", "scope": "repository:x:pull",
                                 "error": "insufficient_scope"})]),
    "two challenges": ('Basic realm="a", Bearer realm="b",service="c"',
                       [("basic", {"realm": "a"}), ("bearer", {"realm": "b", "service": "c"})]),
    "token68-ish unquoted value": ("Bearer realm=r,service=s", [("bearer", {"realm": "r", "service": "s"})]),
    "escaped quote": (r'Basic realm="a\"b"', [("basic", {"realm": 'a"b'})]),
    "scope with host:port and two actions": (
        'Bearer realm="r",scope="repository:localhost:5000/x:pull,push"',
        [("bearer", {"realm": "r", "scope": "repository:localhost:5000/x:pull,push"})]),
    "empty": ("", []),
}


@pytest.mark.parametrize("header, want", CHALLENGES.values(), ids=CHALLENGES.keys())
def test_parse_challenges(header: str, want: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, dict(c.params)) for c in parse_challenges(header)] == want


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private HOME with no credential files and no env overrides."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path: Path, auths: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths}))


FILES = {
    # name: (where, key written, registry asked, expected user or None)
    "docker config by host:port": ("docker", "localhost:5000", "localhost:5000", "docker-user"),
    "docker config with a URL key": ("docker", "https://localhost:5000/v2/", "localhost:5000", "docker-user"),
    "docker hub legacy key": ("docker", "https://index.docker.io/v1/", "docker.io", "docker-user"),
    "REGISTRY_AUTH_FILE": ("authfile", "localhost:5000", "localhost:5000", "authfile-user"),
    "containers auth.json in XDG_RUNTIME_DIR": ("runtime", "localhost:5000", "localhost:5000", "runtime-user"),
    "containers auth.json in ~/.config": ("config", "localhost:5000", "localhost:5000", "config-user"),
    "other registry not matched": ("docker", "localhost:5001", "localhost:5000", None),
}


@pytest.mark.parametrize("where, key, registry, user", FILES.values(), ids=FILES.keys())
def test_find_credentials(home: Path, monkeypatch: pytest.MonkeyPatch, where: str, key: str, registry: str,
                          user: str | None) -> None:
    paths = {"docker": home / ".docker/config.json", "authfile": home / "auth-file.json",
             "runtime": home / "run/containers/auth.json", "config": home / ".config/containers/auth.json"}
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(paths["authfile"]))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    owner = {"docker": "docker-user", "authfile": "authfile-user", "runtime": "runtime-user",
             "config": "config-user"}[where]
    _write(paths[where], {key: {"auth": _auth(owner, "secret")}})
    creds = find_credentials(registry)
    assert (creds.username if creds else None) == user
    if creds:
        assert creds.password == "secret"


def test_auth_file_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$REGISTRY_AUTH_FILE first, then the docker config, then the containers files (first hit wins)."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "a.json"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    assert auth_file_paths() == [home / "a.json", home / ".docker/config.json", home / "run/containers/auth.json",
                                 home / ".config/containers/auth.json"]
    _write(home / ".docker/config.json", {"r:1": {"auth": _auth("docker", "p")}})
    _write(home / "run/containers/auth.json", {"r:1": {"auth": _auth("runtime", "p")}})
    assert find_credentials("r:1") == Credentials("docker", "p")
    _write(home / "a.json", {"r:1": {"auth": _auth("explicit", "p")}})
    assert find_credentials("r:1") == Credentials("explicit", "p")


def test_identity_token_read(home: Path) -> None:
    _write(home / ".docker/config.json", {"r:1": {"auth": "", "identitytoken": "refresh-me"}})
    assert find_credentials("r:1") == Credentials("", "", "refresh-me")


def test_bad_auth_entry_is_an_error(home: Path) -> None:
    _write(home / ".docker/config.json", {"r:1": {"auth": "not base64!"}})
    with pytest.raises(LayerfsError, match="bad auth for r:1"):
        find_credentials("r:1")


def test_store_and_remove_keep_other_keys(home: Path) -> None:
    path = home / ".docker/config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {"other:1": {"auth": _auth("o", "p")}}, "psFormat": "table {{.ID}}"}))
    assert store_credentials("localhost:5000", Credentials("alice", "s3cret")) == str(path)
    data = json.loads(path.read_text())
    assert data["psFormat"] == "table {{.ID}}"
    assert data["auths"]["localhost:5000"] == {"auth": _auth("alice", "s3cret")}
    assert data["auths"]["other:1"] == {"auth": _auth("o", "p")}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert find_credentials("localhost:5000") == Credentials("alice", "s3cret")
    assert remove_credentials("localhost:5000") is True
    assert remove_credentials("localhost:5000") is False
    assert find_credentials("localhost:5000") is None
    assert json.loads(path.read_text())["auths"] == {"other:1": {"auth": _auth("o", "p")}}


def test_docker_hub_written_under_its_legacy_key(home: Path) -> None:
    store_credentials("docker.io", Credentials("u", "p"))
    assert list(json.loads((home / ".docker/config.json").read_text())["auths"]) == ["https://index.docker.io/v1/"]


def test_credentials_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2"))


# -- the authorizer against a real token server ----------------------------------------------------


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer.start(tmp_path_factory.mktemp("tokens"), users={"alice": "wonderland"})
    try:
        yield server
    finally:
        server.stop()


def _transport(client: httpx.Client):  # type: ignore[no-untyped-def]
    def send(method: str, url: str, headers: object, form: object) -> tuple[int, bytes]:
        resp = client.request(method, url, headers=dict(headers), data=dict(form) if form else None)  # type: ignore[call-overload]
        return resp.status_code, resp.content
    return send


def _claims(header: str) -> dict[str, object]:
    payload = header.removeprefix("Bearer ").split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


TOKEN_CASES = {
    # name: (credentials, repository, expected actions, expected token-server methods)
    "anonymous, public repo": (None, "public/app", ["pull"], ["GET"]),
    "anonymous, private repo": (None, "private/app", [], ["GET"]),
    "password: OAuth POST": (Credentials("alice", "wonderland"), "private/app", ["pull"], ["POST"]),
    "identity token: refresh_token POST": ("refresh", "private/app", ["pull"], ["POST"]),
}


@pytest.mark.parametrize("creds, repo, actions, methods", TOKEN_CASES.values(), ids=TOKEN_CASES.keys())
def test_token_flow(tokens: TokenServer, creds: object, repo: str, actions: list[str], methods: list[str]) -> None:
    if creds == "refresh":
        refresh = tokens.issue("alice", [])["refresh_token"]
        creds = Credentials(identity_token=str(refresh))
    with httpx.Client() as client:
        auth = Authorizer(_transport(client), lambda host: creds)  # type: ignore[arg-type,return-value]
        scope = f"repository:{repo}:pull"
        challenge = f'Bearer realm="{tokens.realm}",service="{tokens.service}",scope="{scope}"'
        before = len(tokens.requests)
        assert auth.challenge("reg:1", challenge, [scope]) is True
        header = auth.header("reg:1", [scope])
        assert header is not None and header.startswith("Bearer ")
        claims = _claims(header)
        assert claims["access"] == [{"type": "repository", "name": repo, "actions": actions}]
        assert claims["aud"] == tokens.service
        # Cached per scope: asking again fetches nothing.
        assert auth.header("reg:1", [scope]) == header
        assert [m for m, _, _ in tokens.requests[before:]] == methods
        assert auth.statistics().tokens_fetched == 1
        assert auth.statistics().token_cache_hits == 1


def test_wrong_password_is_refused(tokens: TokenServer) -> None:
    with httpx.Client() as client:
        auth = Authorizer(_transport(client), lambda host: Credentials("alice", "wrong"))
        scope = "repository:private/app:pull"
        auth.challenge("reg:1", f'Bearer realm="{tokens.realm}",service="{tokens.service}"', [scope])
        with pytest.raises(RegistryError, match="unauthorized: incorrect username or password"):
            auth.header("reg:1", [scope])


def test_insufficient_scope_after_a_token_stops_retrying(tokens: TokenServer) -> None:
    with httpx.Client() as client:
        auth = Authorizer(_transport(client), lambda host: None)
        scope = "repository:private/app:pull"
        first = f'Bearer realm="{tokens.realm}",service="{tokens.service}",scope="{scope}"'
        assert auth.challenge("reg:1", first, [scope]) is True
        auth.header("reg:1", [scope])
        assert auth.challenge("reg:1", first + ',error="insufficient_scope"', [scope]) is False


def test_basic_challenge_uses_credentials() -> None:
    auth = Authorizer(lambda *a: (500, b""), lambda host: Credentials("bob", "pw"))
    assert auth.header("reg:1", []) is None  # nothing sent before a challenge
    assert auth.challenge("reg:1", 'Basic realm="x"', []) is True
    assert auth.header("reg:1", []) == "Basic " + _auth("bob", "pw")
    # A second Basic challenge means the credentials were refused: do not loop.
    assert auth.challenge("reg:1", 'Basic realm="x"', []) is False


def test_basic_challenge_without_credentials_gives_up() -> None:
    auth = Authorizer(lambda *a: (500, b""), lambda host: None)
    assert auth.challenge("reg:1", 'Basic realm="x"', []) is False


# -- Authorization follows a redirect only to the very same origin (issue 8 item 8) ------------------


class _TwoFacedServer:
    """One port on 127.0.0.2 that speaks TLS (a self-signed certificate) to clients that start a
    handshake, and plain HTTP to the others.  Over TLS it asks for Basic credentials, then
    redirects ``/v2/`` to the same host and port over plain ``http``; it records the
    ``Authorization`` header of every request as (scheme, header)."""

    host = "127.0.0.2"

    def __init__(self, work: Path) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.host)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(self.host))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        (work / "cert.pem").write_bytes(self.cert_pem)
        (work / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(work / "cert.pem", work / "key.pem")
        self.seen: list[tuple[str, str | None]] = []
        self._listener = socket.socket()
        self._listener.bind((self.host, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            scheme = "https" if first == b"\x16" else "http"
            sock = self._tls.wrap_socket(conn, server_side=True) if scheme == "https" else conn
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            auth = headers.get("authorization")
            self.seen.append((scheme, auth))
            if scheme == "http":
                status, extra = "200 OK", ""
            elif auth is None:
                status, extra = "401 Unauthorized", 'WWW-Authenticate: Basic realm="test"\r\n'
            else:
                status, extra = "307 Temporary Redirect", f"Location: http://{self.host}:{self.port}/v2/\r\n"
            sock.sendall(f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._listener.close()


def test_authorization_is_not_sent_after_a_redirect_to_plain_http(tmp_path: Path) -> None:
    """https://H:P redirecting to http://H:P is another origin: the credentials must not go in clear."""
    from layerfs._registry.client import RegistryClient

    server = _TwoFacedServer(tmp_path)
    host = f"{server.host}:{server.port}"
    try:
        trust = ssl.create_default_context(cadata=server.cert_pem.decode())
        with RegistryClient(credentials_for=lambda h: Credentials("alice", "secret"), read_config=False,
                            ssl_context=trust, retries=0) as client:
            assert client.base_url(host) == f"https://{host}"
            client.ping(host)
    finally:
        server.stop()
    assert [scheme for scheme, _ in server.seen] == ["https", "https", "http"]
    assert server.seen[1][1] == "Basic " + _auth("alice", "secret")  # sent where it was asked for
    assert server.seen[2][1] is None, "Authorization was sent over plain http"
