"""The docker-compose stack under podman for tests: install, base image, build, up, down.

API
---
`ensure_podman()` installs podman and mmdebstrap from Debian (apt) when missing, moves the
CNI conflist podman's package drops into /etc/cni/net.d out of netd's directory (as
deploy/podman/containers.conf tells a podman host to), and returns `PodmanTools` (the
podman-compose binary and what /etc/cni/net.d held before and after). Raises `Unusable`
with the reason when podman cannot run here (the test skips with it).

`ComposeStack(workdir, tools)`: one compose project on this machine, everything it
creates named for the project (`crib-compose-test`) and kept under `workdir`:
    `.env()` the environment podman and podman-compose run with: CONTAINERS_CONF is
    deploy/podman/containers.conf with the test's own tmp, events, CNI and ulimit values;
    CONTAINERS_STORAGE_CONF puts images and containers under `workdir/storage`;
    CRIB_HOST_ROOT, CRIB_IMAGE and CRIB_BASE_IMAGE point the compose file at them.
    `.base_image()` builds a minimal Debian 12 root with mmdebstrap (the host's extra CA
    certificates inside, update-ca-certificates run) and imports it.
    `.build()`, `.share_mounts()`, `.up()`, `.down()`, `.podman(*args)`, `.compose(*args)`.
    `.teardown()` leaves the host as it was and returns what it could not remove.

Caches, all under /var/cache/crib-compose (project-specific, safe to delete): the
podman-compose venv, and the mmdebstrap tarball keyed by its options and the CA
certificates, rebuilt after a week (17-40 s and the Debian mirror saved per run). Built
images are not kept: the image build takes 20-40 s here, of which a kept layer cache would
save only the apt step (crib's sources change every commit, so pip runs again), and it
would leave ~600 MB of podman storage, with its overlay mounts, on every machine the suite
ran on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.stack import rmdir_tree

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/crib-compose")
PROJECT = "crib-compose-test"
IMAGE = f"localhost/{PROJECT}/crib:latest"
BASE_IMAGE = f"localhost/{PROJECT}/debian:12-slim"
# netd's bridge, subnet and runtimed's cgroup parent for this stack: no other test or stack
# uses them (tests/support/stack.py takes cribtN and 10.213.N.0/24).
BRIDGE = "cribk0"
SUBNET = "10.217.0.0/24"
CGROUP_PARENT = f"/{PROJECT}"
CA_DIR = Path("/usr/local/share/ca-certificates")
# A cached base older than this is made again (Debian's point releases and security fixes).
BASE_MAX_AGE = 7 * 24 * 3600.0
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# podman-compose from Debian 12 (1.0.3) adds a network beside network_mode: host.
MIN_PODMAN_COMPOSE = (1, 6)
# Rootful podman lowers its own RLIMIT_NPROC hard limit to this before it starts a container
# (seen with strace on podman 4.3), so a container cannot be given more.
PODMAN_NPROC = 32768

__all__ = ["ComposeStack", "PodmanTools", "Unusable", "ensure_podman"]


class Unusable(RuntimeError):
    """podman cannot run on this machine; the message says why."""


@dataclass
class PodmanTools:
    compose: Path
    # File names in /etc/cni/net.d before podman was installed, and after our move.
    cni_before: list[str]
    cni_after: list[str]


def _run(argv: list[str], timeout: float = 300, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _cni_files() -> list[str]:
    net_d = Path("/etc/cni/net.d")
    return sorted(p.name for p in net_d.iterdir()) if net_d.is_dir() else []


def ensure_podman() -> PodmanTools:
    """podman + mmdebstrap (apt), podman-compose >= 1.6 (a venv of its own)."""
    if os.geteuid() != 0:
        raise Unusable("needs root (rootful podman, mounts, cgroups)")
    cni_before = _cni_files()
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise Unusable(f"{' '.join(missing)} missing and no apt-get to install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], timeout=300, env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
             timeout=600, env=env)
    # The package's own network (87-podman-bridge.conflist, 10.88.0.0/16) would be netd's
    # pod network under `make up`: podman's networks live in network_config_dir instead.
    podman_cni = Path("/etc/containers/cni.d")
    for conflist in Path("/etc/cni/net.d").glob("87-podman*.conflist"):
        podman_cni.mkdir(parents=True, exist_ok=True)
        shutil.move(str(conflist), podman_cni / conflist.name)
    venv = CACHE / "venv"
    compose = venv / "bin/podman-compose"
    if not _podman_compose_ok(compose):
        CACHE.mkdir(parents=True, exist_ok=True)
        if not (venv / "bin/pip").exists():
            _run(["python3", "-m", "venv", str(venv)])
        _run([str(venv / "bin/pip"), "install", "-q",
              "podman-compose>=" + ".".join(map(str, MIN_PODMAN_COMPOSE))])
        if not _podman_compose_ok(compose):
            raise RuntimeError("podman-compose >= 1.6 did not install")
    return PodmanTools(compose=compose, cni_before=[n for n in cni_before
                                                    if not n.startswith("87-podman")],
                       cni_after=_cni_files())


def _podman_compose_ok(compose: Path) -> bool:
    if not compose.exists():
        return False
    out = _run([str(compose), "--version"], check=False, timeout=60).stdout
    match = re.search(r"podman-compose version (\d+)\.(\d+)", out)
    return match is not None and (int(match[1]), int(match[2])) >= MIN_PODMAN_COMPOSE


def _toml(data: dict[str, dict[str, Any]]) -> str:
    """containers.conf is flat tables of strings, integers and lists of strings."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    out = []
    for table, keys in data.items():
        out.append(f"[{table}]")
        out += [f"{k} = {value(v)}" for k, v in keys.items()]
    return "\n".join(out) + "\n"


