"""Security defaults on real runc and crun: RuntimeDefault seccomp blocks what it must
while ordinary work runs, Unconfined filters nothing, CAP_SYS_ADMIN gets its syscalls,
a RuntimeDefault file can be replaced by setting, and procMount Unmasked unmasks.

The syscalls come from `sysprobe` (data/sysprobe.c), built statically with gcc into the
test image: Debian's busybox runs its applets in-process and cannot issue them.
"""

from __future__ import annotations

import errno
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from tests.support.images import Image, ImageConfig, Layer, busybox_dynamic_rootfs, push_image
from tests.support.stack import Stack

from .conftest import Cri

HANDLERS = ("runc", "crun")
PROBE_SRC = Path(__file__).parent / "data" / "sysprobe.c"
# What a filtered call answers: the profile's EPERM, or its default ENOSYS.
FILTERED = {f"errno={errno.EPERM}", f"errno={errno.ENOSYS}"}
# unshare last: after it the probe is in a user namespace of its own.
PROBES = ["clone_plain", "clone_newuser", "clone3_newuser", "mount", "keyctl", "add_key",
          "swapon", "io_uring_setup", "bpf", "perf_event_open", "unshare_user"]
RUNTIME_DEFAULT = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
UNCONFINED = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)


@pytest.fixture(scope="module")
def probe_image(cri: Cri, registry: Any) -> str:
    with tempfile.TemporaryDirectory(prefix="crib-sec-") as tmp:
        root = busybox_dynamic_rootfs(Path(tmp) / "root")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(root / "bin/sysprobe"),
                        str(PROBE_SRC)], check=True, capture_output=True, timeout=120)
        layer = Layer.from_dir(root)
    pushed = push_image(registry, "crib-test/sysprobe", "v1",
                        Image([layer], ImageConfig(cmd=["/bin/sh"])))
    cri.img.PullImage(api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=pushed.reference)), timeout=120)
    return pushed.reference


@pytest.fixture(scope="module")
def pods(cri: Cri, probe_image: str) -> Iterator[dict[str, tuple[str, Any]]]:
    out = {h: cri.run_pod(handler=h) for h in HANDLERS}
    yield out
    for sid, _ in out.values():
        cri.remove_pod(sid)


def _run(cri: Cri, pod: tuple[str, Any], image: str, name: str, script: str,
         **sc: Any) -> str:
    sid, config = pod
    linux = api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(**sc))
    cid = cri.create(sid, config, image, name, command=["sh", "-c"], args=[script],
                     linux=linux)
    cri.start(cid)
    st = cri.wait_exit(cid, timeout=30)
    assert st.state == api_pb2.CONTAINER_EXITED, st
    return Path(st.log_path).read_text()


def _results(log: str) -> dict[str, str]:
    """sysprobe's "<name> <result>" lines out of the CRI log."""
    out = {}
    for line in log.splitlines():
        words = line.split()
        if len(words) >= 5 and words[3] in PROBES:
            out[words[3]] = words[4]
    assert set(out) == set(PROBES), log
    return out


@pytest.mark.parametrize("handler", HANDLERS)
def test_runtime_default_blocks_and_ordinary_work_runs(
        cri: Cri, probe_image: str, pods: dict[str, tuple[str, Any]], handler: str) -> None:
    log = _run(cri, pods[handler], probe_image, f"rd-{handler}",
               "grep Seccomp: /proc/self/status; ls /bin/sysprobe && echo ls-ok; "
               "sleep 0.1 && echo sleep-ok; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo net-ok; "
               "unshare -U true && echo unshare-ran || echo unshare-refused; mkdir -p /mnt; "
               f"mkdir -p /mnt; sysprobe {' '.join(PROBES)}", seccomp=RUNTIME_DEFAULT)
    assert "Seccomp:\t2" in log
    assert "ls-ok" in log and "sleep-ok" in log and "net-ok" in log
    assert "unshare-refused" in log and "unshare-ran" not in log
    got = _results(log)
    assert got["clone_plain"] == "ok"  # fork works; namespaces do not
    blocked = {k: v for k, v in got.items() if k != "clone_plain"}
    assert all(v in FILTERED for v in blocked.values()), got
    # clone3 hides its flags from the filter: ENOSYS, so libc falls back to clone.
    assert got["clone3_newuser"] == f"errno={errno.ENOSYS}"


