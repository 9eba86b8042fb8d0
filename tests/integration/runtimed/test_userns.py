"""Pod user namespaces (hostUsers: false) end to end, on runc and on crun: the pod's
mapping inside, image files owned by the container's root, host files through plain and
ID-mapped bind mounts, teardown without leftovers, a runtimed kill -9 in between, and
every refusal."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.support.images import Entry, Image, ImageConfig, Layer, push_image
from tests.support.images import busybox_image as build_busybox_image
from tests.support.namespaces import owner_userns
from tests.support.registry import Registry
from tests.support.stack import Stack

from .conftest import Cri, leftovers, separate_processes

pytestmark = pytest.mark.integration


crib = pytest.fixture(scope="module", name="crib")(separate_processes)

# The kubelet's shape: one range of 65536 from container ID 0 (KEP-127), at a host
# offset nothing else on this machine uses.
HOST_UID = 3_276_800
HOST_GID = 3_342_336
LENGTH = 65536


def _maps(uid: int = HOST_UID, gid: int = HOST_GID, length: int = LENGTH
          ) -> tuple[list[api_pb2.IDMapping], list[api_pb2.IDMapping]]:
    return ([api_pb2.IDMapping(host_id=uid, container_id=0, length=length)],
            [api_pb2.IDMapping(host_id=gid, container_id=0, length=length)])


def _userns(mode: int = api_pb2.POD, uids: list[api_pb2.IDMapping] | None = None,
            gids: list[api_pb2.IDMapping] | None = None) -> api_pb2.NamespaceOption:
    u, g = _maps()
    return api_pb2.NamespaceOption(userns_options=api_pb2.UserNamespace(
        mode=mode, uids=u if uids is None else uids, gids=g if gids is None else gids))


def _plain_and_mapped(host_dir: Path) -> list[api_pb2.Mount]:
    """`host_dir` bound twice: plainly at /plain, ID-mapped with the pod's mappings at
    /mapped."""
    u, g = _maps()
    return [api_pb2.Mount(container_path="/plain", host_path=str(host_dir)),
            api_pb2.Mount(container_path="/mapped", host_path=str(host_dir),
                          uidMappings=u, gidMappings=g)]


def _pod_config(cri: Cri, ns: api_pb2.NamespaceOption) -> api_pb2.PodSandboxConfig:
    return cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))


def _linux(ns: api_pb2.NamespaceOption | None = None) -> api_pb2.LinuxContainerConfig:
    return api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
        namespace_options=ns or _userns()))


def _run(cri: Cri, sid: str, config: api_pb2.PodSandboxConfig, image: str, name: str,
         script: str, **kw: object) -> str:
    cid = cri.create(sid, config, image, name, command=["sh", "-c", script],
                     linux=kw.pop("linux", _linux()), **kw)  # type: ignore[arg-type]
    cri.start(cid)
    st = cri.wait_exit(cid, timeout=30)
    assert st.state == api_pb2.CONTAINER_EXITED, st
    out = Path(st.log_path).read_text()
    assert st.exit_code == 0, out
    # CRI log lines: "<time> <stream> <P|F> <text>"
    return "\n".join(line.split(" ", 3)[3] for line in out.splitlines() if line.count(" ") >= 3)


@pytest.fixture(params=["runc", "crun"])
def handler(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "vol"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o777)
    (d / "root-owned").write_text("secret\n")
    os.chmod(d / "root-owned", 0o644)
    yield d


def test_status_offers_user_namespaces_after_the_probe(cri: Cri) -> None:
    resp = cri.rt.Status(api_pb2.StatusRequest(verbose=True), timeout=10)
    handlers = {h.name: h.features for h in resp.runtime_handlers}
    assert handlers["runc"].user_namespaces and handlers["crun"].user_namespaces
    config = json.loads(resp.info["config"])
    assert config["stateDir"] == str(Path(cri.stack.root) / "run/runtimed")
    assert Path(config["stateDir"]).is_dir()


def _overflow_id(kind: str) -> int:
    """What the kernel shows for an ID the namespace does not map (user_namespaces(7):
    /proc/sys/kernel/overflowuid, 65534 by default)."""
    return int(Path(f"/proc/sys/kernel/overflow{kind}").read_text())


def _verbose_info(cri: Cri, cid: str) -> dict[str, object]:
    resp = cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid,
                                                                  verbose=True), timeout=10)
    return json.loads(resp.info["info"])  # type: ignore[no-any-return]


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _ns_still_held(stack: Stack, kind: str, inode: int) -> list[str]:
    """What of this stack still holds namespace `kind:[inode]`: a pin (a bind mount of
    it under the stack's root, named by its root in mountinfo) or a process of ours in
    it (a daemon's child, one naming the root, or one in the stack's cgroups). Only ours: the kernel reuses the
    numbers of freed namespaces, for other engineers' namespaces too."""
    root = str(stack.root)
    held = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f"{kind}:[{inode}]" in line and line.split()[4].startswith(root)]
    daemons = {str(p) for p in stack.daemon_pids()}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.readlink(p / "ns" / kind) != f"{kind}:[{inode}]":
                continue
            ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[1]
            argv = (p / "cmdline").read_bytes().decode(errors="replace")
            cgroups = (p / "cgroup").read_text()
        except OSError:
            continue
        if ppid in daemons or root in argv or stack.cgroup_parent in cgroups:
            held.append(f"pid {p.name}: {argv!r}")
    return held


