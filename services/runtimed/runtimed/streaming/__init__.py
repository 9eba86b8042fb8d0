"""Streaming for CRI Exec, Attach and PortForward: one-time URLs served over SPDY/3.1 or
WebSocket upgrades (the kubelet's `pkg/kubelet/cri/streaming` contract).

- `server.StreamServer`: the TCP listener, the token cache, protocol negotiation.
- `targets.StreamTargets`: what runtimed provides (containers, sandboxes, exit codes).
- `spdy`, `websocket`: the two wire protocols; `session`: stdio over either.
- `exec`, `attach`, `portforward`: what each kind of session does.
"""

from .server import AttachSpec, ExecSpec, PortForwardSpec, StreamServer
from .targets import ContainerTarget, SandboxTarget, StreamTargets

__all__ = ["AttachSpec", "ContainerTarget", "ExecSpec", "PortForwardSpec", "SandboxTarget",
           "StreamServer", "StreamTargets"]
