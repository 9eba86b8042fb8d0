"""Build OCI and Docker images in Python and push them to a test `Registry`.

API
---
Layers
    `Entry`: one tar entry; build with `Entry.file(name, data, mode=0o644, uid=0, gid=0,
    mtime=..., xattrs={})`, `Entry.dir(name)`, `Entry.symlink(name, target)`,
    `Entry.hardlink(name, target)`, `Entry.char(name, major, minor)`, `Entry.fifo(name)`,
    `Entry.whiteout(path)` (`.wh.NAME`), `Entry.opaque(dir)` (`dir/.wh..wh..opq`).
    `Layer.from_entries(entries, compression="gzip"|"zstd"|"none")`,
    `Layer.from_dir(path, compression=...)` (ownership, modes, mtimes, hardlinks, symlinks and
    device nodes as on disk), `Layer.from_tar(raw_tar_bytes, compression=...)`.
    A `Layer` has `.tar` (uncompressed), `.blob` (as pushed), `.diff_id`, `.digest`,
    `.media_type(fmt)`.
Images
    `ImageConfig(entrypoint, cmd, env, user, working_dir, stop_signal, labels)`.
    `Image(layers, config, os="linux", architecture="amd64", variant=None, fmt="oci"|"docker")`
    with `.config_blob`, `.config_digest` (the image ID), `.manifest`, `.manifest_digest`.
    `push_image(registry_or_client, "repo/name", "tag", image) -> Pushed` with `.reference`
    ("HOST/repo/name:tag"), `.digest_reference` ("HOST/repo/name@sha256:..."),
    `.manifest_digest`, `.config_digest`, `.layer_digests`.
    `push_index(registry, repo, tag, [image, ...], fmt="oci"|"docker") -> Pushed`: a
    multi-platform index (its `config_digest` is "", the per-platform images are pushed
    by digest).
Base root filesystems
    `busybox_static_rootfs(dir)`: Debian's static /bin/busybox plus applet symlinks.
    `busybox_dynamic_rootfs(dir)`: Debian's dynamic `busybox` .deb (fetched once with
    `apt-get download` into /var/cache/crib-test, or taken from apt's own cache), applets
    hardlinked so /bin/ls, /bin/sh, /bin/sleep, /bin/cat are real executables, the shared
    libraries it needs copied from the host (ldd), /etc/passwd and /etc/group with root,
    user `crib` (1000:1000) and group `cribgrp` (2000).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

from tests.support.registry import Registry, RegistryClient, sha256_digest

__all__ = [
    "CACHE_DIR",
    "Entry",
    "Image",
    "ImageConfig",
    "Layer",
    "Pushed",
    "busybox_dynamic_rootfs",
    "busybox_image",
    "busybox_static_rootfs",
    "digest_of_file",
    "is_char_device",
    "wait_until",
    "push_image",
    "push_index",
    "MT_OCI_MANIFEST",
    "MT_OCI_INDEX",
    "MT_DOCKER_MANIFEST",
    "MT_DOCKER_LIST",
]

Compression = Literal["gzip", "zstd", "none"]
Format = Literal["oci", "docker"]

# Media types from the OCI image spec (media-types.md) and Docker's manifest v2 schema 2.
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_LAYER_TYPES: dict[tuple[Format, Compression], str] = {
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
}

CACHE_DIR = Path(os.environ.get("CRIB_TEST_CACHE", "/var/cache/crib-test"))
FIXED_MTIME = 1_700_000_000


# --------------------------------------------------------------------------- tar entries
@dataclass
class Entry:
    """One tar entry of a layer (see module docstring for constructors)."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def file(cls, name: str, data: bytes | str, mode: int = 0o644, **kw: Any) -> Entry:
        return cls(name, tarfile.REGTYPE, data.encode() if isinstance(data, str) else data,
                   mode, **kw)

    @classmethod
    def dir(cls, name: str, mode: int = 0o755, **kw: Any) -> Entry:
        return cls(name, tarfile.DIRTYPE, b"", mode, **kw)

    @classmethod
    def symlink(cls, name: str, target: str, **kw: Any) -> Entry:
        return cls(name, tarfile.SYMTYPE, b"", 0o777, linkname=target, **kw)

    @classmethod
    def hardlink(cls, name: str, target: str, **kw: Any) -> Entry:
        return cls(name, tarfile.LNKTYPE, b"", 0o644, linkname=target, **kw)

    @classmethod
    def char(cls, name: str, major: int, minor: int, mode: int = 0o666, **kw: Any) -> Entry:
        return cls(name, tarfile.CHRTYPE, b"", mode, devmajor=major, devminor=minor, **kw)

    @classmethod
    def fifo(cls, name: str, mode: int = 0o644, **kw: Any) -> Entry:
        return cls(name, tarfile.FIFOTYPE, b"", mode, **kw)

    @classmethod
    def whiteout(cls, path: str) -> Entry:
        """Delete `path` of a lower layer (OCI layer.md "Whiteouts")."""
        head, _, base = path.rstrip("/").rpartition("/")
        return cls.file(f"{head}/.wh.{base}" if head else f".wh.{base}", b"")

    @classmethod
    def opaque(cls, directory: str) -> Entry:
        """Hide every lower-layer child of `directory` (OCI layer.md "Opaque Whiteout")."""
        return cls.file(f"{directory.rstrip('/')}/.wh..wh..opq", b"")

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.type
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.mtime = self.mtime
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        info.size = len(self.data) if self.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
        if self.xattrs:
            # PAX "SCHILY.xattr.<name>" records, as GNU tar and containerd write them.
            info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1")
                                for k, v in self.xattrs.items()}
        return info


