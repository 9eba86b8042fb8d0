"""The error channel's payload: metav1.Status JSON for v4+ protocols, text before.

k8s.io/apimachinery `pkg/util/remotecommand/constants.go` (NonZeroExitCodeReason,
ExitCodeCauseType) and kubelet's `remotecommand/httpstream.go` (`v4WriteStatusFunc`): the
client reads the whole error stream; empty or Success means exit 0, NonZeroExitCode carries
the code as the message of the cause with reason "ExitCode".
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["exit_status", "failure_status", "status_bytes", "success_status"]

NON_ZERO_EXIT_CODE_REASON = "NonZeroExitCode"
EXIT_CODE_CAUSE_TYPE = "ExitCode"


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(code: int) -> dict[str, Any]:
    """Status for a process that ended with `code` (Success for 0)."""
    if code == 0:
        return success_status()
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": NON_ZERO_EXIT_CODE_REASON,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE_TYPE, "message": str(code)}]},
    }


def failure_status(message: str, code: int = 500) -> dict[str, Any]:
    """An internal error (apierrors.NewInternalError shape)."""
    return {"metadata": {}, "status": "Failure", "message": message,
            "reason": "InternalError", "details": {"causes": [{"message": message}]},
            "code": code}


def status_bytes(status: dict[str, Any], version: int) -> bytes:
    """What goes on the error channel for protocol `version` (1..5).

    v4+ send the Status JSON even on success; older versions send the message text only on
    failure (kubelet's `v1WriteStatusFunc`).
    """
    if version >= 4:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "error")).encode()
