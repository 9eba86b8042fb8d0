"""A grpc-go client for the gateway, built offline from Debian's packages (main.go).

The kubelet, critest and crictl all speak grpc-go; `GoClient` runs main.go's program on
one connection to the gateway and exchanges raw message bytes with it, which the tests
build and check with the independent `cri_api` stubs. `build()` compiles the program
with Debian's golang-go and golang-google-grpc-dev (GOPATH mode, no module proxy) and
caches the binary by the hash of its source and of the Go toolchain.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests.support.images import CACHE_DIR

__all__ = ["GRPC_SOURCES", "GoClient", "GoResult", "build"]

SOURCE = Path(__file__).with_name("main.go")
# Debian's golang-google-grpc-dev and its dependencies install their sources here.
GOPATH = Path("/usr/share/gocode")
GRPC_SOURCES = GOPATH / "src/google.golang.org/grpc"


def build() -> Path | str:
    """The client's binary, built if needed; or why it cannot be (a skip reason)."""
    go = shutil.which("go")
    if go is None:
        return "no Go toolchain (Debian's golang-go; scripts/deps.sh test installs it)"
    if not (GRPC_SOURCES / "version.go").is_file():
        return f"no grpc-go sources at {GRPC_SOURCES} (Debian's golang-google-grpc-dev)"
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode()
                         + (GRPC_SOURCES / "version.go").read_bytes()).hexdigest()[:16]
    cache = CACHE_DIR / "grpcgo"
    binary = cache / f"crib-grpcgo-{key}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
           "GOPROXY": "off", "GOCACHE": str(cache / "gocache"), "CGO_ENABLED": "0"}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / "crib-grpcgo"
        done = subprocess.run([go, "build", "-o", str(out), str(SOURCE)], env=env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            # The packages are there: a failure is ours to see, not a reason to skip.
            raise RuntimeError(f"go build failed:\n{done.stderr}")
        out.rename(binary)  # atomic: a concurrent build's copy is as good
    return binary


class GoResult:
    """One call's outcome as grpc-go saw it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.code: int = data.get("code", -1)
        self.code_name: str = data.get("code_name", "")
        self.message: str = data.get("message", "")
        self.dials: int = data.get("dials", 0)
        self.elapsed_ms: float = data.get("elapsed_ms", 0.0)
        self.frames: dict[str, int] = data.get("frames") or {}
        self.error: str = data.get("error", "")
        self.response = bytes.fromhex(data.get("response", ""))
        self.messages = [bytes.fromhex(m) for m in data.get("messages") or []]

    def __repr__(self) -> str:
        return (f"GoResult({self.code_name} {self.message!r}, {len(self.response)} bytes, "
                f"{len(self.messages)} messages, {self.elapsed_ms} ms, error={self.error!r})")


class GoClient:
    """main.go's program on one grpc-go connection; calls run concurrently in it."""

    def __init__(self, binary: Path, socket: Path, keepalive_ms: int = 0,
                 max_send_mib: int = 16) -> None:
        argv = [str(binary), f"--socket={socket}", f"--max-send-mib={max_send_mib}"]
        if keepalive_ms:
            argv.append(f"--keepalive-ms={keepalive_ms}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._ids = itertools.count()
        self._results: dict[str, GoResult] = {}
        self._done = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            data = json.loads(line)
            with self._done:
                self._results[data.get("id", "")] = GoResult(data)
                self._done.notify_all()
        with self._done:
            self._done.notify_all()

    def _send(self, request: dict[str, Any]) -> str:
        call_id = f"c{next(self._ids)}"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": call_id, **request}) + "\n")
        self.proc.stdin.flush()
        return call_id

    def start(self, method: str, request: bytes = b"", timeout: float = 30.0,
              stream: bool = False, max_messages: int = 0, wait_for_ready: bool = False,
              hold: float = 0.0) -> str:
        """Begin a call (method as "/runtime.v1.RuntimeService/Version"); its id.

        `stream` reads the answer as a stream of messages (a unary method's one message
        too); `hold` seconds pass before the first read, and grpc-go returns no stream
        credit meanwhile."""
        return self._send({"method": method, "request": request.hex(),
                           "timeout_ms": int(timeout * 1000), "stream": stream,
                           "max_messages": max_messages, "wait_for_ready": wait_for_ready,
                           "hold_ms": int(hold * 1000)})

    def cancel(self, call_id: str) -> None:
        self.wait(self._send({"cancel": call_id}))

    def wait(self, call_id: str, timeout: float = 60.0) -> GoResult:
        with self._done:
            if not self._done.wait_for(
                    lambda: call_id in self._results or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"no result for {call_id} in {timeout} s")
            if call_id not in self._results:
                assert self.proc.stderr is not None
                raise RuntimeError(f"the grpc-go client died: {self.proc.stderr.read()}")
            return self._results.pop(call_id)

    def call(self, method: str, request: bytes = b"", timeout: float = 30.0,
             wait_for_ready: bool = False) -> GoResult:
        """A unary call, waited for."""
        return self.wait(self.start(method, request, timeout, wait_for_ready=wait_for_ready),
                         timeout + 30)

    def stats(self) -> GoResult:
        """Dials so far, and HTTP/2 frames sent and received by type."""
        return self.wait(self._send({"stats": True}))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