@dataclass
class ComposeStack:
    workdir: Path
    tools: PodmanTools
    # Directories scripts/share-mounts.sh made mount points (undone at teardown).
    shared: list[str] = field(default_factory=list)
    # What took how long, in seconds (printed by the test).
    timings: dict[str, float] = field(default_factory=dict)
    # Host paths podman makes on its own that were not there before (removed at teardown):
    # its cgroupfs parent in every controller, and its blob-info cache.
    podman_made: list[Path] = field(default_factory=lambda: [
        p for p in _podman_host_paths() if not p.exists()])

    @property
    def host(self) -> Path:
        """CRIB_HOST_ROOT: the compose file's /run/crib is host/run/crib, and so on."""
        return self.workdir / "host"

    @property
    def cri_socket(self) -> Path:
        return self.host / "run/crib/cri.sock"

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def logs(self, tail: int = 30) -> str:
        """The last lines each daemon's container wrote, for a failure's message."""
        parts = []
        for service in ("netd", "imaged", "runtimed", "gateway"):
            proc = self.podman("logs", "--tail", str(tail), self.container(service),
                               check=False, timeout=30)
            parts.append(f"--- {service} ---\n{proc.stdout}{proc.stderr}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ configuration
    def write_config(self) -> None:
        conf = tomllib.loads((ROOT / "deploy/podman/containers.conf").read_text())
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], PODMAN_NPROC)
        conf["containers"]["default_ulimits"] = [f"nofile={nofile}:{nofile}",
                                                 f"nproc={nproc}:{nproc}"]
        conf["engine"]["tmp_dir"] = str(self.workdir / "libpod-tmp")
        conf["engine"]["events_logfile_path"] = str(self.workdir / "events.log")
        # No podman network at all: the stack is network_mode: host, builds --network=host.
        conf["network"]["network_config_dir"] = str(self.workdir / "cni")
        (self.workdir / "cni").mkdir(parents=True, exist_ok=True)
        (self.workdir / "containers.conf").write_text(_toml(conf))
        (self.workdir / "storage.conf").write_text(_toml({"storage": {
            "driver": "overlay", "graphroot": str(self.workdir / "storage"),
            "runroot": str(self.workdir / "storage-run")}}))
        crib = self.host / "etc/crib"
        crib.mkdir(parents=True, exist_ok=True)
        (crib / "crib.toml").write_text(
            f'[runtimed]\ncgroup_parent = "{CGROUP_PARENT}"\n\n'
            f'[netd]\ndefault_bridge = "{BRIDGE}"\ndefault_subnet = "{SUBNET}"\n')

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRIB_")}
        env.update({
            "CONTAINERS_CONF": str(self.workdir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.workdir / "storage.conf"),
            "CRIB_HOST_ROOT": str(self.host),
            "CRIB_IMAGE": IMAGE,
            "CRIB_BASE_IMAGE": BASE_IMAGE,
        })
        return env

    def podman(self, *args: str, timeout: float = 120, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
        return _run(["podman", *args], timeout=timeout, env=self.env(), check=check)

    def compose(self, *args: str, timeout: float = 180, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        return _run([str(self.tools.compose), "-p", PROJECT, "-f",
                     str(ROOT / "deploy/docker-compose.yml"), *args],
                    timeout=timeout, env=self.env(), check=check)

    def check_usable(self) -> None:
        proc = self.podman("info", check=False, timeout=60)
        if proc.returncode != 0:
            raise Unusable(f"podman info failed: {proc.stderr.strip()[-500:]}")

    # ------------------------------------------------------------------ images
    def base_image(self) -> None:
        """mmdebstrap a Debian 12 root carrying the host's extra CAs; import it."""
        cas = sorted(CA_DIR.glob("*.crt")) if CA_DIR.is_dir() else []
        options = ["--variant=minbase", "--include=ca-certificates"]
        key = hashlib.sha256(repr(options).encode())
        for ca in cas:
            key.update(ca.name.encode() + ca.read_bytes())
        tarball = CACHE / f"debian-12-{key.hexdigest()[:16]}.tar"
        if not tarball.exists() or time.time() - tarball.stat().st_mtime > BASE_MAX_AGE:
            CACHE.mkdir(parents=True, exist_ok=True)
            for old in CACHE.glob("debian-12-*.tar*"):
                old.unlink()
            hooks = ['mkdir -p "$1/usr/local/share/ca-certificates"']
            if cas:
                hooks.append("copy-in " + " ".join(str(c) for c in cas)
                             + " /usr/local/share/ca-certificates")
            hooks.append('chroot "$1" update-ca-certificates')
            partial = tarball.with_suffix(".tar.partial")
            _run(["mmdebstrap", *options,
                  *[f"--customize-hook={h}" for h in hooks],
                  "--format=tar", "bookworm", str(partial), DEBIAN_MIRROR], timeout=600)
            partial.rename(tarball)
        self.podman("import", str(tarball), BASE_IMAGE, timeout=300)

    def build(self) -> None:
        # --network=host: pip in the build reaches PyPI without a podman network (and so
        # without a cni-podman0 bridge left on the host).
        self.podman("build", "--network=host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                    "-f", str(ROOT / "deploy/Dockerfile"), "-t", IMAGE, str(ROOT),
                    timeout=600)

    # ------------------------------------------------------------------ stack
    def share_mounts(self) -> None:
        _run(["bash", str(ROOT / "scripts/share-mounts.sh")],
             env={**os.environ, "CRIB_HOST_ROOT": str(self.host)})
        self.shared = _mounts_under(self.host)

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")

    def down(self) -> None:
        self.compose("down", "-t", "30", timeout=300, check=False)

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> dict[str, list[str]]:
        """Stop and remove everything the stack made; return what is still there."""
        if (self.workdir / "containers.conf").exists():
            self.down()
            self.podman("rm", "-a", "-f", "-t", "0", check=False)
        self._kill_cgroup_tree()
        self._unmount_under(self.workdir)
        for made in self.podman_made:
            if made.is_relative_to("/sys/fs/cgroup"):
                rmdir_tree(made)
            else:
                shutil.rmtree(made, ignore_errors=True)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run(["ip", "link", "del", BRIDGE], check=False, timeout=30)
        left = leftovers(self.workdir)
        still = [str(p) for p in self.podman_made if p.exists()]
        if still:
            left["podman"] = still
        if not left.get("mounts"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return left

    def _kill_cgroup_tree(self) -> None:
        tops = [c / CGROUP_PARENT.lstrip("/") for c in Path("/sys/fs/cgroup").iterdir()]
        tops = [t for t in tops if t.is_dir()]
        for _ in range(50):
            pids = set()
            for top in tops:
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError, ValueError):
                        pids |= {int(x) for x in procs.read_text().split()}
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for top in tops:
            rmdir_tree(top)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        for _ in range(5):
            mounts = _mounts_under(root)
            if not mounts:
                return
            for target in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)


def _podman_host_paths() -> list[Path]:
    cgroups = [c / "libpod_parent" for c in Path("/sys/fs/cgroup").iterdir() if c.is_dir()]
    return [*cgroups, Path("/var/lib/containers")]


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    targets = [line.split()[4] for line in
               Path("/proc/self/mountinfo").read_text().splitlines()]
    return [t for t in targets if t.startswith(prefix)]


def leftovers(workdir: Path) -> dict[str, list[str]]:
    """What of the stack is still on the host: mounts, bridge, cgroups, conflist, netns."""
    out: dict[str, list[str]] = {"mounts": _mounts_under(workdir)}
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        out["bridge"] = [BRIDGE]
    out["cgroups"] = [str(c / CGROUP_PARENT.lstrip("/")) for c in Path("/sys/fs/cgroup").iterdir()
                      if (c / CGROUP_PARENT.lstrip("/")).is_dir()]
    out["conflist"] = [str(p) for p in Path("/etc/cni/net.d").glob("87-podman*")]
    netns = workdir / "host/run/netns"
    out["netns"] = [str(p) for p in netns.iterdir()] if netns.is_dir() else []
    return {k: v for k, v in out.items() if v}
