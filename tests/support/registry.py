"""A real OCI distribution registry on loopback for tests, plus tools to push raw content.

API
---
`Registry(auth=None | "basic" | "token", users={"name": "password"})`
    `.start()` runs Debian's `/usr/bin/docker-registry serve <config.yml>` on 127.0.0.1 with a
    free port and a temporary storage directory; `.host` is "127.0.0.1:PORT"; `.stop()`
    kills it by PID and removes the directory. Usable as a context manager.
    - `auth="basic"`: htpasswd (bcrypt, `htpasswd -B`) with `users`.
    - `auth="token"`: the registry trusts a `TokenIssuer` (started with it, `.issuer`) whose
      `/token` endpoint hands out ES256 JWTs after checking Basic credentials against
      `users` (anonymous requests are refused when `users` is non-empty). The issuer also
      answers the OAuth2 POST form (grant_type=password or refresh_token, `refresh_tokens`).
    - `tls=True`: HTTPS with a certificate for 127.0.0.1 signed by a fresh CA (`.ca_path`).
    - `.client()` returns a `RegistryClient` already holding the first user's credentials.
    - `.blob_path(name, digest)`: the file the registry serves a blob from, so tests can
      truncate or alter stored content (the registry checks digests on upload only).

`RegistryClient(host, username=None, password=None)`: a small synchronous client speaking
the distribution HTTP API (spec: /work/shared/specs, distribution `spec.md`), answering
Basic and Bearer challenges itself:
    `push_blob(repo, data) -> digest` (monolithic upload: POST then PUT ?digest=),
    `push_manifest(repo, ref, body, media_type) -> digest`, `get(path)`, `delete_manifest`.

`StaticRegistry(routes)`: a hostile or scripted "registry": a threaded HTTP server on
loopback answering exact paths from a dict `path -> (status, headers, body)`; `/v2/` answers
200. Use it for content a real registry refuses to store (unknown manifest media types,
10 MiB manifests, blobs that do not match their digest, redirects). `.host`, `.stop()`,
`.requests` (paths seen), `.headers` ((path, request headers) seen).
Failure scripting (transient-failure tests): `.script[path]` is a list of one-shot answers
`(status, headers, body)` served, in order, before the route; `.cut[path]` a list of byte
counts: each request to `path` consumes one and gets the route's full headers but only
that many body bytes, then the connection is dropped. A `Range: bytes=N-` request for a
200 route is answered 206 with `Content-Range` (as docker-registry does), unless
`.honor_range` is False (then 200 and the whole body).
Slow registries: `.throttle[path]` serves that body at about so many bytes per second;
`.stall[path] = n` sends the first n body bytes, then nothing more (the connection stays
open) until `.release` is set or the server stops.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Registry",
    "RegistryClient",
    "RegistryError",
    "StaticRegistry",
    "TokenIssuer",
    "free_port",
    "sha256_digest",
]

REGISTRY_BIN = "/usr/bin/docker-registry"


class RegistryError(RuntimeError):
    """An unexpected answer from a registry during test setup."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_tls(root: Path) -> None:
    """A test CA and a server certificate for 127.0.0.1 (IP SAN) it signed."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crib-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (root / "ca.crt").write_bytes(ca.public_bytes(pem))
    (root / "server.crt").write_bytes(cert.public_bytes(pem))
    (root / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _wait_http(host: str, proc: subprocess.Popen[bytes] | None, log: Path | None,
               timeout: float = 20.0, tls: bool = False) -> None:
    deadline = time.monotonic() + timeout
    h, p = host.rsplit(":", 1)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RegistryError(f"registry exited with {proc.returncode}: {tail}")
        try:
            conn: http.client.HTTPConnection = (
                http.client.HTTPSConnection(h, int(p), timeout=2,
                                            context=ssl._create_unverified_context())
                if tls else http.client.HTTPConnection(h, int(p), timeout=2))
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RegistryError(f"registry on {host} did not answer within {timeout}s")


# --------------------------------------------------------------------------- token issuer
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _libtrust_key_id(der_spki: bytes) -> str:
    """The key ID docker/libtrust derives (and distribution matches a JWT `kid` against):
    base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo), in groups of four."""
    b32 = base64.b32encode(hashlib.sha256(der_spki).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


class _LoopbackHTTP:
    """A `ThreadingHTTPServer` on a free loopback port, served from a daemon thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: http.server.ThreadingHTTPServer | None = None

    def _start_server(self, handler: type[http.server.BaseHTTPRequestHandler], name: str) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name=name).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TokenIssuer(_LoopbackHTTP):
    """A minimal Docker token server (distribution `docs/spec/auth/token.md`)."""

    def __init__(self, workdir: Path, service: str, users: dict[str, str],
                 refresh_tokens: dict[str, str] | None = None) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        super().__init__()
        self.service = service
        self.issuer = "crib-test-issuer"
        self.users = users
        # refresh token -> user name (the identity_token flow).
        self.refresh_tokens = dict(refresh_tokens or {})
        self.requests: list[dict[str, Any]] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crib-test-issuer")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = workdir / "issuer.crt"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        spki = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = _libtrust_key_id(spki)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def make_token(self, subject: str, scopes: list[str], ttl: int = 300) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                           "actions": parts[-1].split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + ttl,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(sig)

    def _authenticate(self, handler: http.server.BaseHTTPRequestHandler) -> str | None:
        """The user named by valid Basic credentials, "" for anonymous, None if refused."""
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            return user if self.users.get(user) == password else None
        return "" if not self.users else None

    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                scopes = [s for v in query.get("scope", []) for s in v.split(" ")]
                user = issuer._authenticate(self)
                issuer.requests.append({"method": "GET", "user": user, "scopes": scopes,
                                        "service": query.get("service", [""])[0]})
                if url.path != "/token" or user is None:
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                    return
                token = issuer.make_token(user or "anonymous", scopes)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300,
                                   "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                scopes = [s for v in form.get("scope", []) for s in v.split(" ")]
                user: str | None = None
                if grant == "password":
                    name = form.get("username", [""])[0]
                    if issuer.users.get(name) == form.get("password", [None])[0]:
                        user = name
                elif grant == "refresh_token":
                    user = issuer.refresh_tokens.get(form.get("refresh_token", [""])[0])
                issuer.requests.append({"method": "POST", "user": user, "scopes": scopes,
                                        "grant_type": grant})
                if user is None:
                    self._answer(401, {"error": "invalid_grant"})
                    return
                token = issuer.make_token(user, scopes)
                self._answer(200, {"access_token": token, "expires_in": 300,
                                   "scope": " ".join(scopes)})

        self._start_server(Handler, "crib-token-issuer")
        return self


