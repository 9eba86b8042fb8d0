"""Manifests, indexes and configs: media types, parsing and host platform selection.

Media types: OCI image spec `media-types.md` and Docker's "Image Manifest V2, Schema 2".
Anything else (Docker schema 1, artifacts, unknown types) is refused with a clear error.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from crib_common.errors import InvalidArgument

from .reference import is_digest

__all__ = [
    "Descriptor",
    "Manifest",
    "Platform",
    "host_platform",
    "parse_index",
    "parse_manifest",
    "select_manifest",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "ACCEPT",
    "LAYER_COMPRESSION",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json",
                          "application/vnd.docker.container.image.v1+json"})
# The Accept header of a manifest GET (distribution spec "Pulling manifests").
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

# Layer media type -> compression ("gzip", "zstd", "none").
LAYER_COMPRESSION: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# uname machine -> (GOARCH, default variant), as containerd's `platforms` package.
_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i686": ("386", ""), "i386": ("386", ""), "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    arch, variant = _ARCH.get(_platform.machine(), (_platform.machine(), ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor] = field(default_factory=list)


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def _descriptor(obj: Any, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what}: descriptor is not an object")
    digest, size, media_type = obj.get("digest"), obj.get("size"), obj.get("mediaType", "")
    if not isinstance(digest, str) or not is_digest(digest):
        raise InvalidArgument(f"{what}: invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what}: invalid size {size!r}")
    if not isinstance(media_type, str):
        raise InvalidArgument(f"{what}: invalid mediaType")
    plat = None
    if isinstance(obj.get("platform"), dict):
        p = obj["platform"]
        plat = Platform(str(p.get("os", "")), str(p.get("architecture", "")),
                        str(p.get("variant", "") or ""))
    urls = tuple(u for u in obj.get("urls", []) or [] if isinstance(u, str))
    return Descriptor(media_type, digest, size, plat, urls)


def media_type_of(raw: bytes, header: str) -> str:
    """The manifest's media type: the Content-Type header, else its `mediaType` field."""
    ctype = header.split(";", 1)[0].strip()
    if ctype in MANIFEST_TYPES or ctype in INDEX_TYPES:
        return ctype
    doc = _load(raw, "manifest")
    field_type = doc.get("mediaType")
    if isinstance(field_type, str) and field_type:
        return field_type
    # An OCI manifest may omit mediaType (image spec manifest.md): tell by shape.
    if doc.get("schemaVersion") == 2 and "manifests" in doc:
        return OCI_INDEX
    if doc.get("schemaVersion") == 2 and "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return ctype or "unknown"


def parse_manifest(raw: bytes, media_type: str) -> Manifest:
    if media_type not in MANIFEST_TYPES:
        raise InvalidArgument(f"unsupported manifest media type {media_type!r}")
    doc = _load(raw, "manifest")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    config = _descriptor(doc.get("config"), "manifest config")
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise InvalidArgument(f"unsupported image config media type {config.media_type!r}")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise InvalidArgument("manifest has no layers list")
    layers = [_descriptor(obj, f"layer {i}") for i, obj in enumerate(layers_raw)]
    for layer in layers:
        if layer.media_type not in LAYER_COMPRESSION:
            raise InvalidArgument(f"unsupported layer media type {layer.media_type!r} "
                                  f"({layer.digest})")
    return Manifest(media_type, config, layers)


def parse_index(raw: bytes, media_type: str) -> list[Descriptor]:
    if media_type not in INDEX_TYPES:
        raise InvalidArgument(f"unsupported index media type {media_type!r}")
    doc = _load(raw, "index")
    items = doc.get("manifests")
    if not isinstance(items, list):
        raise InvalidArgument("index has no manifests list")
    return [_descriptor(obj, f"index entry {i}") for i, obj in enumerate(items)]


def _variant_rank(want: Platform, have: Platform) -> int | None:
    """0 for an exact match; a larger number for a compatible older variant; None if not."""
    if have.os != want.os or have.architecture != want.architecture:
        return None
    if want.variant == have.variant or not have.variant:
        return 0 if want.variant == have.variant else 50
    if want.architecture == "arm64" and have.variant == "v8" and not want.variant:
        return 0
    if want.architecture == "arm" and have.variant.startswith("v") and want.variant[1:].isdigit():
        older = int(want.variant[1:]) - int(have.variant[1:] or 0)
        return older if older > 0 else None
    return None


def select_manifest(entries: list[Descriptor], want: Platform) -> Descriptor:
    """The index entry for `want` (os/architecture/variant), as containerd's matcher."""
    best: tuple[int, Descriptor] | None = None
    for entry in entries:
        if entry.media_type and entry.media_type not in MANIFEST_TYPES:
            continue
        if entry.platform is None:
            continue
        rank = _variant_rank(want, entry.platform)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is None:
        offered = ", ".join(str(e.platform) for e in entries if e.platform) or "none"
        raise InvalidArgument(f"no image for platform {want} in the index (offers: {offered})")
    return best[1]


def parse_config(raw: bytes) -> dict[str, Any]:
    doc = _load(raw, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidArgument("image config has no rootfs.diff_ids")
    for d in rootfs["diff_ids"]:
        if not isinstance(d, str) or not is_digest(d):
            raise InvalidArgument(f"image config has an invalid diff_id {d!r}")
    return doc
