"""OCI config generation: schema validity (runtime-spec JSON schema) and the kubelet's
rules for command, env, users, capabilities, mounts, resources, seccomp."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from crib_common.cri.runtime.v1 import (
    Capability,
    ContainerConfig,
    ContainerMetadata,
    Device,
    HugepageLimit,
    ImageSpec,
    Int64Value,
    KeyValue,
    LinuxContainerConfig,
    LinuxContainerResources,
    LinuxContainerSecurityContext,
    Mount,
    MountPropagation,
    NamespaceMode,
    NamespaceOption,
    SecurityProfile,
    SecurityProfileProfileType,
)
from crib_common.errors import InvalidArgument
from runtimed.oci.apparmor import AppArmor
from runtimed.oci.capabilities import ALL_CAPS, container_capabilities
from runtimed.oci.seccomp import builtin_profile
from runtimed.oci.security import SecurityDefaults
from runtimed.oci.selinux import SELinux
from runtimed.oci.spec import (
    DEFAULT_CAPS,
    DEFAULT_MASKED,
    DEFAULT_READONLY,
    ContainerSpecInput,
    build_container_spec,
    build_pause_spec,
    build_sandbox_spec,
    combine_command,
    host_devices,
    merge_env,
    resources_to_dict,
    resources_to_oci,
)
from runtimed.oci.user import ResolvedUser
from runtimed.store.records import SandboxMeta

SCHEMA_DIR = Path("/work/shared/specs/oci-runtime-spec/schema")


def _validator() -> jsonschema.Validator:
    def retrieve(uri: str) -> Resource[Any]:
        return Resource.from_contents(json.loads((SCHEMA_DIR / uri).read_text()),
                                      default_specification=DRAFT4)

    schema = json.loads((SCHEMA_DIR / "config-schema.json").read_text())
    registry: Registry[Any] = Registry(retrieve=retrieve)  # type: ignore[call-arg]
    return jsonschema.Draft4Validator(schema, registry=registry)


VALIDATOR = _validator()


def _assert_valid(spec: dict[str, Any]) -> None:
    errors = sorted(VALIDATOR.iter_errors(spec), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def _sandbox(tmp_path: Path, **kw: Any) -> SandboxMeta:
    pod_dir = tmp_path / "pod"
    pod_dir.mkdir(exist_ok=True)
    for name in ("hostname", "resolv.conf", "hosts"):
        (pod_dir / name).write_text("x\n")
    base: dict[str, Any] = dict(
        id="a" * 64, name="p", namespace="ns", uid="u", handler="runc", created_at=1,
        hostname="p", pod_dir=str(pod_dir), netns_path="/run/netns/x", ipc_ns="/run/ns/ipc",
        uts_ns="/run/ns/uts", cgroup_parent="/crib/pod", shared_pid=True,
        sysctls={"net.ipv4.ip_unprivileged_port_start": "0"})
    base.update(kw)
    return SandboxMeta(**base)


def _input(tmp_path: Path, image: dict[str, Any] | None = None,
           sandbox: SandboxMeta | None = None, **kw: Any) -> ContainerSpecInput:
    return ContainerSpecInput(
        cid="b" * 64, rootfs=tmp_path / "rootfs", sandbox=sandbox or _sandbox(tmp_path),
        image_config={"config": image or {"Entrypoint": ["/ep"], "Cmd": ["c1"],
                                          "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/w"}},
        user=ResolvedUser(uid=1000, gid=1000, groups=[2000]), cgroup_path="/crib/pod/crib-b",
        infra_pid=42, **kw)


def test_full_featured_container_is_schema_valid(tmp_path: Path) -> None:
    cfg = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="img"),
        args=["a1"], envs=[KeyValue(key="A", value="2"), KeyValue(key="B", value="3")],
        mounts=[Mount(container_path="/data", host_path=str(tmp_path / "data"), readonly=True,
                      propagation=MountPropagation.PROPAGATION_HOST_TO_CONTAINER)],
        devices=[Device(container_path="/dev/xnull", host_path="/dev/null", permissions="rw")],
        tty=True, stdin=True,
        linux=LinuxContainerConfig(
            resources=LinuxContainerResources(
                cpu_period=100000, cpu_quota=50000, cpu_shares=256, memory_limit_in_bytes=1 << 26,
                oom_score_adj=-997, cpuset_cpus="0", cpuset_mems="0",
                hugepage_limits=[HugepageLimit(page_size="2MB", limit=0)]),
            security_context=LinuxContainerSecurityContext(
                capabilities=Capability(add_capabilities=["NET_ADMIN"],
                                        drop_capabilities=["CAP_KILL"]),
                no_new_privs=True, readonly_rootfs=True,
                seccomp=SecurityProfile(profile_type=SecurityProfileProfileType.RuntimeDefault),
                namespace_options=NamespaceOption(pid=NamespaceMode.POD),
                masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])),
    )
    spec = build_container_spec(cfg, _input(tmp_path, pids_limit=100, swap_controller=True))
    _assert_valid(spec)
    proc = spec["process"]
    assert proc["args"] == ["/ep", "a1"]  # args replace Cmd, Entrypoint kept
    assert proc["env"][:3] == ["PATH=/bin", "A=2", "B=3"]
    assert proc["cwd"] == "/w"
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}
    assert proc["terminal"] is True
    assert proc["oomScoreAdj"] == 0  # never negative without CAP_SYS_RESOURCE
    assert "CAP_NET_ADMIN" in proc["capabilities"]["bounding"]
    assert "CAP_KILL" not in proc["capabilities"]["effective"]
    assert proc["noNewPrivileges"] is True
    assert spec["root"]["readonly"] is True
    linux = spec["linux"]
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in linux["namespaces"]
    assert {"type": "network", "path": "/run/netns/x"} in linux["namespaces"]
    res = linux["resources"]
    assert res["cpu"] == {"shares": 256, "quota": 50000, "period": 100000, "cpus": "0",
                          "mems": "0"}
    assert res["memory"] == {"limit": 1 << 26, "swap": 1 << 26}
    assert res["pids"] == {"limit": 100}
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 0}]
    assert linux["rootfsPropagation"] == "slave"
    # RuntimeDefault: the allow-list, unlisted syscalls ENOSYS.
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert linux["seccomp"]["defaultErrnoRet"] == 38
    allowed = {n for r in linux["seccomp"]["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
               for n in r["names"]}
    assert "read" in allowed and "kexec_load" not in allowed
    # The kubelet's lists, as sent.
    assert linux["maskedPaths"] == ["/proc/kcore"]
    assert linux["readonlyPaths"] == ["/proc/sys"]
    assert linux["devices"][0]["path"] == "/dev/xnull"
    assert linux["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    data = next(m for m in spec["mounts"] if m["destination"] == "/data")
    assert data["options"] == ["rbind", "rslave", "ro"]
    # The builder never touches the host: the container room creates a missing host
    # path first, as containerd does (test_missing_host_path_is_created_by_the_room).
    assert not (tmp_path / "data").exists()
    assert any(m["destination"] == "/etc/resolv.conf" for m in spec["mounts"])


def test_sandbox_spec_is_schema_valid(tmp_path: Path) -> None:
    spec = build_sandbox_spec(_sandbox(tmp_path), tmp_path / "rootfs", "/catatonit",
                              "/usr/bin/catatonit", "/crib/pod/crib-a")
    _assert_valid(spec)
    assert spec["process"]["args"] == ["/catatonit", "-P"]
    assert {"type": "pid"} in spec["linux"]["namespaces"]
    # crib's own infra process runs under RuntimeDefault, with no capability.
    seccomp = spec["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for rule in seccomp["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
               and not rule.get("args") for n in rule["names"]}
    assert {"wait4", "rt_sigprocmask", "pause"} <= allowed and "mount" not in allowed


def test_pause_spec_from_image_config(tmp_path: Path) -> None:
    image = {"config": {"Entrypoint": ["/pause"], "Cmd": ["-v"], "Env": ["A=1"],
                        "WorkingDir": "/w"}}
    spec = build_pause_spec(_sandbox(tmp_path), tmp_path / "rootfs", image, 65535, 65535,
                            "/crib/pod/crib-a")
    _assert_valid(spec)
    proc = spec["process"]
    assert proc["args"] == ["/pause", "-v"]
    assert "A=1" in proc["env"] and any(e.startswith("PATH=") for e in proc["env"])
    assert (proc["cwd"], proc["user"]) == ("/w", {"uid": 65535, "gid": 65535})
    ns = spec["linux"]["namespaces"]
    assert {"type": "pid"} in ns and {"type": "network", "path": "/run/netns/x"} in ns
    assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    host_pid = build_pause_spec(_sandbox(tmp_path, host_pid=True, shared_pid=False),
                                tmp_path / "rootfs", image, 0, 0, "/c")
    assert not any(n["type"] == "pid" for n in host_pid["linux"]["namespaces"])
    with pytest.raises(InvalidArgument):
        build_pause_spec(_sandbox(tmp_path), tmp_path / "rootfs", {"config": {}}, 0, 0, "/c")


def test_minimal_and_privileged_are_schema_valid(tmp_path: Path) -> None:
    cfg = ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"))
    spec = build_container_spec(cfg, _input(tmp_path))
    _assert_valid(spec)
    assert spec["process"]["args"] == ["/ep", "c1"]
    assert sorted(spec["process"]["capabilities"]["bounding"]) == sorted(DEFAULT_CAPS)
    assert "seccomp" not in spec["linux"]  # nothing asked: Unconfined, as the kubelet
    priv = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"), command=["/x"],
        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
            privileged=True)))
    pspec = build_container_spec(priv, _input(tmp_path))
    _assert_valid(pspec)
    assert "maskedPaths" not in pspec["linux"]
    assert pspec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "CAP_SYS_ADMIN" in pspec["process"]["capabilities"]["bounding"]


def test_privileged_gets_host_devices_schema_valid(tmp_path: Path) -> None:
    priv = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"), command=["/x"],
        devices=[Device(container_path="/dev/null", host_path="/dev/zero", permissions="r")],
        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
            privileged=True)))
    spec = build_container_spec(priv, _input(tmp_path))
    _assert_valid(spec)
    devices = {d["path"]: d for d in spec["linux"]["devices"]}
    st = os.stat("/dev/full")
    assert devices["/dev/full"] == {
        "path": "/dev/full", "type": "c", "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev), "fileMode": st.st_mode & 0o7777, "uid": st.st_uid,
        "gid": st.st_gid}
    # The explicit device at /dev/null (host /dev/zero, 1:5) wins over the host's null.
    assert (devices["/dev/null"]["major"], devices["/dev/null"]["minor"]) == (1, 5)
    assert len(spec["linux"]["devices"]) == len(devices)  # no path twice
    for path in devices:
        assert not path.startswith(("/dev/pts/", "/dev/shm/", "/dev/mqueue/", "/dev/fd/"))
        assert path != "/dev/console"
    assert all(d["type"] in ("c", "b") for d in devices.values())
    # Not privileged: only what was asked for.
    plain = build_container_spec(ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"), command=["/x"]),
        _input(tmp_path))
    assert "devices" not in plain["linux"]


def test_host_devices_walk(tmp_path: Path) -> None:
    """Nested directories are walked; skipped directories, symlinks, files and sockets
    are not devices."""
    dev = tmp_path / "dev"
    for d in ("pts", "shm", "mqueue", "net", "fd"):
        (dev / d).mkdir(parents=True)
    for name, mode, kind, rdev in (("null", 0o666, 0o020000, (1, 3)),
                                   ("net/tun", 0o600, 0o020000, (10, 200)),
                                   ("loop0", 0o660, 0o060000, (7, 0))):
        os.mknod(dev / name, mode | kind, os.makedev(*rdev))
        os.chmod(dev / name, mode)  # mknod's mode is cut by the umask
    os.mknod(dev / "pts/0", 0o620 | 0o020000, os.makedev(136, 0))
    os.mknod(dev / "shm/x", 0o620 | 0o020000, os.makedev(1, 3))
    os.mknod(dev / "console", 0o600 | 0o020000, os.makedev(5, 1))
    (dev / "stdin").symlink_to("/proc/self/fd/0")
    (dev / "file").write_text("x")
    got = {d["path"].removeprefix(str(dev)): (d["type"], d["major"], d["minor"],
                                             d["fileMode"]) for d in host_devices(str(dev))}
    assert got == {"/loop0": ("b", 7, 0, 0o660), "/net/tun": ("c", 10, 200, 0o600),
                   "/null": ("c", 1, 3, 0o666)}


@pytest.mark.parametrize("command,args,ep,cmd,want", [
    (["c"], ["a"], ["e"], ["d"], ["c", "a"]),
    (["c"], [], ["e"], ["d"], ["c"]),
    ([], ["a"], ["e"], ["d"], ["e", "a"]),
    ([], [], ["e"], ["d"], ["e", "d"]),
    ([], [], None, ["d"], ["d"]),
    ([], ["a"], None, ["d"], ["a"]),
])
def test_combine_command(command: list[str], args: list[str], ep: list[str] | None,
                         cmd: list[str] | None, want: list[str]) -> None:
    assert combine_command(command, args, ep, cmd) == want


def test_no_command_at_all() -> None:
    with pytest.raises(InvalidArgument):
        combine_command([], [], None, None)


def test_merge_env_overrides_in_place_and_adds_path() -> None:
    assert merge_env(["A=1", "B=2"], [("A", "3"), ("C", "4")])[1:] == ["A=3", "B=2", "C=4"]
    assert merge_env([], [])[0].startswith("PATH=")


def test_capabilities_drop_all_then_add(tmp_path: Path) -> None:
    cfg = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
            capabilities=Capability(drop_capabilities=["ALL"], add_capabilities=["CHOWN"]))))
    spec = build_container_spec(cfg, _input(tmp_path))
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_CHOWN"]
    bad = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
            capabilities=Capability(add_capabilities=["NOT_A_CAP"]))))
    with pytest.raises(InvalidArgument):
        build_container_spec(bad, _input(tmp_path))


def test_localhost_seccomp_and_errors(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}))
    cfg = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
            seccomp=SecurityProfile(profile_type=SecurityProfileProfileType.Localhost,
                                    localhost_ref=str(prof)))))
    spec = build_container_spec(cfg, _input(tmp_path))
    _assert_valid(spec)
    assert spec["linux"]["seccomp"]["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    cfg.linux.security_context.seccomp.localhost_ref = str(tmp_path / "missing.json")
    with pytest.raises(InvalidArgument):
        build_container_spec(cfg, _input(tmp_path))


def test_bad_inputs_are_invalid_argument(tmp_path: Path) -> None:
    for cfg in (
        ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                        working_dir="relative"),
        ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                        mounts=[Mount(container_path="rel", host_path="/tmp")]),
        ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                        devices=[Device(container_path="/dev/x", host_path="/etc/passwd")]),
        ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
                            namespace_options=NamespaceOption(pid=NamespaceMode.TARGET,
                                                              target_id="nope")))),
    ):
        with pytest.raises(InvalidArgument):
            build_container_spec(cfg, _input(tmp_path))


def test_resources_roundtrip_and_swap() -> None:
    res = resources_to_dict(LinuxContainerResources(memory_limit_in_bytes=100,
                                                    memory_swap_limit_in_bytes=300))
    assert resources_to_oci(res, swap_controller=True)["memory"] == {"limit": 100, "swap": 300}
    assert resources_to_oci(res)["memory"] == {"limit": 100}
    assert resources_to_dict(None) == {}


def test_run_as_user_reaches_process(tmp_path: Path) -> None:
    cfg = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
        linux=LinuxContainerConfig(security_context=LinuxContainerSecurityContext(
            run_as_user=Int64Value(value=5))))
    inp = _input(tmp_path)
    inp.user = ResolvedUser(uid=5, gid=0)
    spec = build_container_spec(cfg, inp)
    assert spec["process"]["user"] == {"uid": 5, "gid": 0}
    assert os.path.isdir(tmp_path)


def test_pod_user_namespace_is_joined_with_its_mappings(tmp_path: Path) -> None:
    """A pod with its own user namespace: every container and the infra join the pinned
    namespace by path, with the mappings in config.json too (runc needs both); an
    ID-mapped mount is bound from the clone runtimed made, and one without a clone (no
    pod user namespace) is refused. The documents stay schema-valid."""
    from crib_common.cri.runtime.v1 import IdMapping

    mapping = [IdMapping(host_id=100000, container_id=0, length=65536)]
    record = {"uids": [{"container_id": 0, "host_id": 100000, "length": 65536}],
              "gids": [{"container_id": 0, "host_id": 200000, "length": 65536}]}
    sb = _sandbox(tmp_path, userns="/run/ns/user", userns_mappings=record)
    cfg = ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                          mounts=[Mount(container_path="/d", host_path=str(tmp_path),
                                        uid_mappings=mapping, gid_mappings=mapping)])
    spec = build_container_spec(cfg, _input(tmp_path, sandbox=sb,
                                            mapped_sources={"/d": "/bundle/mounts/0"}))
    _validator().validate(spec)
    assert {"type": "user", "path": "/run/ns/user"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000,
                                             "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 200000,
                                             "size": 65536}]
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/d"] == [
        "/bundle/mounts/0"]
    infra = build_sandbox_spec(sb, tmp_path / "rootfs", "/catatonit", "/usr/bin/catatonit",
                               "/crib/pod/crib-a")
    _validator().validate(infra)
    assert {"type": "user", "path": "/run/ns/user"} in infra["linux"]["namespaces"]
    assert infra["linux"]["gidMappings"][0]["hostID"] == 200000
    # The host's user namespace: no entry, no mappings, and no ID-mapped mount.
    plain = build_container_spec(
        ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i")),
        _input(tmp_path))
    assert not any(n["type"] == "user" for n in plain["linux"]["namespaces"])
    assert "uidMappings" not in plain["linux"]
    with pytest.raises(InvalidArgument, match="ID-mapped mounts need the pod's own user"):
        build_container_spec(cfg, _input(tmp_path))


def test_named_apparmor_profile_is_refused_without_apparmor(tmp_path: Path) -> None:
    """On a host without AppArmor a Localhost profile cannot be honoured: refused, never
    silently dropped (tests/unit/runtimed/test_apparmor.py has the AppArmor host)."""
    off = SecurityDefaults(seccomp=builtin_profile(),
                           apparmor=AppArmor(securityfs=tmp_path / "no-apparmor"))

    def config(**sc: Any) -> ContainerConfig:
        return ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                               linux=LinuxContainerConfig(
                                   security_context=LinuxContainerSecurityContext(**sc)))

    named = config(apparmor=SecurityProfile(profile_type=SecurityProfileProfileType.Localhost,
                                            localhost_ref="my-profile"))
    with pytest.warns(DeprecationWarning):  # betterproto flags the old string field
        old_style = config(apparmor_profile="localhost/my-profile")
    for cfg in (named, old_style):
        with pytest.raises(InvalidArgument, match="my-profile"):
            build_container_spec(cfg, _input(tmp_path, security=off))
    # Unconfined, and RuntimeDefault, run, without a profile.
    for kind in (SecurityProfileProfileType.Unconfined,
                 SecurityProfileProfileType.RuntimeDefault):
        spec = build_container_spec(config(apparmor=SecurityProfile(profile_type=kind)),
                                    _input(tmp_path, security=off))
        assert "apparmorProfile" not in spec["process"]


def _with_sc(**sc: Any) -> ContainerConfig:
    return ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                           linux=LinuxContainerConfig(
                               security_context=LinuxContainerSecurityContext(**sc)))


def test_masked_and_readonly_paths_are_the_kubelets(tmp_path: Path) -> None:
    # No security context at all (crictl without one): crib's (containerd's) defaults.
    bare = build_container_spec(ContainerConfig(metadata=ContainerMetadata(name="c"),
                                                image=ImageSpec(image="i")), _input(tmp_path))
    assert bare["linux"]["maskedPaths"] == DEFAULT_MASKED
    assert bare["linux"]["readonlyPaths"] == DEFAULT_READONLY
    # procMount Unmasked: the kubelet sends empty lists, and nothing is masked.
    unmasked = build_container_spec(_with_sc(run_as_user=Int64Value(value=0)),
                                    _input(tmp_path))
    _assert_valid(unmasked)
    assert "maskedPaths" not in unmasked["linux"]
    assert "readonlyPaths" not in unmasked["linux"]
    # procMount Default: exactly its lists, not crib's.
    sent = build_container_spec(_with_sc(masked_paths=["/proc/x"], readonly_paths=["/proc/y"]),
                                _input(tmp_path))
    assert sent["linux"]["maskedPaths"] == ["/proc/x"]
    assert sent["linux"]["readonlyPaths"] == ["/proc/y"]


def test_capabilities_all_as_the_kubelet_means_it() -> None:
    host = list(ALL_CAPS)
    assert container_capabilities([], [], False, host) == list(DEFAULT_CAPS)
    everything_but = container_capabilities(["ALL"], ["CHOWN"], False, host)
    assert "CAP_CHOWN" not in everything_but and len(everything_but) == len(ALL_CAPS) - 1
    assert container_capabilities(["NET_BIND_SERVICE"], ["ALL"], False, host) == \
        ["CAP_NET_BIND_SERVICE"]
    assert container_capabilities([], ["ALL"], False, host) == []
    assert container_capabilities(["ALL"], ["ALL"], False, host) == []
    assert container_capabilities(["cap_sys_admin"], ["KILL"], False, host) == \
        [c for c in DEFAULT_CAPS if c != "CAP_KILL"] + ["CAP_SYS_ADMIN"]
    # What the host's runtimed lacks is never handed out (no CAP_SYS_RESOURCE here).
    lacking = [c for c in host if c != "CAP_SYS_RESOURCE"]
    assert "CAP_SYS_RESOURCE" not in container_capabilities(["ALL"], [], False, lacking)
    assert container_capabilities([], [], True, lacking) == lacking
    with pytest.raises(InvalidArgument, match="CAP_NOPE"):
        container_capabilities(["NOPE"], [], False, host)


def test_privileged_has_every_host_capability_and_no_filters(tmp_path: Path) -> None:
    from runtimed.oci.capabilities import host_capabilities

    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    bnd = int(next(line.split()[1] for line in Path("/proc/self/status").read_text()
                   .splitlines() if line.startswith("CapBnd:")), 16)
    want = [c for i, c in enumerate(ALL_CAPS) if i <= cap_last and bnd >> i & 1]
    assert host_capabilities() == want
    spec = build_container_spec(_with_sc(
        privileged=True, seccomp=SecurityProfile(
            profile_type=SecurityProfileProfileType.RuntimeDefault)), _input(tmp_path))
    assert spec["process"]["capabilities"]["bounding"] == want
    assert "seccomp" not in spec["linux"] and "maskedPaths" not in spec["linux"]
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "rw" in sys_mount["options"]


def test_seccomp_follows_the_capabilities(tmp_path: Path) -> None:
    def allowed(spec: dict[str, Any]) -> set[str]:
        return {n for r in spec["linux"]["seccomp"]["syscalls"]
                if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}

    rd = SecurityProfile(profile_type=SecurityProfileProfileType.RuntimeDefault)
    plain = build_container_spec(_with_sc(seccomp=rd), _input(tmp_path))
    admin = build_container_spec(_with_sc(seccomp=rd, capabilities=Capability(
        add_capabilities=["SYS_ADMIN"])), _input(tmp_path))
    assert "mount" not in allowed(plain) and "mount" in allowed(admin)
    assert "unshare" in allowed(admin) and "clone3" in allowed(admin)
    # The deprecated string form says the same.
    with pytest.warns(DeprecationWarning):
        old = _with_sc(seccomp_profile_path="runtime/default")
    assert build_container_spec(old, _input(tmp_path))["linux"]["seccomp"] == \
        plain["linux"]["seccomp"]
    unconfined = build_container_spec(_with_sc(seccomp=SecurityProfile(
        profile_type=SecurityProfileProfileType.Unconfined)), _input(tmp_path))
    assert "seccomp" not in unconfined["linux"]


def test_selinux_labels_only_where_selinux_is_on(tmp_path: Path) -> None:
    from crib_common.cri.runtime.v1 import SeLinuxOption

    fs = tmp_path / "selinuxfs"
    fs.mkdir()
    off = SecurityDefaults(seccomp=builtin_profile(), apparmor=AppArmor(
        securityfs=tmp_path / "none"), selinux=SELinux(fs))
    cfg = _with_sc(selinux_options=SeLinuxOption(type="my_t", level="s0:c1,c2"))
    spec = build_container_spec(cfg, _input(tmp_path, security=off))
    assert "selinuxLabel" not in spec["process"] and "mountLabel" not in spec["linux"]
    (fs / "enforce").write_text("1")
    spec = build_container_spec(cfg, _input(tmp_path, security=off, pod_selinux=SeLinuxOption(
        user="pod_u", level="s0:c7,c8")))
    _assert_valid(spec)
    # The container's fields win, the pod's fill in, the policy's defaults do the rest.
    assert spec["process"]["selinuxLabel"] == "pod_u:system_r:my_t:s0:c1,c2"
    assert spec["linux"]["mountLabel"] == "pod_u:object_r:container_file_t:s0:c1,c2"
    bare = build_container_spec(_with_sc(), _input(tmp_path, security=off))
    label = bare["process"]["selinuxLabel"]
    assert label.startswith("system_u:system_r:container_t:s0:c")
    # The level is the pod's: the same for every container of the pod.
    assert label == build_container_spec(_with_sc(), _input(tmp_path, security=off))[
        "process"]["selinuxLabel"]


def test_missing_host_path_is_created_by_the_room(tmp_path: Path) -> None:
    from crib_common.cri.runtime.v1 import ContainerConfig, ImageSpec, Mount
    from runtimed.lifecycle.containers import _make_host_paths

    config = ContainerConfig(image=ImageSpec(image="x"), mounts=[
        Mount(container_path="/data", host_path=str(tmp_path / "data" / "deep")),
        Mount(container_path="/vol", image=ImageSpec(image="img"))])
    _make_host_paths(config, {"/vol": str(tmp_path / "image")})
    assert (tmp_path / "data" / "deep").is_dir()
    assert not (tmp_path / "image").exists()
