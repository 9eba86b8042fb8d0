"""oom_score_adj as the kubelet asks for it, within what this daemon may grant.

The kubelet sets a score per QoS class (-997 Guaranteed, 1000 BestEffort, between for
Burstable, -998 for node-critical pods). The container's process inherits the runtime's
score and runc writes the asked one; lowering a score below what the process had needs
CAP_SYS_RESOURCE (proc(5), /proc/pid/oom_score_adj). A daemon with the capability applies
every value as given; one without it (a rootless or restricted daemon; this test machine)
raises a value below its own score to that score instead of failing every create, as
containerd's restrict_oom_score_adj does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OOM_SCORE_ADJ_MAX", "OOM_SCORE_ADJ_MIN", "SANDBOX_OOM_SCORE_ADJ", "OomPolicy",
           "detect_oom_policy", "oom_policy"]

# include/uapi/linux/oom.h
OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000
# The kubelet's score for a pod's infra (pause) container: PodInfraOOMAdj in
# kubernetes pkg/kubelet/qos/policy.go. The sandbox's init (catatonit or pause) gets it.
SANDBOX_OOM_SCORE_ADJ = -998
# include/uapi/linux/capability.h
CAP_SYS_RESOURCE = 24


@dataclass(frozen=True)
class OomPolicy:
    """What the daemon may grant, found once at start."""

    cap_sys_resource: bool
    own_score: int

    def apply(self, requested: int) -> int:
        """The score a container gets for `requested`: as given (bounded to the kernel's
        range); without CAP_SYS_RESOURCE a value below the daemon's own is raised to it."""
        score = min(max(int(requested), OOM_SCORE_ADJ_MIN), OOM_SCORE_ADJ_MAX)
        if not self.cap_sys_resource and score < self.own_score:
            return self.own_score
        return score

    def describe(self) -> dict[str, object]:
        """For `crib status`: whether scores are restricted, and to what."""
        return {"cap_sys_resource": self.cap_sys_resource, "own_score": self.own_score,
                "restricted": not self.cap_sys_resource}


def detect_oom_policy(status: Path = Path("/proc/self/status"),
                      score: Path = Path("/proc/self/oom_score_adj")) -> OomPolicy:
    """CapEff bit 24 of /proc/self/status, and the daemon's own oom_score_adj. An
    unreadable status is taken as no capability (the safe side: values are raised, not
    refused)."""
    cap = False
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                cap = bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
                break
    except (OSError, ValueError, IndexError):
        cap = False
    try:
        own = int(score.read_text().strip())
    except (OSError, ValueError):
        own = 0
    return OomPolicy(cap_sys_resource=cap, own_score=own)


@functools.cache
def oom_policy() -> OomPolicy:
    """This process's policy, detected on first use and kept (the capability set and
    the daemon's own score do not change while it runs)."""
    return detect_oom_policy()
