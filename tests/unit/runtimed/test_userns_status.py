"""Status offers pod user namespaces only after the start-up probe said they work."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed import daemon as daemon_module

from .lifecycle_support import Daemon


def _offered(d: Daemon) -> dict[str, bool]:
    _ready, _reason, _message, details = d.runtimed.health()
    return {name: h["features"]["user_namespaces"] for name, h in details.items()}


async def test_user_namespaces_follow_the_probe(daemon: Daemon,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Opened without probing: nothing offered, and the reason says so.
    assert _offered(daemon) and not any(_offered(daemon).values())
    assert daemon.runtimed.node.userns_reason == "not probed yet"

    async def works(state_dir: Path) -> tuple[bool, str]:
        return True, f"ID-mapped mounts of {state_dir} work"

    async def fails(state_dir: Path) -> tuple[bool, str]:
        return False, "mount_setattr: Invalid argument"

    monkeypatch.setattr(daemon_module, "probe_idmap", works)
    await daemon.runtimed._probe_userns()
    assert all(_offered(daemon).values())
    monkeypatch.setattr(daemon_module, "probe_idmap", fails)
    await daemon.runtimed._probe_userns()
    assert not any(_offered(daemon).values())
    assert "Invalid argument" in daemon.runtimed.node.userns_reason


async def test_probe_refuses_a_state_dir_others_cannot_search(daemon: Daemon) -> None:
    # pytest's tmp_path sits under a 0700 directory: a pod's root could not reach it.
    await daemon.runtimed._probe_userns()
    assert not any(_offered(daemon).values())
    assert "is not searchable by others" in daemon.runtimed.node.userns_reason


async def test_a_user_namespaced_pod_needs_the_probe(daemon: Daemon) -> None:
    from crib_common.cri.runtime.v1 import IdMapping, NamespaceMode, UserNamespace
    from crib_common.errors import FailedPrecondition

    from .lifecycle_support import pod_request

    request = pod_request("userns")
    mapping = [IdMapping(host_id=65536, container_id=0, length=65536)]
    request.config.linux.security_context.namespace_options.userns_options = UserNamespace(
        mode=NamespaceMode.POD, uids=mapping, gids=mapping)
    with pytest.raises(FailedPrecondition, match="not available on this node: not probed"):
        await daemon.call("RunPodSandbox", request)
    assert not daemon.runtimed.node.sandboxes