def _compress(tar: bytes, compression: Compression, level: int | None = None) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=level or 6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=level or 3).compress(tar)
    if compression == "none":
        return tar
    raise ValueError(f"unknown compression {compression!r}")


# --------------------------------------------------------------------------- layers
@dataclass
class Layer:
    tar: bytes
    compression: Compression
    blob: bytes

    @classmethod
    def from_tar(cls, tar: bytes, compression: Compression = "gzip",
                 level: int | None = None) -> Layer:
        return cls(tar, compression, _compress(tar, compression, level))

    @classmethod
    def from_entries(cls, entries: list[Entry], compression: Compression = "gzip") -> Layer:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                info = entry.tarinfo()
                tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
        return cls.from_tar(buf.getvalue(), compression)

    @classmethod
    def from_dir(cls, root: Path, compression: Compression = "gzip",
                 level: int | None = None) -> Layer:
        """Tar a directory as an image layer (paths relative, sorted, no leading "./")."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            paths = sorted(p for p in root.rglob("*"))
            for path in paths:
                # tarfile remembers inodes, so a second name of one file becomes a hardlink.
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        return cls.from_tar(buf.getvalue(), compression, level)

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)

    def media_type(self, fmt: Format = "oci") -> str:
        return _LAYER_TYPES[(fmt, self.compression)]


# --------------------------------------------------------------------------- images
@dataclass
class ImageConfig:
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The `config` object of the OCI image config (config.md, "Properties")."""
        out: dict[str, Any] = {"Env": self.env}
        if self.entrypoint is not None:
            out["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            out["Cmd"] = self.cmd
        for key, value in (("User", self.user), ("WorkingDir", self.working_dir),
                           ("StopSignal", self.stop_signal)):
            if value:
                out[key] = value
        if self.labels:
            out["Labels"] = self.labels
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        return out


@dataclass
class Image:
    layers: list[Layer]
    config: ImageConfig = field(default_factory=ImageConfig)
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None
    fmt: Format = "oci"
    created: str = "2024-01-01T00:00:00Z"

    @property
    def config_blob(self) -> bytes:
        doc: dict[str, Any] = {
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": self.config.as_json(),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": self.created, "created_by": "crib tests"}
                        for _ in self.layers],
        }
        if self.variant:
            doc["variant"] = self.variant
        return json.dumps(doc, sort_keys=True).encode()

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config_blob)

    @property
    def manifest(self) -> bytes:
        config_mt = MT_OCI_CONFIG if self.fmt == "oci" else MT_DOCKER_CONFIG
        doc = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST if self.fmt == "oci" else MT_DOCKER_MANIFEST,
            "config": {"mediaType": config_mt, "digest": self.config_digest,
                       "size": len(self.config_blob)},
            "layers": [{"mediaType": layer.media_type(self.fmt), "digest": layer.digest,
                        "size": len(layer.blob)} for layer in self.layers],
        }
        return json.dumps(doc, indent=2).encode()

    @property
    def manifest_media_type(self) -> str:
        return MT_OCI_MANIFEST if self.fmt == "oci" else MT_DOCKER_MANIFEST

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    def platform(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass
class Pushed:
    host: str
    repo: str
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]

    @property
    def reference(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        return f"{self.host}/{self.repo}@{self.manifest_digest}"


def _client(target: Registry | RegistryClient) -> RegistryClient:
    return target.client() if isinstance(target, Registry) else target


def push_image(target: Registry | RegistryClient, repo: str, tag: str | None,
               image: Image) -> Pushed:
    """Push layers, config and manifest; `tag=None` pushes by digest only."""
    client = _client(target)
    for layer in image.layers:
        client.push_blob(repo, layer.blob)
    client.push_blob(repo, image.config_blob)
    digest = client.push_manifest(repo, tag or image.manifest_digest, image.manifest,
                                  image.manifest_media_type)
    return Pushed(client.host, repo, tag or "", digest, image.config_digest,
                  [layer.digest for layer in image.layers])


def push_index(target: Registry | RegistryClient, repo: str, tag: str, images: list[Image],
               fmt: Format = "oci") -> Pushed:
    """Push each image by digest, then an index (or Docker manifest list) naming them."""
    client = _client(target)
    manifests = []
    for image in images:
        push_image(client, repo, None, image)
        manifests.append({"mediaType": image.manifest_media_type,
                          "digest": image.manifest_digest, "size": len(image.manifest),
                          "platform": image.platform()})
    media_type = MT_OCI_INDEX if fmt == "oci" else MT_DOCKER_LIST
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "manifests": manifests}, indent=2).encode()
    digest = client.push_manifest(repo, tag, body, media_type)
    return Pushed(client.host, repo, tag, digest, "", [])