def test_pod_sees_its_mapping_owns_its_image_and_leaves_nothing(
        cri: Cri, image: str, handler: str, host_dir: Path) -> None:
    config = _pod_config(cri, _userns())
    sid, _ = cri.run_pod(config, handler=handler)
    resp = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True), timeout=10)
    # The status reports the pod's user namespace as it was asked for.
    assert resp.status.linux.namespaces.options.userns_options == \
        config.linux.security_context.namespace_options.userns_options
    info = json.loads(resp.info["info"])
    userns_pin = Path(info["userns"])
    assert userns_pin == Path(cri.stack.root) / "run/ns" / sid / "user"
    user_ino, net_ino = _ns_inode(str(userns_pin)), _ns_inode(info["netns"])
    # The pod's network, IPC and UTS namespaces are owned by its user namespace.
    for pin in (info["netns"], info["ipc"], info["uts"]):
        assert owner_userns(pin) == user_ino, pin
    try:
        out = _run(cri, sid, config, image, "look", " ; ".join([
            "cat /proc/self/uid_map /proc/self/gid_map", "id -u", "id -g",
            "stat -c '%u:%g %n' / /bin/busybox /etc/passwd",
            "stat -c '%u:%g %n' /etc/hostname /etc/resolv.conf /etc/hosts",
            "touch /made-here"]),
            mounts=_plain_and_mapped(host_dir))
        lines = [line.split() for line in out.splitlines()]
        assert lines[0] == ["0", str(HOST_UID), str(LENGTH)]
        assert lines[1] == ["0", str(HOST_GID), str(LENGTH)]
        assert lines[2] == ["0"] and lines[3] == ["0"]
        # The image's files are the container's root's, though on disk they are the
        # host's root's: the lower layers are ID-mapped, not chowned.
        assert [line[0] for line in lines[4:7]] == ["0:0"] * 3, out
        # The pod's own files are its root's too (chowned to the mapping's root).
        assert [line[0] for line in lines[7:10]] == ["0:0"] * 3, out
        cid = cri.rt.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=sid))).containers[0].id
        rootfs = Path(str(_verbose_info(cri, cid)["bundle"])) / "rootfs"
        made = os.stat(rootfs / "made-here")
        assert (made.st_uid, made.st_gid) == (HOST_UID, HOST_GID)
        # The layer store is untouched: what the image ships stays the host root's.
        assert os.stat(rootfs / "bin/busybox").st_uid == HOST_UID  # as the overlay shows it
    finally:
        cri.remove_pod(sid)
    assert _ns_still_held(cri.stack, "user", user_ino) == []
    assert _ns_still_held(cri.stack, "net", net_ino) == []
    left = leftovers(cri.stack)
    for key in ("mounts", "ns_pins", "netns", "processes", "run_files"):
        assert not left.get(key), left
    assert sid not in Path("/proc/self/mountinfo").read_text()


def test_host_files_through_plain_and_idmapped_binds(cri: Cri, image: str, handler: str,
                                                     host_dir: Path) -> None:
    """A plain bind: the host's root is unmapped (the overflow ID) and what the pod writes
    is owned on the host by the mapped IDs. An ID-mapped bind (the kubelet's volumes):
    the host's root is the container's, and what the pod writes keeps container IDs on
    disk."""
    config = _pod_config(cri, _userns())
    sid, _ = cri.run_pod(config, handler=handler)
    try:
        out = _run(cri, sid, config, image, "vols", " ; ".join([
            "stat -c '%u:%g' /plain/root-owned /mapped/root-owned",
            "cat /mapped/root-owned",
            "touch /plain/by-root /mapped/by-root-mapped",
            "touch /plain/by-1000 /mapped/by-1000-mapped",
            "chown 1000:2000 /plain/by-1000 /mapped/by-1000-mapped"]),
            mounts=_plain_and_mapped(host_dir))
        lines = out.splitlines()
        assert lines[0] == f"{_overflow_id('uid')}:{_overflow_id('gid')}"
        assert lines[1] == "0:0"
        assert lines[2] == "secret"

        def owner(name: str) -> tuple[int, int]:
            st = os.stat(host_dir / name)
            return st.st_uid, st.st_gid

        assert owner("by-root") == (HOST_UID, HOST_GID)
        assert owner("by-1000") == (HOST_UID + 1000, HOST_GID + 2000)
        assert owner("by-root-mapped") == (0, 0)
        assert owner("by-1000-mapped") == (1000, 2000)
    finally:
        cri.remove_pod(sid)
    assert not leftovers(cri.stack).get("mounts")