@pytest.mark.parametrize("handler", HANDLERS)
def test_unconfined_filters_nothing(cri: Cri, probe_image: str,
                                    pods: dict[str, tuple[str, Any]], handler: str) -> None:
    """The same calls, with the capabilities the kernel itself asks for, succeed or fail
    for the kernel's own reasons (no such swap file, an empty BPF map request)."""
    caps = api_pb2.Capability(add_capabilities=["SYS_ADMIN", "BPF", "PERFMON"])
    log = _run(cri, pods[handler], probe_image, f"unconf-{handler}",
               f"grep Seccomp: /proc/self/status; mkdir -p /mnt; sysprobe {' '.join(PROBES)}",
               seccomp=UNCONFINED, capabilities=caps)
    assert "Seccomp:\t0" in log
    got = _results(log)
    for name in ("clone_plain", "clone_newuser", "clone3_newuser", "mount", "keyctl",
                 "add_key", "perf_event_open", "unshare_user"):
        assert got[name] == "ok", (name, got)
    assert got["swapon"] == f"errno={errno.ENOENT}"
    assert got["bpf"] == f"errno={errno.EINVAL}"
    io_uring_off = Path("/proc/sys/kernel/io_uring_disabled")
    if not io_uring_off.exists() or io_uring_off.read_text().strip() == "0":
        assert got["io_uring_setup"] == "ok"


@pytest.mark.parametrize("handler", HANDLERS)
def test_cap_sys_admin_gets_its_syscalls_and_no_more(
        cri: Cri, probe_image: str, pods: dict[str, tuple[str, Any]], handler: str) -> None:
    caps = api_pb2.Capability(add_capabilities=["SYS_ADMIN"])
    log = _run(cri, pods[handler], probe_image, f"admin-{handler}",
               f"mkdir -p /mnt; sysprobe {' '.join(PROBES)}", seccomp=RUNTIME_DEFAULT, capabilities=caps)
    got = _results(log)
    for name in ("clone_plain", "clone_newuser", "clone3_newuser", "mount", "unshare_user",
                 "perf_event_open"):
        assert got[name] == "ok", (name, got)
    assert got["bpf"] == f"errno={errno.EINVAL}"  # granted: the kernel judged the request
    # Refused to everyone, whatever the capabilities.
    for name in ("keyctl", "add_key", "swapon", "io_uring_setup"):
        assert got[name] in FILTERED, (name, got)


def test_proc_kcore_unmasked_only_with_procmount_unmasked(
        cri: Cri, probe_image: str, pods: dict[str, tuple[str, Any]]) -> None:
    """The kubelet sends its masked paths for procMount Default and none for Unmasked;
    CAP_SYS_RAWIO lets the container open /proc/kcore at all. A kernel built without
    /proc/kcore (this one) is shown on /proc/timer_list, from the same list."""
    path = "/proc/kcore" if Path("/proc/kcore").exists() else "/proc/timer_list"
    script = f"stat -c %F {path}; head -c 4 {path} | wc -c"
    rawio = api_pb2.Capability(add_capabilities=["SYS_RAWIO"])
    kubelet_default = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                       "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                       "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                       "/sys/devices/virtual/powercap"]
    masked = _run(cri, pods["runc"], probe_image, "masked", script, capabilities=rawio,
                  masked_paths=kubelet_default, readonly_paths=["/proc/sys"])
    assert "character special file" in masked and "stdout F 0" in masked  # /dev/null
    # Unmasked: a security context (here the capability) with empty lists.
    unmasked = _run(cri, pods["runc"], probe_image, "unmasked", script, capabilities=rawio)
    assert "regular" in unmasked and "stdout F 4" in unmasked  # the kernel's file, read


def test_runtime_default_file_is_a_setting(probe_image: str, tmp_path: Path) -> None:
    """runtimed.seccomp_profile replaces crib's file (here podman's, which allows keyctl
    to everyone); a missing file stops runtimed at start with the reason."""
    podman = Path("/usr/share/containers/seccomp.json")
    if not podman.exists():
        pytest.skip("golang-github-containers-common is not installed")
    with Stack.running(CRIB_RUNTIMED__SECCOMP_PROFILE=str(podman)) as stack:
        client = Cri(stack)
        try:
            client.img.PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=probe_image)), timeout=120)
            pod = client.run_pod()
            log = _run(client, pod, probe_image, "podman-profile",
                       "grep Seccomp: /proc/self/status; sysprobe keyctl",
                       seccomp=RUNTIME_DEFAULT)
            assert "Seccomp:\t2" in log and "keyctl ok" in log
            client.remove_pod(pod[0])
        finally:
            client.close()
    missing = tmp_path / "none.json"
    # One daemon started alone, expected to fail: a separate process.
    stack = Stack.create("process", CRIB_RUNTIMED__SECCOMP_PROFILE=str(missing))
    try:
        with pytest.raises(RuntimeError, match="exited with 1") as err:
            stack.start_one("runtimed", timeout=30)
        assert f"runtimed.seccomp_profile: cannot read seccomp profile {missing}" in \
            str(err.value)
    finally:
        stack.cleanup()
