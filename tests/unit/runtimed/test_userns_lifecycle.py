"""A user-namespaced pod and its container through the lifecycles, over fakes: the user
namespace pinned first and handed to netd while its holder runs, the rootfs, image
volume and mapped bind mounts ID-mapped, config.json joining the namespace; a failure at
every step rolled back with nothing left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crib_common.cri.runtime.v1 import IdMapping, Mount, NamespaceMode, NamespaceOption, \
    RemovePodSandboxRequest, RunPodSandboxRequest, UserNamespace
from crib_common.errors import CribError

from .fakes import Fakes
from .lifecycle_support import Daemon, container_request, make_settings, pod_request, \
    steps_of

MAPPING = [IdMapping(host_id=65536 * 5, container_id=0, length=65536)]


def _userns() -> NamespaceOption:
    return NamespaceOption(pid=NamespaceMode.CONTAINER, userns_options=UserNamespace(
        mode=NamespaceMode.POD, uids=MAPPING, gids=MAPPING))


def _pod() -> RunPodSandboxRequest:
    request = pod_request("userns")
    request.config.linux.security_context.namespace_options = _userns()
    return request


async def test_userns_pod_and_container_roll_back_at_every_step(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fakes = Fakes(exit_dir=settings.runtimed.run_dir / "exits")
    d = await Daemon.open(settings, fakes)
    d.runtimed.node.userns_supported = True
    volume = tmp_path / "volume"
    volume.mkdir()
    held_when_netd_asked: list[bool] = []
    original = fakes.netd.create_pod_network

    async def watched(request, *, timeout=None):  # type: ignore[no-untyped-def]
        held_when_netd_asked.append(fakes.host.holding)
        return await original(request, timeout=timeout)

    fakes.netd.create_pod_network = watched  # type: ignore[method-assign]
    try:
        await d.settle_sweep()
        mark = len(fakes.steps.calls)
        sid = (await d.call("RunPodSandbox", _pod())).pod_sandbox_id
        pod_steps = steps_of(fakes.steps.since(mark))
        calls = [s for s, _ in pod_steps]
        assert calls.index("host.pod_namespaces") < calls.index("netd.create_pod_network")
        assert "host.pin_namespaces" not in calls
        assert fakes.netd.requests[-1].userns_path == "/proc/4242/ns/user"
        assert held_when_netd_asked == [True]
        meta = d.runtimed.node.sandboxes[sid].meta
        assert meta.userns == str(Path(settings.runtimed.pinns_dir) / sid / "user")

        def ctr() -> object:
            req = container_request(sid, _pod())
            req.config.linux.security_context.namespace_options = _userns()
            req.config.mounts.append(Mount(container_path="/vol", host_path=str(volume),
                                           uid_mappings=MAPPING, gid_mappings=MAPPING))
            return req

        mark = len(fakes.steps.calls)
        cid = (await d.call("CreateContainer", ctr())).container_id
        ctr_steps = steps_of(fakes.steps.since(mark))
        bundle = d.runtimed.node.containers[cid].meta.bundle
        spec = json.loads((Path(bundle) / "config.json").read_text())
        assert {"type": "user", "path": meta.userns} in spec["linux"]["namespaces"]
        assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 65536 * 5,
                                                 "size": 65536}]
        assert [m["source"] for m in spec["mounts"] if m["destination"] == "/vol"] == [
            f"{bundle}/mounts/1"]
        idmapped = [t for t, ms in fakes.host.mounts.items()
                    if any(o.startswith("idmap=") for m in ms for o in m.options)]
        assert sorted(idmapped) == sorted([f"{bundle}/rootfs", f"{bundle}/images/0",
                                           f"{bundle}/mounts/1"])
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}

        for step, nth in pod_steps:
            fakes.steps.fail(step, nth)
            with pytest.raises((CribError, OSError)) as failed:
                await d.call("RunPodSandbox", _pod())
            assert f"injected failure at {step}" in str(failed.value), (step, nth)
            assert d.leftovers() == {}, (step, nth)
            assert not fakes.host.holding
        sid = (await d.call("RunPodSandbox", _pod())).pod_sandbox_id
        mapped_steps = [s for s, _ in ctr_steps if "idmap" in s]
        assert mapped_steps == ["host.mount_overlay_idmapped", "host.mount_overlay_idmapped",
                                "host.idmapped_clone"], ctr_steps
        assert [s for s, _ in pod_steps] == ["host.apply_pod_resources", "host.pod_namespaces",
                                             "netd.create_pod_network", "host.write_pod_files",
                                             "host.mount_shm"]
        for step, nth in ctr_steps:
            if step.startswith(("runtime.", "monitor.")):
                continue  # the plain container's rollback covers those
            req = ctr()
            req.pod_sandbox_id = sid  # type: ignore[attr-defined]
            fakes.steps.fail(step, nth)
            with pytest.raises((CribError, OSError)) as failed:
                await d.call("CreateContainer", req)
            assert f"injected failure at {step}" in str(failed.value), (step, nth)
            assert not d.runtimed.node.containers, (step, nth)
            assert not [t for t in fakes.host.mounts if "/c/" in t], (step, nth)
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()
