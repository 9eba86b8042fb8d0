"""Per-pod files bind-mounted into every container: hostname, resolv.conf, hosts, shm."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from crib_common.cri.runtime.v1 import DnsConfig
from crib_common.errors import Internal, InvalidArgument

__all__ = ["write_pod_files", "mount_shm"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# 64 MiB as docker and containerd give /dev/shm.
SHM_SIZE = 64 * 1024 * 1024


def _atomic_write(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def resolv_conf(dns: DnsConfig | None) -> str:
    """resolv.conf(5) from the kubelet's DNSConfig; the host's file when it gives none."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        try:
            return Path("/etc/resolv.conf").read_text()
        except OSError:
            return ""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    for server in dns.servers:
        if any(c.isspace() for c in server) or not server:
            raise InvalidArgument(f"bad DNS server {server!r}")
        lines.append(f"nameserver {server}")
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_file(hostname: str, ips: list[str], host_network: bool) -> str:
    if host_network:
        try:
            return Path("/etc/hosts").read_text()
        except OSError:
            pass
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    for ip in ips:
        if hostname:
            lines.append(f"{ip}\t{hostname}")
    return "\n".join(lines) + "\n"


def write_pod_files(pod_dir: Path, hostname: str, dns: DnsConfig | None, ips: list[str],
                    host_network: bool, owner: tuple[int, int] | None = None) -> None:
    """The pod's hostname, resolv.conf and hosts. `owner`: the host uid and gid of a pod
    user namespace's root, whose containers then see them as root's (as the kubelet
    chowns its own etc-hosts) instead of the overflow ID's."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(pod_dir / "hostname", (hostname or os.uname().nodename) + "\n", owner)
    _atomic_write(pod_dir / "resolv.conf", resolv_conf(dns), owner)
    _atomic_write(pod_dir / "hosts", hosts_file(hostname, ips, host_network), owner)


def mount_shm(target: Path) -> None:
    """A private tmpfs for the pod's /dev/shm (shared by its containers' IPC namespace)."""
    target.mkdir(parents=True, exist_ok=True)
    opts = f"mode=1777,size={SHM_SIZE}".encode()
    rc = _libc.mount(b"shm", str(target).encode(), b"tmpfs",
                     ctypes.c_ulong(0x2 | 0x4 | 0x8), opts)  # nosuid, nodev, noexec
    if rc != 0:
        err = ctypes.get_errno()
        raise Internal(f"mounting pod shm at {target}: {os.strerror(err)}")
