"""Streaming for CRI Exec, Attach and PortForward: one-time URLs served over SPDY/3.1 or
WebSocket upgrades (the kubelet's `pkg/kubelet/cri/streaming` contract).

- `server.StreamServer`: the TCP listener (`stream_address`/`stream_port`, loopback and an
  ephemeral port by default), the one-time token cache (`stream_url_ttl`), negotiation.
- `targets.StreamTargets`: what runtimed provides (containers, sandboxes, exit codes);
  `runtimed.stream_targets.RuntimeTargets` implements it over runtimed's records.
- `spdy`, `websocket`: the two wire protocols; `session`: exec/attach stdio over either.
- `exec` (runtime `exec`, pipes or a pty), `attach` (conmon's attach socket and control
  FIFO), `portforward` (TCP from a thread that joined the pod's netns).

Subprotocols: exec/attach over SPDY `v4.channel.k8s.io` .. `channel.k8s.io`, over WebSocket
`v5.channel.k8s.io` .. `channel.k8s.io` and the `*base64.channel.k8s.io` variants;
port-forward over SPDY `portforward.k8s.io`, over WebSocket `v4.channel.k8s.io` (ports in
the query) and `SPDY/3.1+portforward.k8s.io` (SPDY tunnelled in WebSocket messages).
"""

from .server import AttachSpec, ExecSpec, PortForwardSpec, StreamServer
from .targets import ContainerTarget, SandboxTarget, StreamTargets

__all__ = ["AttachSpec", "ContainerTarget", "ExecSpec", "PortForwardSpec", "SandboxTarget",
           "StreamServer", "StreamTargets"]