# --------------------------------------------------------------------------- registry
@dataclass
class Registry:
    """docker-registry on loopback; see the module docstring."""

    auth: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    # Serve HTTPS with a certificate for 127.0.0.1 signed by a fresh test CA (`ca_path`).
    tls: bool = False
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(
        tempfile.mkdtemp(prefix="crib-reg-", dir="/tmp")))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    issuer: TokenIssuer | None = None

    SERVICE = "crib-test-registry"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.root / 'server.crt'}",
                      f"    key: {self.root / 'server.key'}"]
        if self.auth == "basic":
            htpasswd = self.root / "htpasswd"
            htpasswd.touch()
            for user, password in self.users.items():
                # -B: bcrypt, the only scheme docker-registry's htpasswd accepts.
                subprocess.run(["htpasswd", "-bB", str(htpasswd), user, password],
                               check=True, capture_output=True)
            lines += ["auth:", "  htpasswd:", "    realm: crib-test",
                      f"    path: {htpasswd}"]
        elif self.auth == "token":
            assert self.issuer is not None
            lines += ["auth:", "  token:", f"    realm: {self.issuer.realm}",
                      f"    service: {self.SERVICE}", f"    issuer: {self.issuer.issuer}",
                      f"    rootcertbundle: {self.issuer.cert_path}"]
        elif self.auth is not None:
            raise ValueError(f"unknown auth {self.auth!r}")
        return "\n".join(lines) + "\n"

    def start(self) -> Registry:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        if self.auth == "token":
            self.issuer = TokenIssuer(self.root, self.SERVICE, self.users,
                                      self.refresh_tokens).start()
        if self.tls:
            _write_tls(self.root)
        config = self.root / "config.yml"
        config.write_text(self._config())
        log = self.root / "registry.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=out, stderr=out,
                stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_http(self.host, self.proc, log, tls=self.tls)
        return self

    @property
    def ca_path(self) -> Path:
        """The CA that signed the registry's certificate (with `tls=True`)."""
        return self.root / "ca.crt"

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
        if self.issuer is not None:
            self.issuer.stop()
            self.issuer = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> RegistryClient:
        user, password = next(iter(self.users.items()), (None, None))
        return RegistryClient(self.host, user, password,
                              self.ca_path if self.tls else None)

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (layout of distribution's
        `registry/storage/paths.go`)."""
        algo, hexd = digest.split(":", 1)
        return (self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data")

    def log(self) -> str:
        path = self.root / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""


# --------------------------------------------------------------------------- client
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    """Synchronous distribution-API client for test setup (push and raw reads)."""

    def __init__(self, host: str, username: str | None = None,
                 password: str | None = None, ca_file: Path | None = None) -> None:
        self.host = host
        self.ca_file = ca_file
        self.username = username
        self.password = password
        self._auth_header: dict[str, str] = {}

    def _basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _raw(self, method: str, url: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        scheme = "https" if self.ca_file else "http"
        parts = urllib.parse.urlsplit(url if "://" in url else f"{scheme}://{self.host}{url}")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname or "127.0.0.1", parts.port or 443, timeout=60,
                context=ssl.create_default_context(cafile=str(self.ca_file)))
        else:
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                              timeout=60)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def _authorize(self, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self.username is None:
                raise RegistryError("registry wants Basic credentials and none were given")
            self._auth_header = {"Authorization": self._basic()}
            return
        params = dict(_CHALLENGE_PARAM.findall(rest))
        query = {"service": params.get("service", "")}
        if "scope" in params:
            query["scope"] = params["scope"]
        headers = {"Authorization": self._basic()} if self.username else {}
        status, _, body = self._raw(
            "GET", params["realm"] + "?" + urllib.parse.urlencode(query), None, headers)
        if status != 200:
            raise RegistryError(f"token issuer answered {status}: {body[:200]!r}")
        answer = json.loads(body)
        self._auth_header = {"Authorization": "Bearer " + (answer.get("token")
                                                           or answer["access_token"])}

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request; a 401 is answered once by following its challenge."""
        all_headers = {**(headers or {}), **self._auth_header}
        status, resp_headers, data = self._raw(method, url, body, all_headers)
        if status == 401 and "www-authenticate" in resp_headers:
            self._authorize(resp_headers["www-authenticate"])
            status, resp_headers, data = self._raw(
                method, url, body, {**(headers or {}), **self._auth_header})
        return status, resp_headers, data

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, None, headers)

    def push_blob(self, repo: str, data: bytes, digest: str | None = None) -> str:
        """Upload `data` monolithically (POST, then PUT with ?digest=); returns its digest."""
        digest = digest or sha256_digest(data)
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 200:
            return digest
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"",
                                             {"Content-Length": "0"})
        if status != 202:
            raise RegistryError(f"upload start for {repo} answered {status}: {body[:300]!r}")
        location = headers["location"]
        sep = "&" if "?" in location else "?"
        status, _, body = self.request(
            "PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status != 201:
            raise RegistryError(f"blob PUT {digest} answered {status}: {body[:300]!r}")
        return digest

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest (or index) under a tag or digest; returns its digest."""
        status, _, answer = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body,
            {"Content-Type": media_type, "Content-Length": str(len(body))})
        if status != 201:
            raise RegistryError(f"manifest PUT {repo}:{reference} answered {status}: "
                                f"{answer[:300]!r}")
        return sha256_digest(body)

    def delete_manifest(self, repo: str, digest: str) -> int:
        status, _, _ = self.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        return status


# --------------------------------------------------------------------------- static server
Route = tuple[int, dict[str, str], bytes]


class StaticRegistry(_LoopbackHTTP):
    """A scripted registry: exact path -> (status, headers, body); see module docstring."""

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        super().__init__()
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[str] = []
        # path -> bytes per second: serve that body slowly (kill-during-pull tests).
        self.throttle: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self.release = threading.Event()
        self.script: dict[str, list[Route]] = {}
        self.cut: dict[str, list[int]] = {}
        self.honor_range = True
        self.headers: list[tuple[str, dict[str, str]]] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_blob(self, repo: str, data: bytes, digest: str | None = None) -> str:
        """Serve `data` as blob `digest` (default: its true digest) in `repo`."""
        digest = digest or sha256_digest(data)
        self.routes[f"/v2/{repo}/blobs/{digest}"] = (
            200, {"Content-Type": "application/octet-stream"}, data)
        return digest

    def add_manifest(self, repo: str, ref: str, body: bytes, media_type: str,
                     digest: str | None = None) -> str:
        digest = digest or sha256_digest(body)
        route = (200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, body)
        self.routes[f"/v2/{repo}/manifests/{ref}"] = route
        self.routes[f"/v2/{repo}/manifests/{digest}"] = route
        return digest

    def add_image(self, repo: str, tag: str, manifest: bytes, media_type: str,
                  blobs: list[bytes]) -> str:
        """Serve an image: its blobs (config and layers) and its manifest under `tag`."""
        for blob in blobs:
            self.add_blob(repo, blob)
        return self.add_manifest(repo, tag, manifest, media_type)

    def start(self) -> StaticRegistry:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, with_body: bool) -> None:
                path = urllib.parse.urlsplit(self.path).path
                owner.requests.append(path)
                owner.headers.append((path, {k.lower(): v for k, v in self.headers.items()}))
                scripted = owner.script.get(path)
                cut = owner.cut[path].pop(0) if owner.cut.get(path) else None
                if path == "/v2/":
                    status, headers, body = 200, {}, b"{}"
                elif scripted:
                    status, headers, body = scripted.pop(0)
                else:
                    status, headers, body = owner.routes.get(
                        path, (404, {"Content-Type": "application/json"},
                               b'{"errors":[{"code":"NOT_FOUND"}]}'))
                wanted = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if status == 200 and wanted and owner.honor_range:
                    start, total = int(wanted.group(1)), len(body)
                    headers = {**headers, "Content-Range": f"bytes {start}-{total - 1}/{total}",
                               "Content-Length": str(total - start)}
                    status, body = 206, body[start:]
                if cut is not None:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if with_body:
                        self.wfile.write(body[:cut])
                        self.wfile.flush()
                    # Drop the connection mid-body: a reset, as a flaky network does.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        rate = owner.throttle.get(path)
                        stall = owner.stall.get(path)
                        if stall is not None:
                            self.wfile.write(body[:stall])
                            self.wfile.flush()
                            owner.release.wait(120)
                            self.wfile.write(body[stall:])
                        elif rate:
                            step = max(rate // 20, 1)
                            for i in range(0, len(body), step):
                                self.wfile.write(body[i:i + step])
                                self.wfile.flush()
                                time.sleep(0.05)
                        else:
                            self.wfile.write(body)
                if "Content-Length" in headers:
                    # A lying Content-Length (truncation tests): end the connection.
                    self.close_connection = True

            def do_GET(self) -> None:
                self._serve(True)

            def do_HEAD(self) -> None:
                self._serve(False)

        self._start_server(Handler, "crib-static-registry")
        return self

    def stop(self) -> None:
        self.release.set()  # stalled answers end, so the server threads can
        super().stop()

    def __enter__(self) -> StaticRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(registry: Registry) -> Iterator[Registry]:
    """`with running(Registry(auth="basic", users={...})) as reg:`"""
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()
