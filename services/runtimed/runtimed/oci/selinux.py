"""SELinux labels of a container, where the host enforces SELinux.

The container's SELinux options (falling back, field by field, to the pod's) become the
OCI process label (`process.selinuxLabel`) and mount label (`linux.mountLabel`), as in
containerd and CRI-O. Fields left empty take the container-selinux policy's defaults:
`system_u:system_r:container_t` for processes (`spc_t` for privileged containers, as
CRI-O), `system_u:object_r:container_file_t` for files, and a level of `s0` with two
MCS categories derived from the pod id, so the containers of one pod share a level and
a restarted runtimed derives the same one (unlike CRI-O's random pick, two pods may by
chance share a pair: 1 in about 500,000).

Where SELinux is not enabled (no `/sys/fs/selinux/enforce`) the options are ignored:
there is nothing to label with, and the runtime would fail on a label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from crib_common.cri.runtime.v1 import SeLinuxOption

__all__ = ["SELINUXFS", "SELinux", "SELinuxLabels", "mcs_level"]

SELINUXFS = Path("/sys/fs/selinux")
# container-selinux's MCS range: categories c0..c1023.
MCS_CATEGORIES = 1024


@dataclass(frozen=True)
class SELinuxLabels:
    process: str
    mount: str


def mcs_level(pod_id: str) -> str:
    """`s0:cA,cB` with A < B, a pure function of the pod id."""
    digest = int.from_bytes(hashlib.sha256(pod_id.encode()).digest()[:8], "big")
    a = digest % MCS_CATEGORIES
    b = (digest // MCS_CATEGORIES) % (MCS_CATEGORIES - 1)
    b = b + 1 if b >= a else b  # b != a
    lo, hi = sorted((a, b))
    return f"s0:c{lo},c{hi}"


class SELinux:
    """The host's SELinux, read from selinuxfs (a fake directory in tests)."""

    def __init__(self, selinuxfs: Path = SELINUXFS) -> None:
        self.selinuxfs = selinuxfs

    def enabled(self) -> bool:
        return (self.selinuxfs / "enforce").exists()

    def labels(self, container: SeLinuxOption | None, pod: SeLinuxOption | None,
               pod_id: str, privileged: bool = False) -> SELinuxLabels | None:
        """The labels for a container, or None where SELinux is off."""
        if not self.enabled():
            return None

        def pick(field: str, default: str) -> str:
            for opt in (container, pod):
                value = str(getattr(opt, field, "") or "") if opt is not None else ""
                if value:
                    return value
            return default

        user = pick("user", "system_u")
        level = pick("level", mcs_level(pod_id))
        ptype = pick("type", "spc_t" if privileged else "container_t")
        process = f"{user}:{pick('role', 'system_r')}:{ptype}:{level}"
        return SELinuxLabels(process=process,
                             mount=f"{user}:object_r:container_file_t:{level}")