def test_image_volume_is_idmapped(cri: Cri, image: str) -> None:
    config = _pod_config(cri, _userns())
    sid, _ = cri.run_pod(config, handler="runc")
    try:
        out = _run(cri, sid, config, image, "imgvol",
                   "stat -c '%u:%g' /img/bin/busybox /img/etc/passwd",
                   mounts=[api_pb2.Mount(container_path="/img", readonly=True,
                                         image=api_pb2.ImageSpec(image=image))])
        assert out.splitlines() == ["0:0", "0:0"]
    finally:
        cri.remove_pod(sid)
    assert not leftovers(cri.stack).get("mounts")


def test_runtimed_kill9_keeps_the_pod_accounted_for(cri: Cri, image: str,
                                                    handler: str) -> None:
    config = _pod_config(cri, _userns())
    sid, _ = cri.run_pod(config, handler=handler)
    removed = False
    try:
        cid = cri.create(sid, config, image, "sleeper", command=["sleep", "300"],
                         linux=_linux())
        cri.start(cid)
        stack = cri.stack
        proc = stack.procs.pop("runtimed")
        proc.kill()
        proc.wait(timeout=30)
        stack.start_one("runtimed")
        assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
        pod = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
                                      timeout=10).status
        assert pod.state == api_pb2.SANDBOX_READY
        res = cri.rt.ExecSync(api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["cat", "/proc/self/uid_map"], timeout=10), timeout=20)
        assert res.exit_code == 0 and res.stdout.split() == [b"0", str(HOST_UID).encode(),
                                                             str(LENGTH).encode()]
        cri.remove_pod(sid)
        removed = True
    finally:
        if not removed:
            cri.remove_pod(sid)
    left = leftovers(cri.stack)
    for key in ("mounts", "ns_pins", "netns", "processes", "run_files"):
        assert not left.get(key), left


def _refused(call: object, *expected: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    for text in expected:
        assert text in err.value.details(), err.value.details()
    return str(err.value.details())


@pytest.mark.parametrize(("ns", "expected"), [
    (lambda: _userns(api_pb2.CONTAINER), ("mode CONTAINER is not supported",)),
    (lambda: _userns(api_pb2.TARGET), ("mode TARGET is not supported",)),
    (lambda: _userns(uids=_maps()[0] * 2), ("exactly one uid mapping, got 2",)),
    (lambda: _userns(gids=[]), ("exactly one gid mapping, got 0",)),
    (lambda: _userns(uids=[api_pb2.IDMapping(host_id=HOST_UID, container_id=1,
                                             length=LENGTH)]),
     ("does not map container ID 0",)),
    (lambda: _userns(api_pb2.NODE), ("mode NODE (the host's user namespace) takes no "
                                      "mappings",)),
], ids=["container", "target", "two-uid-maps", "no-gid-map", "id0-unmapped", "node-maps"])
def test_pod_refusals(cri: Cri, ns: object, expected: tuple[str, ...]) -> None:
    config = _pod_config(cri, ns())  # type: ignore[operator]
    _refused(lambda: cri.run_pod(config), "namespace_options.userns_options", *expected)
    names = [p.metadata.name for p in cri.rt.ListPodSandbox(
        api_pb2.ListPodSandboxRequest()).items]
    assert config.metadata.name not in names


def test_host_network_with_a_pod_user_namespace_is_refused(cri: Cri) -> None:
    ns = _userns()
    ns.network = api_pb2.NODE
    _refused(lambda: cri.run_pod(_pod_config(cri, ns)),
             "cannot be combined with the host's network namespace")


def test_container_refusals(cri: Cri, image: str, host_dir: Path) -> None:
    """Every container joins its pod's user namespace: other modes or mappings, and
    ID-mapped mounts with another mapping (or in a host-users pod), are refused before
    anything is made."""
    config = _pod_config(cri, _userns())
    sid, _ = cri.run_pod(config)
    plain_config = cri.pod_config()
    plain, _ = cri.run_pod(plain_config)
    try:
        other_u, other_g = _maps(uid=HOST_UID + LENGTH, gid=HOST_GID + LENGTH)
        cases = [
            (_linux(_userns(uids=other_u, gids=other_g)), [], ("differ from the pod's",)),
            (_linux(_userns(api_pb2.NODE, uids=[], gids=[])), [],
             ("mode NODE differs from the pod's (POD)",)),
            (_linux(_userns(api_pb2.CONTAINER)), [], ("mode CONTAINER is not supported",)),
            (_linux(), [api_pb2.Mount(container_path="/v", host_path=str(host_dir),
                                      uidMappings=other_u, gidMappings=other_g)],
             ("mounts[0] (/v)", "differ from the pod's user namespace")),
            (_linux(), [api_pb2.Mount(container_path="/v", host_path=str(host_dir),
                                      uidMappings=_maps()[0])],
             ("needs both uidMappings and gidMappings",)),
        ]
        for linux, mounts, expected in cases:
            _refused(lambda: cri.create(sid, config, image, "x", command=["true"],
                                        linux=linux, mounts=mounts), *expected)
        u, g = _maps()
        _refused(lambda: cri.create(plain, plain_config, image, "x", command=["true"],
                                    mounts=[api_pb2.Mount(container_path="/v",
                                                          host_path=str(host_dir),
                                                          uidMappings=u, gidMappings=g)]),
                 "ID-mapped mounts need a pod with its own user namespace")
        _refused(lambda: cri.create(plain, plain_config, image, "x", command=["true"],
                                    linux=_linux(_userns())),
                 "mode POD differs from the pod's (NODE)")
        for pod in (sid, plain):
            assert not cri.rt.ListContainers(api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))).containers
    finally:
        cri.remove_pod(sid)
        cri.remove_pod(plain)


