"""An OCI distribution client for pulls (distribution spec `spec.md`, "Pull").

`RegistrySession` serves one pull of one repository: it tries the configured mirrors and
then the registry itself, answers 401 challenges (Basic with the credentials; Bearer by
asking the realm for a token with the challenge's service and scope, by GET with Basic
credentials, or by the OAuth2 POST form with an identity token; a registry token is sent
as is), fetches manifests with a size limit and streams blobs into the content store's
ingest area. Redirects are followed (aiohttp drops Authorization when the origin changes).
Plain HTTP is used for loopback registries (unless a CA file or skip_verify is set for
them), for hosts in `insecure_registries` and for registries marked `insecure`, as
containerd does; HTTPS verifies against the system CAs or the registry's `ca_file`.

Transient failures are retried (`settings.retry_attempts` tries in all, with exponential
backoff from `retry_base_delay` capped at `retry_max_delay`, or the registry's
Retry-After, capped too): answers 429 and 5xx (distribution spec: TOOMANYREQUESTS, and
RFC 9110 section 10.2.3 for Retry-After), refused, reset or timed-out connections, and
bodies cut off before their end. A blob cut off mid-way resumes with `Range: bytes=N-`
(RFC 9110 section 14.2; the distribution spec allows Range on blob GETs) from the bytes
already written; only a 206 whose Content-Range starts at N and ends at the blob's end
is appended, a 200 (Range ignored) or any other range starts the blob again from zero.
The content store's digest check still covers the whole blob.

Errors: unreachable -> Unavailable (after the retries); 404 -> NotFound; refused
credentials -> FailedPrecondition; bad content -> InvalidArgument (via the content store
and manifest parser).
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from crib_common.errors import (
    CribError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from crib_common.settings import ImagedSection

from ..oci.manifest import ACCEPT, Descriptor, media_type_of
from ..oci.reference import Reference
from .auth import Challenge, Credentials, parse_challenges

__all__ = ["BlobSink", "Endpoint", "RegistrySession", "Transient", "endpoints_for",
           "MAX_MANIFEST_BYTES"]

log = structlog.get_logger("imaged.registry")

# containerd refuses manifests and indexes above 4 MiB (`remotes/docker` maxManifestSize);
# so do we, before reading them into memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Transient(Unavailable):
    """A failure worth trying again: 429/5xx, a lost connection, a cut-off body."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BlobSink(Protocol):
    """Where `fetch_blob` writes: the ingest writer, or memory for small blobs."""

    written: int
    # Set once the content is more than one straight transfer (a Range resume).
    spliced: bool

    def write(self, chunk: bytes) -> None: ...

    def reset(self) -> None: ...


class _MemorySink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.written = 0
        self.spliced = False

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.written += len(chunk)

    def reset(self) -> None:
        self.chunks.clear()
        self.written = 0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _range_matches(header: str, offset: int, size: int) -> bool:
    """Content-Range "bytes offset-(size-1)/size" (the total may be "*")."""
    m = _CONTENT_RANGE.match(header.strip())
    if m is None:
        return False
    first, last, total = int(m.group(1)), int(m.group(2)), m.group(3)
    return first == offset and last == size - 1 and total in ("*", str(size))


@dataclass(frozen=True)
class Endpoint:
    base: str  # "https://host:port"
    host: str
    mirror: bool
    ssl: ssl.SSLContext | bool


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ssl_for(settings: ImagedSection, host: str) -> ssl.SSLContext | bool:
    cfg = settings.registries.get(host)
    if cfg is None:
        return True
    if cfg.skip_verify:
        return False
    if cfg.ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file))
        return ctx
    return True


