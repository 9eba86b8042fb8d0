"""Container features end to end: OOM, users, read-only rootfs, shared PID namespace,
filters, stats, resources update, log reopen, events, bad IDs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.support.images import wait_until

from .conftest import Cri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pod(cri: Cri, image: str) -> tuple[str, api_pb2.PodSandboxConfig]:
    sid, config = cri.run_pod()
    yield sid, config
    cri.remove_pod(sid)


def _linux(**sc: object) -> api_pb2.LinuxContainerConfig:
    return api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(**sc))  # type: ignore[arg-type]


def test_oom_killed(cri: Cri, image: str, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    linux = api_pb2.LinuxContainerConfig(resources=api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=16 * 1024 * 1024))
    # Dynamic busybox has no memory hog; grow a shell variable until the cgroup limit hits.
    cid = cri.create(sid, config, image, "hog", command=["sh", "-c"],
                     args=["x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"], linux=linux)
    cri.start(cid)
    st = cri.wait_exit(cid, timeout=30)
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 137
    assert st.reason == "OOMKilled"
    assert st.resources.linux.memory_limit_in_bytes == 16 * 1024 * 1024


def test_user_from_image_and_context(cri: Cri, image: str,
                                     pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    cid = cri.create(sid, config, image, "byname", command=["id"],
                     linux=_linux(run_as_username="crib"))
    cri.start(cid)
    st = cri.wait_exit(cid)
    assert st.exit_code == 0
    text = Path(st.log_path).read_text()
    assert "uid=1000(crib)" in text and "gid=1000" in text
    assert st.user.linux.uid == 1000
    cid2 = cri.create(sid, config, image, "bynum", command=["id"], linux=_linux(
        run_as_user=api_pb2.Int64Value(value=1000), run_as_group=api_pb2.Int64Value(value=2000),
        supplemental_groups=[3000]))
    cri.start(cid2)
    st2 = cri.wait_exit(cid2)
    text2 = Path(st2.log_path).read_text()
    assert "uid=1000(crib) gid=2000(cribgrp)" in text2
    assert "3000" in text2
    with pytest.raises(grpc.RpcError) as err:
        cri.create(sid, config, image, "nouser", command=["id"],
                   linux=_linux(run_as_username="nobody-here"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # crib is in cribgrp (2000) by the image's /etc/group: merged by default, not when
    # the pod's SupplementalGroupsPolicy is Strict.
    for name, policy, want in (("merge", api_pb2.Merge, [1000, 2000, 3000]),
                               ("strict", api_pb2.Strict, [1000, 3000])):
        cid3 = cri.create(sid, config, image, name, command=["id", "-G"], linux=_linux(
            run_as_username="crib", supplemental_groups=[3000],
            supplemental_groups_policy=policy))
        cri.start(cid3)
        st3 = cri.wait_exit(cid3)
        # The CRI log line: "<time> stdout F <message>"; the message is `id -G`'s list.
        line = Path(st3.log_path).read_text().splitlines()[-1]
        assert sorted(int(g) for g in line.split(" ", 3)[3].split()) == want, (name, line)
        assert sorted(st3.user.linux.supplemental_groups) == want, name
    assert cri.rt.Status(api_pb2.StatusRequest()).features.supplemental_groups_policy


def test_readonly_rootfs(cri: Cri, image: str, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    cid = cri.create(sid, config, image, "ro", command=["sh", "-c"],
                     args=["touch /newfile && echo wrote || echo refused; touch /tmp/x; "
                           "echo > /dev/shm/ok && echo shm-ok"],
                     linux=_linux(readonly_rootfs=True))
    cri.start(cid)
    st = cri.wait_exit(cid)
    text = Path(st.log_path).read_text()
    assert "refused" in text and "wrote" not in text
    assert "shm-ok" in text


def test_shared_pid_namespace_and_hostname(cri: Cri, image: str) -> None:
    ns = api_pb2.NamespaceOption(pid=api_pb2.POD)
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))
    sid, config = cri.run_pod(config)
    try:
        a = cri.create(sid, config, image, "a", command=["sleep", "300"])
        cri.start(a)
        r = cri.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=a, cmd=["ps", "-o", "comm"],
                                                    timeout=10))
        # catatonit holds PID 1 of the pod; the sleeper is its sibling.
        names = r.stdout.decode().split()
        assert "catatonit" in names and "sleep" in names
        r = cri.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=a, cmd=["hostname"],
                                                    timeout=10))
        assert r.stdout.decode().strip() == config.hostname
        st = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid))
        assert st.status.linux.namespaces.options.pid == api_pb2.POD
    finally:
        cri.remove_pod(sid)


def test_filters_prefixes_and_bad_ids(cri: Cri, image: str,
                                      pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    cid = cri.create(sid, config, image, "labelled", command=["sleep", "300"],
                     labels={"app": "crib", "tier": "x"})
    listed = cri.rt.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
        label_selector={"app": "crib"}))).containers
    assert [c.id for c in listed] == [cid]
    by_state = cri.rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(
            state=api_pb2.CONTAINER_CREATED), pod_sandbox_id=sid[:12]))).containers
    assert cid in [c.id for c in by_state]
    by_id = cri.rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(id=cid[:10]))).containers
    assert [c.id for c in by_id] == [cid]
    assert cri.status(cid[:12]).id == cid
    pods = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(
        id=sid[:8], state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)))).items
    assert [p.id for p in pods] == [sid]
    none = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(
        label_selector={"nope": "x"}))).items
    assert not none
    for bad in ("0" * 64, "zz-not-hex", "../../etc"):
        with pytest.raises(grpc.RpcError) as err:
            cri.status(bad)
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError) as err:
            cri.start(bad)
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError) as err:
        cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="f" * 64))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(handler="no-such-runtime")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        cri.create(sid, config, image, "labelled", command=["true"])
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))


def test_stats_update_reopen_and_events(cri: Cri, image: str,
                                        pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    watch = cri.watch_events()
    events = watch.events
    cid = cri.create(sid, config, image, "ticker", command=["sh", "-c"],
                     args=["i=0; while true; do echo tick $i; i=$((i+1)); "
                           "echo data > /tmp/f$((i % 5)); sleep 0.1; done"])
    cri.start(cid)
    time.sleep(0.5)
    stats = cri.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert stats.attributes.id == cid
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0
    assert stats.writable_layer.used_bytes.value > 0
    assert stats.writable_layer.inodes_used.value > 0
    # The layer's filesystem is the one ImageFsInfo names for the writable layers, so the
    # kubelet can match the two.
    fs = cri.img.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    assert stats.writable_layer.fs_id.mountpoint == \
        fs.container_filesystems[0].fs_id.mountpoint
    listed = cri.rt.ListContainerStats(api_pb2.ListContainerStatsRequest(
        filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=sid))).stats
    assert cid in [s.attributes.id for s in listed]
    pst = cri.rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid)).stats
    assert pst.linux.cpu.usage_core_nano_seconds.value > 0
    assert cid in [c.attributes.id for c in pst.linux.containers]
    assert pst.linux.network.default_interface.name == "eth0"
    assert sid in [s.attributes.id for s in cri.rt.ListPodSandboxStats(
        api_pb2.ListPodSandboxStatsRequest()).stats]
    # Live cgroup update.
    cri.rt.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(
            memory_limit_in_bytes=64 * 1024 * 1024, cpu_shares=512)))
    info = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True)).info["info"])
    cg = info["cgroupPath"].lstrip("/")
    assert Path(f"/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes").read_text().strip() == \
        str(64 * 1024 * 1024)
    assert Path(f"/sys/fs/cgroup/cpu/{cg}/cpu.shares").read_text().strip() == "512"
    assert cri.status(cid).resources.linux.cpu_shares == 512
    # Log rotation: the kubelet renames the file, then asks for a reopen.
    log_path = cri.status(cid).log_path
    os.rename(log_path, log_path + ".1")
    cri.rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    time.sleep(0.4)
    assert "tick" in Path(log_path).read_text()
    cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    time.sleep(0.3)
    watch.stop()
    mine = [e.container_event_type for e in events if e.container_id == cid]
    assert mine == [api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
                    api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]


def test_host_namespaces_and_sysctls(cri: Cri, image: str) -> None:
    ns = api_pb2.NamespaceOption(network=api_pb2.NODE, pid=api_pb2.NODE, ipc=api_pb2.NODE)
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        # Under the stack's own tree, so its cleanup takes it (a kubelet's parent is
        # used as given and left to the kubelet).
        cgroup_parent=cri.stack.cgroup_parent + "/kubepods/besteffort/podcrib",
        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))
    sid, config = cri.run_pod(config)
    try:
        st = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid)).status
        assert st.network.ip == ""
        assert st.linux.namespaces.options.network == api_pb2.NODE
        cid = cri.create(sid, config, image, "hostnet", command=["sh", "-c"],
                         args=["cat /proc/net/dev; hostname; cat /proc/1/comm"])
        cri.start(cid)
        text = Path(cri.wait_exit(cid).log_path).read_text()
        assert cri.stack.bridge in text or "lo:" in text
        assert os.uname().nodename in text
        assert Path("/proc/1/comm").read_text().strip() in text  # host PID namespace
        info = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=cid, verbose=True)).info["info"])
        assert info["cgroupPath"] == (
            cri.stack.cgroup_parent + "/kubepods/besteffort/podcrib/" + cid)
    finally:
        cri.remove_pod(sid)
    # Pod-level sysctls reach every container (net.* in the pod's own netns).
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.ip_unprivileged_port_start": "1234", "kernel.shmmni": "1000"}))
    sid, config = cri.run_pod(config)
    try:
        cid = cri.create(sid, config, image, "sysctl", command=["sh", "-c"], args=[
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni"])
        cri.start(cid)
        assert Path(cri.wait_exit(cid).log_path).read_text().split()[3::4] == ["1234", "1000"]
    finally:
        cri.remove_pod(sid)
    with pytest.raises(grpc.RpcError) as err:
        bad = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
            sysctls={"net.ipv4.ip_forward": "1"}, security_context=api_pb2.
            LinuxSandboxSecurityContext(namespace_options=ns)))
        cri.run_pod(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_mounts_devices_and_seccomp(cri: Cri, image: str, tmp_path: Path,
                                    pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    (tmp_path / "in.txt").write_text("from-host\n")
    linux = _linux(seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.
                                                   RuntimeDefault))
    cid = cri.create(sid, config, image, "mounter", command=["sh", "-c"], args=[
        "cat /data/in.txt; echo x > /data/new && echo rw-wrong || echo ro-ok; "
        "echo y > /out/made && echo rw-ok; ls -l /dev/xnull; "
        "echo 1 > /proc/sys/kernel/x 2>/dev/null || echo procsys-ro; "
        "grep Seccomp: /proc/self/status"],
        mounts=[api_pb2.Mount(container_path="/data", host_path=str(tmp_path), readonly=True),
                api_pb2.Mount(container_path="/out", host_path=str(tmp_path / "out"))],
        devices=[api_pb2.Device(container_path="/dev/xnull", host_path="/dev/null",
                                permissions="rwm")], linux=linux)
    cri.start(cid)
    st = cri.wait_exit(cid)
    text = Path(st.log_path).read_text()
    assert "from-host" in text and "ro-ok" in text and "rw-ok" in text
    assert "rw-wrong" not in text and "procsys-ro" in text
    assert "/dev/xnull" in text
    assert "Seccomp:\t2" in text  # RuntimeDefault is a filter
    assert (tmp_path / "out" / "made").read_text() == "y\n"
    assert [m.container_path for m in st.mounts] == ["/data", "/out"]
    assert st.mounts[0].readonly


def test_privileged(cri: Cri, image: str, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    sid, config = pod
    cid = cri.create(sid, config, image, "priv", command=["sh", "-c"], args=[
        "grep -E 'CapEff|Seccomp:' /proc/self/status; [ -c /dev/loop-control ] && "
        "echo hostdev; mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted"],
        linux=_linux(privileged=True))
    cri.start(cid)
    st = cri.wait_exit(cid)
    text = Path(st.log_path).read_text()
    assert "mounted" in text and "Seccomp:\t0" in text
    # The host's device nodes (containerd's WithDevices for privileged).
    assert "hostdev" in text
    # Privileged means every capability runtimed holds itself.
    host_bnd = next(line.split()[1] for line in Path("/proc/self/status").read_text()
                    .splitlines() if line.startswith("CapBnd:"))
    assert f"CapEff:\t{host_bnd}" in text
    plain = cri.create(sid, config, image, "plain", command=["sh", "-c"], args=[
        "[ -e /dev/loop-control ] && echo hostdev; "
        "mount -t tmpfs none /tmp && echo mounted || echo refused"])
    cri.start(plain)
    text = Path(cri.wait_exit(plain).log_path).read_text()
    assert "refused" in text and "hostdev" not in text


def _runc_has_rro() -> bool:
    import subprocess

    out = subprocess.run(["/usr/sbin/runc", "features"], capture_output=True)
    try:
        options = json.loads(out.stdout).get("mountOptions") or []
    except ValueError:
        return False
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    return "rro" in options and release >= (5, 12)


def test_status_lists_handlers_with_their_features(cri: Cri) -> None:
    reply = cri.rt.Status(api_pb2.StatusRequest(), timeout=10)
    handlers = {h.name: h.features for h in reply.runtime_handlers}
    # The default handler (runc) under the empty name too, then each by name.
    assert [h.name for h in reply.runtime_handlers] == ["", "crun", "runc"]
    assert handlers[""] == handlers["runc"]
    assert handlers["runc"].recursive_read_only_mounts is _runc_has_rro()
    assert handlers["crun"].recursive_read_only_mounts is False  # crun 1.8: no `features`
    # The start-up probe found ID-mapped mounts working here (tests/integration/runtimed/
    # test_userns.py runs such pods).
    assert all(f.user_namespaces for f in handlers.values())


def test_recursive_read_only_mounts(cri: Cri, image: str, tmp_path: Path,
                                    pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    if not _runc_has_rro():
        pytest.skip("runc or the kernel lacks recursive read-only mounts")
    import subprocess

    sid, config = pod
    sub = tmp_path / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "crib-rro-test", str(sub)],
                   check=True)
    try:
        script = ("touch /data/top 2>/dev/null && echo top-rw || echo top-ro; "
                  "touch /data/sub/f 2>/dev/null && echo sub-rw || echo sub-ro")

        def run(name: str, rro: bool) -> str:
            cid = cri.create(sid, config, image, name, command=["sh", "-c"], args=[script],
                             mounts=[api_pb2.Mount(container_path="/data",
                                                   host_path=str(tmp_path), readonly=True,
                                                   recursive_read_only=rro)])
            cri.start(cid)
            return Path(cri.wait_exit(cid).log_path).read_text()

        # A plain read-only bind leaves the submount writable; "rro" closes it too.
        plain = run("plain-ro", False)
        assert "top-ro" in plain and "sub-rw" in plain
        recursive = run("rro", True)
        assert "top-ro" in recursive and "sub-ro" in recursive
    finally:
        subprocess.run(["umount", "-l", str(sub)], check=False)
    # The API's rules: readonly must be set; a handler without support refuses.
    with pytest.raises(grpc.RpcError) as err:
        cri.create(sid, config, image, "rro-rw", command=["true"], mounts=[api_pb2.Mount(
            container_path="/data", host_path=str(tmp_path), recursive_read_only=True)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs readonly" in err.value.details()
    crun_sid, crun_pod = cri.run_pod(handler="crun")
    try:
        with pytest.raises(grpc.RpcError) as err:
            cri.create(crun_sid, crun_pod, image, "rro-crun", command=["true"],
                       mounts=[api_pb2.Mount(container_path="/data", host_path=str(tmp_path),
                                             readonly=True, recursive_read_only=True)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not support recursive read-only" in err.value.details()
    finally:
        cri.remove_pod(crun_sid)


def test_image_volume(cri: Cri, image: str, registry: Any,
                      pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    """CRI Mount.image (the kubelet's ImageVolume): an image's files, read-only, at a path
    of the container, whole or from `image_sub_path`; gone with the container."""
    from tests.support.images import Entry, Image, Layer, push_image

    sid, config = pod
    data = push_image(registry, "crib-test/volume", "v1", Image([
        Layer.from_entries([Entry.dir("data"), Entry.file("data/hello.txt", "from-image\n")]),
        Layer.from_entries([Entry.dir("data/sub"), Entry.file("data/sub/deep.txt", "deep\n"),
                            Entry.symlink("out", "/etc"), Entry.symlink("up", "../..")]),
    ]))
    ref = cri.img.PullImage(api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=data.reference)), timeout=120).image_ref

    def volume(path: str, sub: str = "") -> api_pb2.Mount:
        return api_pb2.Mount(container_path=path, image=api_pb2.ImageSpec(image=ref),
                             readonly=True, image_sub_path=sub)

    cid = cri.create(sid, config, image, "imgvol", command=["sh", "-c"], args=[
        "cat /vol/data/hello.txt /part/deep.txt; "
        "touch /vol/data/new 2>/dev/null && echo vol-rw || echo vol-ro"],
        mounts=[volume("/vol"), volume("/part", "data/sub")])
    cri.start(cid)
    st = cri.wait_exit(cid)
    text = Path(st.log_path).read_text()
    assert "from-image" in text and "deep" in text and "vol-ro" in text
    assert "vol-rw" not in text
    reported = {m.container_path: m for m in st.mounts}
    assert reported["/vol"].image.image == ref and reported["/vol"].readonly
    assert reported["/part"].image_sub_path == "data/sub"
    snaps = [s for s in _snapshots(cri) if s.startswith(cid)]
    assert len(snaps) == 3  # the rootfs and one per image volume
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    # Released just after the answer (RemoveContainer queues the release).
    assert wait_until(lambda: not [s for s in _snapshots(cri) if s.startswith(cid)])
    # A sub path may not lead out of the image, nor name what it lacks.
    for sub, why in (("out", "out of the image"), ("up/x", "out of the image"),
                     ("../etc", "'..'"),
                     ("/etc", "relative"), ("nope", "does not exist")):
        with pytest.raises(grpc.RpcError) as err:
            cri.create(sid, config, image, "badsub", command=["true"],
                       mounts=[volume("/v", sub)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, sub
        assert why in err.value.details(), (sub, err.value.details())
    assert not [s for s in _snapshots(cri) if "-img" in s]


def _snapshots(cri: Cri) -> list[str]:
    from .conftest import unix_get_json

    return [s["key"] for s in unix_get_json(cri.stack.socket("imaged"), "/v1/snapshots") or []]
