"""Processes inside pod namespaces for the netd tests (nsenter, no `ip netns`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

from crib_common.models.netd import PodNetworkCreate, PortMapping

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(b"crib:" + peer[0].encode())
    c.close()
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    sys.stdout.write(c.recv(100).decode())
"""


def pod_request(port_mappings: list[PortMapping] | None = None) -> PodNetworkCreate:
    pod_id = uuid.uuid4().hex
    return PodNetworkCreate(pod_id=pod_id, pod_name=f"p-{pod_id[:8]}", pod_namespace="crib-test",
                            pod_uid=str(uuid.uuid4()), port_mappings=port_mappings or [])


def start_server(netns: str | Path, port: int) -> subprocess.Popen[str]:
    """A TCP server inside the namespace answering "crib:<peer address>"; wait for it."""
    proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", SERVER,
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening" not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def connect_from(netns: str | Path, host: str, port: int) -> str:
    """Connect from inside a namespace; returns what the server said."""
    out = subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", CLIENT, host,
                          str(port)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


def connect_host(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as conn:
        return conn.recv(100).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
