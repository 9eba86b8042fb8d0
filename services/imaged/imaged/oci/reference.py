"""Image references: parse, validate and normalise as Docker and containerd do.

`busybox` -> `docker.io/library/busybox:latest`; `localhost:5000/a/b` keeps its host; a
reference with a digest is pulled by digest (a tag beside it is ignored, as CRI-O does).
Grammar: distribution `reference/reference.go` (domain, path components, tag, digest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crib_common.errors import InvalidArgument

__all__ = ["Reference", "parse_reference", "DOCKER_HUB", "is_digest"]

DOCKER_HUB = "docker.io"
# Docker Hub's registry API lives on another host than its name (docker's `IndexServer`).
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
_DOMAIN = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
# Longest name distribution accepts (`NameTotalLengthMax`).
_NAME_MAX = 255


def is_digest(value: str) -> bool:
    return bool(_DIGEST.match(value))


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        """`domain/path`, the name repo_tags and repo_digests start with."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What the manifest is fetched by: the digest if any, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain


def parse_reference(raw: str) -> Reference:
    """Parse and normalise `raw`; InvalidArgument names what is wrong."""
    text = raw.strip()
    if not text:
        raise InvalidArgument("image reference is empty")
    rest, digest = text, ""
    if "@" in text:
        rest, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidArgument(f"invalid image reference {raw!r}: bad digest {digest!r}")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid image reference {raw!r}: bad tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise InvalidArgument(f"invalid image reference {raw!r}: bad registry {domain!r}")
    else:
        domain, path = DOCKER_HUB, rest
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH.match(path):
        raise InvalidArgument(
            f"invalid image reference {raw!r}: repository {path!r} must be lowercase "
            "letters, digits and separators")
    if len(domain) + 1 + len(path) > _NAME_MAX:
        raise InvalidArgument(f"invalid image reference {raw!r}: name longer than {_NAME_MAX}")
    if not digest and not tag:
        tag = "latest"
    if digest:
        tag = ""
    return Reference(domain, path, tag, digest)