def endpoints_for(settings: ImagedSection, ref: Reference) -> list[Endpoint]:
    """Mirrors first, then the registry itself (containerd `hosts.toml` order)."""
    out: list[Endpoint] = []
    cfg = settings.registries.get(ref.domain)
    for mirror in (cfg.mirrors if cfg else []):
        if "://" in mirror:
            scheme, _, host = mirror.partition("://")
        else:
            host = mirror
            plain = _is_loopback(host) or host in settings.insecure_registries
            scheme = "http" if plain else "https"
        host = host.rstrip("/")
        out.append(Endpoint(f"{scheme}://{host}", host, True, _ssl_for(settings, host)))
    host = ref.api_host
    # Loopback is plain HTTP unless TLS is configured for it (a CA file or skip_verify):
    # then the operator clearly means HTTPS.
    wants_tls = bool(cfg and (cfg.ca_file is not None or cfg.skip_verify))
    plain = ((_is_loopback(ref.domain) and not wants_tls)
             or ref.domain in settings.insecure_registries or bool(cfg and cfg.insecure))
    out.append(Endpoint(f"{'http' if plain else 'https'}://{host}", ref.domain, False,
                        _ssl_for(settings, ref.domain)))
    return out


class RegistrySession:
    """One repository on one registry (and its mirrors) for one pull."""

    def __init__(self, http: aiohttp.ClientSession, settings: ImagedSection, ref: Reference,
                 creds: Credentials) -> None:
        self.http = http
        self.settings = settings
        self.ref = ref
        self.creds = creds
        self.endpoints = endpoints_for(settings, ref)
        self._auth: dict[str, str] = {}  # endpoint base -> Authorization header
        self._good: Endpoint | None = None

    # ---------------------------------------------------------------- requests
    async def _request(self, ep: Endpoint, path: str, headers: dict[str, str]
                       ) -> aiohttp.ClientResponse:
        url = ep.base + path
        for attempt in range(2):
            hdrs = dict(headers)
            if ep.base in self._auth:
                hdrs["Authorization"] = self._auth[ep.base]
            resp = await self.http.get(url, headers=hdrs, ssl=ep.ssl, allow_redirects=True,
                                       max_redirects=5)
            if resp.status != 401 or attempt == 1:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            if not challenge:
                return await self.http.get(url, headers=hdrs, ssl=ep.ssl)
            await self._authorize(ep, challenge)
        raise AssertionError("unreachable")

    async def _authorize(self, ep: Endpoint, header: str) -> None:
        challenges = parse_challenges(header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            self._auth[ep.base] = "Bearer " + await self._token(ep, bearer)
            return
        if any(c.scheme == "basic" for c in challenges):
            if not self.creds.username:
                raise FailedPrecondition(
                    f"registry {ep.host} requires credentials for {self.ref.repository} "
                    "and none were given")
            self._auth[ep.base] = self.creds.basic_header()
            return
        raise FailedPrecondition(f"registry {ep.host} sent an unsupported auth challenge "
                                 f"{header!r}")

    async def _token(self, ep: Endpoint, challenge: Challenge) -> str:
        if self.creds.registry_token:
            return self.creds.registry_token
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise FailedPrecondition(f"registry {ep.host} sent a Bearer challenge without "
                                     "a usable realm")
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope") or f"repository:{self.ref.path}:pull"
        try:
            if self.creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": self.creds.identity_token,
                        "service": service, "scope": scope, "client_id": "crib"}
                async with self.http.post(realm, data=form) as resp:
                    body = await self._token_body(ep, resp)
            else:
                params = {"scope": scope}
                if service:
                    params["service"] = service
                headers = {}
                if self.creds.username:
                    headers["Authorization"] = self.creds.basic_header()
                async with self.http.get(realm, params=params, headers=headers) as resp:
                    body = await self._token_body(ep, resp)
        except aiohttp.ClientError as exc:
            raise Unavailable(f"token service {realm} of {ep.host} is unreachable: {exc}"
                              ) from None
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise FailedPrecondition(f"token service {realm} answered without a token")
        return token

    async def _token_body(self, ep: Endpoint, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        if resp.status in (401, 403):
            raise FailedPrecondition(
                f"registry {ep.host} refused the credentials for {self.ref.repository} "
                f"(token service answered {resp.status})")
        if resp.status >= 400:
            raise Unavailable(f"token service of {ep.host} answered {resp.status}")
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            raise FailedPrecondition(f"token service of {ep.host} answered non-JSON") from None
        if not isinstance(body, dict):
            raise FailedPrecondition(f"token service of {ep.host} answered non-object JSON")
        return body

    def _status_error(self, ep: Endpoint, resp: aiohttp.ClientResponse, what: str) -> CribError:
        if resp.status == 404:
            return NotFound(f"{what} not found on {ep.host}")
        if resp.status in (401, 403):
            return FailedPrecondition(f"registry {ep.host} denied access to {what} "
                                      f"({resp.status}): check credentials")
        if resp.status >= 500 or resp.status == 429:
            return Transient(f"registry {ep.host} answered {resp.status} for {what}",
                             _retry_after(resp.headers.get("Retry-After")))
        return FailedPrecondition(f"registry {ep.host} answered {resp.status} for {what}")

    async def _each_endpoint(self, fn: Callable[[Endpoint], Any], what: str) -> Any:
        """Try endpoints in order (the last good one first); errors of the last one win.
        When that error is transient, wait and go round again, `retry_attempts` times in
        all (see module docstring)."""
        attempts = self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            order = list(self.endpoints)
            if self._good is not None and self._good in order:
                order.remove(self._good)
                order.insert(0, self._good)
            last: CribError | None = None
            for ep in order:
                try:
                    result = await fn(ep)
                    self._good = ep
                    return result
                except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch) as exc:
                    # A certificate will not fix itself between tries.
                    last = Unavailable(f"registry {ep.host} failed TLS for {what}: {exc}")
                except aiohttp.ClientPayloadError as exc:
                    last = Transient(f"{what} from {ep.host} was cut off: {exc}")
                except (aiohttp.ClientConnectionError, OSError) as exc:
                    # Refused, reset, timed out (asyncio's TimeoutError is an OSError).
                    last = Transient(f"registry {ep.host} unreachable for {what}: "
                                     f"{type(exc).__name__}: {exc}")
                except aiohttp.ClientError as exc:
                    last = Unavailable(f"registry {ep.host} failed for {what}: "
                                       f"{type(exc).__name__}: {exc}")
                except (NotFound, Unavailable, FailedPrecondition) as exc:
                    # A mirror may lack content or refuse us: fall back to the next endpoint.
                    last = exc
                if not ep.mirror:
                    break
            assert last is not None
            if not isinstance(last, Transient):
                raise last
            if attempt == attempts:
                raise Unavailable(f"{last.message} (gave up after {attempts} attempts)")
            delay = self._backoff(attempt, last.retry_after)
            log.warning("registry request retried", what=what, attempt=attempt,
                        delay=round(delay, 3), error=last.message)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before try `attempt + 1`: the registry's Retry-After if it sent one,
        else base * 2**(attempt-1) with jitter (so many nodes do not retry in step);
        never above retry_max_delay, so a registry cannot park a pull."""
        cap = self.settings.retry_max_delay
        if retry_after is not None:
            return min(retry_after, cap)
        delay = self.settings.retry_base_delay * 2.0 ** (attempt - 1)
        return min(delay * random.uniform(0.75, 1.0), cap)

    # ---------------------------------------------------------------- manifests
    async def fetch_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(raw bytes, media type, Docker-Content-Digest header or "")."""
        what = f"manifest {self.ref.repository}:{reference}" if ":" not in reference else \
            f"manifest {self.ref.repository}@{reference}"

        async def attempt(ep: Endpoint) -> tuple[bytes, str, str]:
            resp = await self._request(ep, f"/v2/{self.ref.path}/manifests/{reference}",
                                       {"Accept": ACCEPT})
            async with resp:
                if resp.status != 200:
                    raise self._status_error(ep, resp, what)
                if (resp.content_length or 0) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"{what} is {resp.content_length} bytes, over the "
                                          f"{MAX_MANIFEST_BYTES}-byte limit")
                raw = await resp.content.read(MAX_MANIFEST_BYTES + 1)
                while len(raw) <= MAX_MANIFEST_BYTES:
                    more = await resp.content.read(MAX_MANIFEST_BYTES + 1 - len(raw))
                    if not more:
                        break
                    raw += more
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"{what} is over the {MAX_MANIFEST_BYTES}-byte limit")
                media = media_type_of(raw, resp.headers.get("Content-Type", ""))
                return raw, media, resp.headers.get("Docker-Content-Digest", "")

        result: tuple[bytes, str, str] = await self._each_endpoint(attempt, what)
        return result

    # ---------------------------------------------------------------- blobs
    async def fetch_small_blob(self, desc: Descriptor, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """A small blob (an image config) into memory; the caller checks its digest."""
        if desc.size > limit:
            raise InvalidArgument(f"blob {desc.digest} is {desc.size} bytes, over the "
                                  f"{limit}-byte limit")
        sink = _MemorySink()
        await self.fetch_blob(desc, sink)
        return b"".join(sink.chunks)

    async def fetch_blob(self, desc: Descriptor, writer: BlobSink,
                         progress: Callable[[int], None] | None = None) -> None:
        """Stream blob `desc` into `writer` (which checks size and digest on commit),
        from `writer.written` on: bytes already there (a kept partial download, or an
        earlier try cut off) are resumed with a Range request (see module docstring).
        `progress` gets byte counts, negative when a restart drops bytes."""
        what = f"blob {desc.digest} of {self.ref.repository}"
        path = f"/v2/{self.ref.path}/blobs/{desc.digest}"

        def restart(reason: str, offset: int, ep: Endpoint) -> None:
            log.warning("blob download restarted", digest=desc.digest, registry=ep.host,
                        reason=reason, dropped=offset)
            writer.reset()
            if progress is not None and offset:
                progress(-offset)

        async def attempt(ep: Endpoint) -> None:
            offset = writer.written
            if offset >= desc.size:
                return  # all there already; commit checks the digest
            resp = await self._request(ep, path, {"Range": f"bytes={offset}-"} if offset
                                       else {})
            if offset and resp.status in (206, 416) and not _range_matches(
                    resp.headers.get("Content-Range", ""), offset, desc.size):
                resp.release()
                restart(f"answered {resp.status} with Content-Range "
                        f"{resp.headers.get('Content-Range', '')!r}", offset, ep)
                offset = 0
                resp = await self._request(ep, path, {})
            async with resp:
                if offset and resp.status == 200:
                    restart("registry ignored the Range request", offset, ep)
                    offset = 0
                elif resp.status != (206 if offset else 200):
                    raise self._status_error(ep, resp, what)
                elif offset:
                    log.info("blob download resumed", digest=desc.digest, registry=ep.host,
                             offset=offset)
                    writer.spliced = True
                if resp.content_length is not None and \
                        resp.content_length != desc.size - offset:
                    if offset:
                        raise InvalidArgument(f"{what}: {ep.host} answered bytes {offset}- "
                                              f"with {resp.content_length} bytes, the "
                                              f"manifest says {desc.size} in all")
                    raise InvalidArgument(f"{what} is {resp.content_length} bytes, the "
                                          f"manifest says {desc.size}")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if writer.written + len(chunk) > desc.size:
                        raise InvalidArgument(f"{what} is longer than the manifest's "
                                              f"{desc.size} bytes")
                    writer.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                if writer.written != desc.size:
                    # The connection ended early without aiohttp noticing (no length).
                    raise Transient(f"{what} from {ep.host} ended after {writer.written} "
                                    f"of {desc.size} bytes")

        await self._each_endpoint(attempt, what)
