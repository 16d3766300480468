"""Real registries on 127.0.0.1 for the pull tests (docs/testing.rst "Registries"), and the helpers
around them.

API::

    reg = Registry.start(work, storage)                       # anonymous docker-registry
    reg = Registry.start(work, storage, htpasswd=file)        # Basic auth
    reg = Registry.start(work, storage, token=token_server)   # bearer tokens from token_server
    reg = Registry.start(work, storage, redirect_base=url)    # blob GETs answered with 307 to url
    reg.host ("127.0.0.1:PORT"); reg.stop()                   # stop by PID, always
    tokens = TokenServer.start(work, users={"alice": "pw"}, public=("public/",))
    files = FileServer.start(storage, bind_host)              # serves the storage dir, logs headers
    proxy = Proxy.start("127.0.0.1", port, rate=..., cut_after=...)  # throttles / drops connections
    drip = Drip.start(port, over=65536)                       # blobs over 64 KiB at one byte a second
    push("oci:LAYOUT:TAG", "127.0.0.1:PORT/repo:tag", "--format", "v2s2")
    write_htpasswd(path, {"alice": "pw"})

- Several ``docker-registry serve`` processes share one storage dir, so images are pushed once (to
  the anonymous registry) and pulled through every variant.
- The token server signs RS256 JWTs whose header carries the certificate (``x5c``); the registry
  trusts that certificate (``rootcertbundle``).  It answers ``GET realm?service=&scope=`` (Basic
  credentials or none) and ``POST realm`` (OAuth form, ``grant_type=password|refresh_token``).
  Anonymous users get ``pull`` on repositories under the ``public`` prefixes, nothing elsewhere;
  known users get ``pull,push`` everywhere.  It counts what it was asked.
- :class:`FileServer` stands in for the storage host of the redirect middleware (as
  ``python3 -m http.server`` would) and records every request's ``Authorization`` header; like
  http.server it ignores ``Range`` (answers 200).
- :class:`Proxy` forwards TCP to a server; it can limit the rate (to make downloads slow enough to
  interrupt) and cut a connection after some bytes (to make clients resume).
- :class:`Drip` is an HTTP reverse proxy to a registry that answers everything as the registry
  does, but sends the body of a large blob one byte a second: a transfer that stalls without
  ever going silent.

Every server binds 127.0.0.1 only and is stopped by its own handle (PID or thread), in ``finally``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import re
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers at all (any HTTP status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError as err:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server for {url} exited with {proc.returncode}") from err
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout} s") from err
            time.sleep(0.05)


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """An htpasswd file with bcrypt entries (the only kind docker-registry accepts)."""
    lines = []
    for user, password in users.items():
        out = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True,
                             check=True).stdout.strip()
        lines.append(out)
    path.write_text("\n".join(lines) + "\n")
    return path


class Registry:
    """A ``docker-registry serve`` process on 127.0.0.1 with its own config."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, config: Path, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.config = config
        self.log = log

    @classmethod
    def start(cls, work: Path, storage: Path, *, htpasswd: Path | None = None, token: TokenServer | None = None,
              redirect_base: str | None = None, accesslog: bool = False) -> Registry:
        """Start a registry serving ``storage``; returns once ``/v2/`` answers.  With ``accesslog``
        it logs every request to ``reg.log`` (see :meth:`blob_gets`)."""
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": not accesslog}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "layerfs-test", "path": str(htpasswd)}}
        if token is not None:
            config["auth"] = {"token": {"realm": token.realm, "service": token.service, "issuer": token.issuer,
                                        "rootcertbundle": str(token.cert_path)}}
        if redirect_base is not None:
            config["storage"]["redirect"] = {"disable": False}
            config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": redirect_base}}]}
        path = work / f"registry-{port}.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        log = work / f"registry-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["docker-registry", "serve", str(path)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        reg = cls(proc, port, path, log)
        try:
            wait_http(f"http://{reg.host}/v2/", proc=proc)
        except BaseException:
            reg.stop()
            raise
        return reg

    def stop(self) -> None:
        """Stop the process (by its PID); idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def blob_gets(self) -> list[str]:
        """The digests of the blobs answered to a GET (200), in order (needs ``accesslog``)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = re.search(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" 200 ', line)
            if m:
                out.append(m.group(1))
        return out

    def blob_data_path(self, storage: Path, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to corrupt it)."""
        hexpart = digest.partition(":")[2]
        return storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


# -- the token server ------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A bearer-token server (the distribution project's ``docs/spec/auth/token.md``) in a thread of
    the test process."""

    service = "layerfs-test-registry"
    issuer = "layerfs-test-issuer"

    def __init__(self, work: Path, users: Mapping[str, str], public: tuple[str, ...]) -> None:
        self.users = dict(users)
        self.public = public
        self.refresh_tokens: dict[str, str] = {}
        self.requests: list[tuple[str, str, bool]] = []  # (method, scope, authenticated)
        self._lock = threading.Lock()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "layerfs test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = work / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @classmethod
    def start(cls, work: Path, *, users: Mapping[str, str], public: tuple[str, ...] = ("public/",)) -> TokenServer:
        work.mkdir(parents=True, exist_ok=True)
        server = cls(work, users, public)
        outer = server

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, user: str | None, params: Mapping[str, list[str]], method: str) -> None:
                scopes = [s for value in params.get("scope", []) for s in value.split(" ") if s]
                outer._record(method, " ".join(scopes), user is not None)
                body = json.dumps(outer.issue(user, scopes)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _deny(self) -> None:
                body = b'{"details":"incorrect username or password"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = urllib.parse.parse_qs(url.query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if outer.users.get(name) != password:
                        outer._record("GET", "", True)
                        return self._deny()
                    user = name
                self._answer(user, params, "GET")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                user = None
                if grant == "password":
                    name, password = form.get("username", [""])[0], form.get("password", [""])[0]
                    if outer.users.get(name) != password:
                        outer._record("POST", "", True)
                        return self._deny()
                    user = name
                elif grant == "refresh_token":
                    user = outer.refresh_tokens.get(form.get("refresh_token", [""])[0])
                    if user is None:
                        return self._deny()
                else:
                    return self._deny()
                self._answer(user, form, "POST")

        server.port = free_port()
        server._server = http.server.ThreadingHTTPServer(("127.0.0.1", server.port), Handler)
        server._server.daemon_threads = True
        server._thread = threading.Thread(target=server._server.serve_forever, daemon=True)
        server._thread.start()
        return server

    def _record(self, method: str, scope: str, authenticated: bool) -> None:
        with self._lock:
            self.requests.append((method, scope, authenticated))

    def issue(self, user: str | None, scopes: Iterable[str]) -> dict[str, object]:
        """A token answer granting ``user`` (None = anonymous) what the policy allows of ``scopes``."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            if user is not None:
                allowed = [a for a in wanted if a in ("pull", "push", "*")]
            elif name.startswith(self.public):
                allowed = [a for a in wanted if a == "pull"]
            else:
                allowed = []
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64url(signature)}"
        answer: dict[str, object] = {"token": token, "access_token": token, "expires_in": 300,
                                     "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        if user is not None:
            refresh = secrets.token_hex(16)
            self.refresh_tokens[refresh] = user
            answer["refresh_token"] = refresh
        return answer

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- the storage host of the redirect middleware ---------------------------------------------------


class FileServer:
    """Serves a directory like ``python3 -m http.server`` and records each request's headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization)
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0

    @classmethod
    def start(cls, directory: Path) -> FileServer:
        outer = cls()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def log_message(self, *args: object) -> None:
                pass

            def send_head(self) -> Any:
                outer.requests.append((self.path, self.headers.get("Authorization")))
                return super().send_head()

        outer.port = free_port()
        outer._server = http.server.ThreadingHTTPServer(("127.0.0.1", outer.port), Handler)
        outer._server.daemon_threads = True
        threading.Thread(target=outer._server.serve_forever, daemon=True).start()
        return outer

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- a TCP proxy that throttles and drops --------------------------------------------------------


class Proxy:
    """Forwards 127.0.0.1:port (or ``bind``:port) to a server.

    Args (of :meth:`start`):
        bind: the address to listen on (another loopback address, 127.0.0.2, is a registry
            "on another host": not one served over plain HTTP by default).
        rate: bytes per second per connection from the server (0 = unlimited).
        cut_after: close a connection once it has sent this many bytes from the server, for the
            first ``cuts`` connections that get that far (then forward normally).
    """

    def __init__(self, target: tuple[str, int], rate: int, cut_after: int, cuts: int,
                 bind: str = "127.0.0.1") -> None:
        self.target = target
        self.rate = rate
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cuts_done = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((bind, 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"{bind}:{self.port}"
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []

    @classmethod
    def start(cls, target_host: str, target_port: int, *, rate: int = 0, cut_after: int = 0,
              cuts: int = 0, bind: str = "127.0.0.1") -> Proxy:
        proxy = cls((target_host, target_port), rate, cut_after, cuts, bind)
        threading.Thread(target=proxy._accept, daemon=True).start()
        return proxy

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        sent = 0
        started = time.monotonic()
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if down:
                    with self._lock:
                        self.bytes_down += len(data)
                        cut = self.cut_after and self.cuts_left > 0 and sent + len(data) > self.cut_after
                        if cut:
                            self.cuts_left -= 1
                            self.cuts_done += 1
                    if cut:
                        dst.sendall(data[: max(self.cut_after - sent, 0)])
                        break
                dst.sendall(data)
                sent += len(data)
                if down and self.rate:
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass


# -- a registry whose large blobs arrive one byte a second -----------------------------------------


class Drip:
    """An HTTP/1.1 reverse proxy to the registry on 127.0.0.1:``target_port``.

    Manifests, small blobs and HEADs pass as they are; the body of a blob GET larger than ``over``
    bytes is sent one byte every ``interval`` seconds (its headers at once).  ``dripping`` counts
    the connections dripping right now.
    """

    def __init__(self, target_port: int, over: int, interval: float) -> None:
        import http.client

        self.dripping = 0
        self.dripped = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length", str(len(body))) if self.command == "HEAD" else str(len(body))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if "/blobs/" not in self.path or len(body) <= over:
                    self.wfile.write(body)
                    return
                with outer._lock:
                    outer.dripping += 1
                try:
                    for i in range(len(body)):
                        if outer._stopped.wait(interval):
                            break
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        with outer._lock:
                            outer.dripped += 1
                except OSError:
                    pass
                finally:
                    with outer._lock:
                        outer.dripping -= 1
                    self.close_connection = True

            do_GET = do_HEAD = _relay

        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @classmethod
    def start(cls, target_port: int, *, over: int = 65536, interval: float = 1.0) -> Drip:
        return cls(target_port, over, interval)

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()


# -- pushing ----------------------------------------------------------------------------------------


def push(src: str, dest: str, *extra: str, creds: str | None = None) -> None:
    """``skopeo copy SRC docker://DEST`` to a plain-HTTP registry (EXTRA: ``--format v2s2``, ``--all``…)."""
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", *extra]
    if creds:
        argv += ["--dest-creds", creds]
    subprocess.run([*argv, src, f"docker://{dest}"], check=True, capture_output=True, timeout=300)


def inspect_config_digest(ref: str, *extra: str) -> str:
    """The image ID skopeo reports for ``docker://REF``: sha256 of ``skopeo inspect --config --raw``."""
    raw = subprocess.run(["skopeo", "--insecure-policy", "inspect", "--tls-verify=false", "--config", "--raw",
                          *extra, f"docker://{ref}"], capture_output=True, check=True, timeout=120).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


__all__ = ["Drip", "FileServer", "Proxy", "Registry", "TokenServer", "file_sha256", "free_port",
           "inspect_config_digest", "push", "wait_http", "write_htpasswd"]