def test_kill9_in_the_middle_of_creates_is_rolled_back(cri: Cri, image: str) -> None:
    """runtimed killed in RunPodSandbox after the network (the user namespace, its pins
    and netd's namespace inside it exist) and in CreateContainer after the ID-mapped
    rootfs is mounted: recovery undoes both, nothing stays pinned or mounted."""
    from .test_restart import _crash, _restart

    stack = cri.stack
    config = _pod_config(cri, _userns())
    try:
        _restart(stack, "sandbox_after_network")
        _crash(stack, lambda: cri.run_pod(config))
        _restart(stack)
        assert not cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
        left = leftovers(stack)
        for key in ("mounts", "ns_pins", "netns", "processes"):
            assert not left.get(key), left
        sid, _ = cri.run_pod(config)
        _restart(stack, "create_after_mount")
        _crash(stack, lambda: cri.create(sid, config, image, "half", command=["true"],
                                         linux=_linux()))
        _restart(stack)
        assert not cri.rt.ListContainers(api_pb2.ListContainersRequest()).containers
        assert not list((stack.root / "run/runtimed/c").iterdir())
        assert _run(cri, sid, config, image, "after", "id -u") == "0"
    finally:
        _restart(stack)
        cri.remove_all_pods()
    assert leftovers(stack) == {}


def test_the_conformance_suites_pod(cri: Cri, image: str, handler: str) -> None:
    """critest's "runtime should support NamespaceMode_POD", as it builds it: mapping 0 ->
    1000 x100000, the pod's namespace options (PID shared, so catatonit runs) repeated on
    the container, which prints its uid_map."""
    mapping = [api_pb2.IDMapping(container_id=0, host_id=1000, length=100000)]
    ns = api_pb2.NamespaceOption(userns_options=api_pb2.UserNamespace(
        mode=api_pb2.POD, uids=mapping, gids=mapping))
    config = _pod_config(cri, ns)
    sid, _ = cri.run_pod(config, handler=handler)
    try:
        out = _run(cri, sid, config, image, "uidmap", "cat /proc/self/uid_map",
                   linux=_linux(ns))
        assert out.split() == ["0", "1000", "100000"]
    finally:
        cri.remove_pod(sid)


@pytest.fixture(scope="module")
def tall_image(cri: Cri, registry: Registry) -> str:
    """The busybox image with 80 more layers of one file each: its ID-mapped lower
    layers, one mount each, must still fit in overlayfs's one page of options."""
    base = build_busybox_image()
    layers = [*base.layers, *(Layer.from_entries([Entry.file(f"layers/{n}", f"{n}\n")])
                              for n in range(80))]
    ref = push_image(registry, "crib-test/tall", "v1",
                     Image(layers, ImageConfig(cmd=["/bin/sh"]))).reference
    cri.img.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)),
                      timeout=120)
    return ref


def test_image_of_many_layers(cri: Cri, tall_image: str) -> None:
    config = _pod_config(cri, _userns())
    sid, _ = cri.run_pod(config)
    try:
        out = _run(cri, sid, config, tall_image, "tall",
                   "cat /layers/0 /layers/79; stat -c '%u:%g' /layers/79")
        assert out.split() == ["0", "79", "0:0"], out
    finally:
        cri.remove_pod(sid)
    left = leftovers(cri.stack)
    assert not left.get("mounts"), left
