"""Debian's containerd as a benchmark peer: a private instance with its CRI plugin on.

    with PeerContainerd() as ctd:            # or PeerContainerd(registries=["127.0.0.1:5000"])
        stub = runtime_stub(ctd.cri_socket)  # bench.harness
        ...

Everything lives under one short directory in /tmp (root, state, sockets, CNI config, runc
roots, netns pins), so it never touches /var/lib/containerd or /run/containerd's own
instance. The CRI plugin runs with:

- snapshotter overlayfs, cgroupfs (`SystemdCgroup = false`: this machine has no systemd);
- runc (`/usr/sbin/runc`) as the default runtime handler and crun (`/usr/bin/crun`) as the
  second handler `crun`, each with a private `Root` so cleanup can find its containers;
- CNI binaries from `/usr/lib/cni` and its own conf dir with one bridge network on
  `cribctd0`, 10.214.0.0/24 (host-local IPAM with a private data dir, no masquerade, so no
  iptables rules are left behind);
- registry hosts from `config_path`: every `registries` entry (and any added later with
  `allow_registry`) gets a `hosts.toml` for plain HTTP; a host without one on 127.0.0.1:*
  or localhost is plain HTTP anyway (containerd 1.6's `ConfigureHosts` default for
  loopback, checked: a pull of 127.0.0.1:5999/x dials `http://`);
- netns pins under its state dir (`netns_mounts_under_state_dir`).

Stop is by PID: SIGTERM then SIGKILL to containerd; then the containers it left (containerd
shims outlive their daemon by design) are killed and deleted through each runtime's private
root, the shims are killed by PID, mounts under the directory are lazily unmounted, the
bridge is deleted and the directory removed.

Run directly (`python -m bench.peer_containerd`) to start one, print its socket and wait
for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

__all__ = ["CONTAINERD", "PeerContainerd", "BRIDGE", "SUBNET"]

CONTAINERD = "/usr/bin/containerd"
RUNC = "/usr/sbin/runc"
CRUN = "/usr/bin/crun"
CNI_BIN_DIR = "/usr/lib/cni"
BRIDGE = "cribctd0"
SUBNET = "10.214.0.0/24"
NETWORK_NAME = "cribctd"
# A CRI RunPodSandbox needs a pause image; benches that run pods pass one from their own
# local registry. This default is only what containerd 1.6 would use anyway.
DEFAULT_SANDBOX_IMAGE = "registry.k8s.io/pause:3.6"


def _toml_str(value: str | Path) -> str:
    # TOML basic strings: backslash and quote are the only characters our paths could hold
    # that need escaping.
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class PeerContainerd:
    """A private containerd with the CRI plugin; a context manager (start/stop by PID)."""

    def __init__(
        self,
        *,
        registries: Iterable[str] = (),
        sandbox_image: str = DEFAULT_SANDBOX_IMAGE,
        start_timeout: float = 30.0,
        keep_dir: bool = False,
    ) -> None:
        self.registries = list(registries)
        self.sandbox_image = sandbox_image
        self.start_timeout = start_timeout
        self.keep_dir = keep_dir
        # Short path: the CRI socket and the shim sockets must stay under 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="cribctd-", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ paths
    @property
    def cri_socket(self) -> Path:
        """The CRI (and containerd API) socket; CRI clients dial `unix://<this>`."""
        return self.dir / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def config_path(self) -> Path:
        return self.dir / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "cni"

    @property
    def hosts_dir(self) -> Path:
        return self.dir / "certs.d"

    @property
    def log_path(self) -> Path:
        return self.dir / "containerd.log"

    def runtime_root(self, handler: str) -> Path:
        return self.dir / "rt" / handler

    # ------------------------------------------------------------------ config
    def config_text(self) -> str:
        """containerd 1.6 config (version 2) for this instance."""
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        rts = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
        lines = [
            "version = 2",
            f"root = {_toml_str(self.root)}",
            f"state = {_toml_str(self.state)}",
            # Shims and snapshotters we do not use would only log errors.
            'disabled_plugins = ["io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
            ' "io.containerd.snapshotter.v1.devmapper"]',
            "",
            "[grpc]",
            f"  address = {_toml_str(self.cri_socket)}",
            "[ttrpc]",
            f"  address = {_toml_str(self.dir / 'containerd.sock.ttrpc')}",
            "[debug]",
            '  level = "info"',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_toml_str(self.dir / 'opt')}",
            cri,
            f"  sandbox_image = {_toml_str(self.sandbox_image)}",
            # Port 0: never collide with another streaming server on the node.
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            "  netns_mounts_under_state_dir = true",
            f"{cri[:-1]}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"{rts}.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"{rts}.runc.options]",
            f"  BinaryName = {_toml_str(RUNC)}",
            f"  Root = {_toml_str(self.runtime_root('runc'))}",
            "  SystemdCgroup = false",
            f"{rts}.crun]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"{rts}.crun.options]",
            f"  BinaryName = {_toml_str(CRUN)}",
            f"  Root = {_toml_str(self.runtime_root('crun'))}",
            "  SystemdCgroup = false",
            f"{cri[:-1]}.cni]",
            f"  bin_dir = {_toml_str(CNI_BIN_DIR)}",
            f"  conf_dir = {_toml_str(self.cni_conf_dir)}",
            "  max_conf_num = 1",
            f"{cri[:-1]}.registry]",
            f"  config_path = {_toml_str(self.hosts_dir)}",
            "",
        ]
        return "\n".join(lines)

    def cni_config_text(self) -> str:
        """One bridge network of our own (CNI spec conflist, version 0.4.0)."""
        import json

        conf = {
            "cniVersion": "0.4.0",
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # No masquerade: it would add iptables rules to clean up, and bench
                    # traffic never leaves the node.
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": SUBNET}]],
                        "dataDir": str(self.dir / "ipam"),
                    },
                },
            ],
        }
        return json.dumps(conf, indent=2)

    def allow_registry(self, host: str) -> None:
        """Reach `host` (e.g. "127.0.0.1:5000") over plain HTTP; takes effect on the next pull.

        containerd reads `config_path/<host>/hosts.toml` on every pull (containerd
        docs/hosts.md), so this works on a running instance too.
        """
        d = self.hosts_dir / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n[host."http://{host}"]\n'
            '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n'
        )

    def _write_files(self) -> None:
        for d in (self.root, self.state, self.cni_conf_dir, self.hosts_dir,
                  self.runtime_root("runc"), self.runtime_root("crun")):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        (self.cni_conf_dir / "10-cribctd.conflist").write_text(self.cni_config_text())
        for host in self.registries:
            self.allow_registry(host)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PeerContainerd:
        """Start containerd and wait until its CRI socket answers `Version`."""
        self._write_files()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config_path)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.cri_socket.exists() and _connects(self.cri_socket) and self._cri_answers():
                return
            time.sleep(0.1)
        raise TimeoutError(f"containerd's CRI did not answer within {self.start_timeout}s:\n"
                           f"{self.log_tail()}")

    def _cri_answers(self) -> bool:
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        with grpc.insecure_channel(f"unix://{self.cri_socket}") as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                stub.Version(api_pb2.VersionRequest(), timeout=2)
            except grpc.RpcError:
                return False  # the CRI plugin registers a moment after the socket opens
        return True

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop containerd by PID, remove what it left, and delete the directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._remove_containers()
        self._kill_shims()
        self._unmount_all()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_containers(self) -> None:
        # Shims keep containers running after containerd exits; delete them by their
        # runtime's state root, which only this instance uses.
        for handler, binary in (("runc", RUNC), ("crun", CRUN)):
            root = self.runtime_root(handler)
            if not root.is_dir():
                continue
            for entry in root.rglob("state.json"):
                cid = entry.parent.name
                state_root = entry.parent.parent
                subprocess.run([binary, "--root", str(state_root), "delete", "--force", cid],
                               capture_output=True, check=False, timeout=30)
            for entry in root.iterdir():  # crun keeps a status file instead of state.json
                if entry.is_dir():
                    for sub in entry.iterdir():
                        if sub.is_dir():
                            subprocess.run(
                                [binary, "--root", str(entry), "delete", "--force", sub.name],
                                capture_output=True, check=False, timeout=30,
                            )

    def _kill_shims(self) -> None:
        # A shim's argv carries `-address <our socket>`: that is how we know it is ours.
        needle = str(self.cri_socket).encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and needle in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_dir.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        prefix = str(self.dir) + "/"
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for target in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)

    def __enter__(self) -> PeerContainerd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    with PeerContainerd() as peer:
        print(f"containerd CRI on unix://{peer.cri_socket} (dir {peer.dir}); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