# --------------------------------------------------------------------------- busybox roots
def _base_dirs(root: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root",
              "var", "run", "home/crib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    os.chown(root / "home/crib", 1000, 1000)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "crib:x:1000:1000:crib:/home/crib:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (root / "etc/group").write_text(
        "root:x:0:\ncrib:x:1000:\ncribgrp:x:2000:crib\nnogroup:x:65534:\n")
    (root / "etc/hostname").write_text("crib\n")


def _applets(busybox: Path, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run([str(busybox), "--list-full"], check=True, capture_output=True,
                         text=True, env=env).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def busybox_static_rootfs(root: Path) -> Path:
    """Debian's busybox-static with one symlink per applet (sh runs applets in-process)."""
    _base_dirs(root)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in _applets(Path("/bin/busybox")):
        target = root / applet
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to("/bin/busybox")
    return root


def _busybox_deb() -> Path:
    """The dynamic busybox .deb, fetched once into CACHE_DIR."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE_DIR.glob("busybox_*.deb"))
    if found:
        return found[-1]
    apt_cached = sorted(Path("/var/cache/apt/archives").glob("busybox_*.deb"))
    if apt_cached:
        shutil.copy2(apt_cached[-1], CACHE_DIR / apt_cached[-1].name)
    else:
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
            subprocess.run(["apt-get", "download", "busybox"], cwd=tmp, check=True,
                           capture_output=True, timeout=120)
            for deb in Path(tmp).glob("busybox_*.deb"):
                os.replace(deb, CACHE_DIR / deb.name)
    found = sorted(CACHE_DIR.glob("busybox_*.deb"))
    if not found:
        raise RuntimeError("could not fetch Debian's busybox .deb")
    return found[-1]


def _busybox_extracted() -> Path:
    deb = _busybox_deb()
    out = CACHE_DIR / (deb.stem + ".extracted")
    if not (out / "bin/busybox").exists():
        tmp = Path(tempfile.mkdtemp(dir=CACHE_DIR))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def _shared_libraries(binary: Path) -> list[Path]:
    """Host paths of the libraries `binary` loads, and its ELF interpreter (from ldd)."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True,
                         text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            idx = parts.index("=>")
            if idx + 1 < len(parts) and parts[idx + 1].startswith("/"):
                libs.append(Path(parts[idx + 1]))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))
    return libs


def busybox_dynamic_rootfs(root: Path) -> Path:
    """Debian's dynamic busybox with hardlinked applets and the host's libc (see module)."""
    _base_dirs(root)
    extracted = _busybox_extracted()
    busybox = root / "bin/busybox"
    shutil.copy2(extracted / "bin/busybox", busybox)
    busybox.chmod(0o755)
    for lib in _shared_libraries(busybox):
        dest = root / str(lib).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dest)
    for applet in _applets(busybox):
        target = root / applet
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(busybox, target)
    return root


def busybox_image(fmt: Format = "oci", compression: Compression = "gzip",
                  cmd: list[str] | None = None) -> Image:
    """A one-layer image of `busybox_dynamic_rootfs` with Cmd ["/bin/sh"]."""
    with tempfile.TemporaryDirectory(prefix="crib-bb-") as tmp:
        root = busybox_dynamic_rootfs(Path(tmp))
        layer = Layer.from_dir(root, compression)
    return Image([layer], ImageConfig(cmd=cmd or ["/bin/sh"]), fmt=fmt)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate()` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def digest_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def is_char_device(path: Path) -> bool:
    return stat.S_ISCHR(os.lstat(path).st_mode)
