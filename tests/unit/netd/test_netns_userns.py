"""netd's network namespaces inside a pod's user namespace (`netns`): made owned by it,
`lo` up, removed like any other; a path that is no user namespace is refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crib_common.errors import InvalidArgument
from crib_common.models.netd import PodNetworkCreate
from crib_common.nsholder import IdMapping, spawn_holder
from netd.netns import NamespaceManager, is_pinned_netns, is_user_namespace
from tests.support.namespaces import owner_userns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


async def test_netns_is_made_inside_the_user_namespace(tmp_path: Path) -> None:
    holder = spawn_holder(["user"])
    try:
        m = IdMapping(container_id=0, host_id=2_000_000, length=65536)
        holder.write_maps([m], [m])
        userns = holder.ns_path("user")
        assert is_user_namespace(Path(userns))
        assert not is_user_namespace(Path("/proc/self/ns/net"))
        assert not is_user_namespace(tmp_path / "missing")
        manager = NamespaceManager(tmp_path / "netns")
        try:
            path = await manager.create("pod1", userns)
            assert is_pinned_netns(path)
            assert owner_userns(path) == os.stat(userns).st_ino
            # lo is up in it (asked over netlink inside; our /sys shows the host's).
            out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link", "show",
                                  "lo"], capture_output=True, text=True, check=True).stdout
            assert ",UP" in out.split(">")[0], out
            await manager.remove(path)
            assert not path.exists()
        finally:
            from netd.netns import _libc

            _libc.umount2(str(tmp_path / "netns").encode(), 2)
    finally:
        holder.release()


async def test_create_refuses_a_path_that_is_no_user_namespace(tmp_path: Path) -> None:
    from crib_common.settings import NetdSection
    from netd.manager import NetworkManager

    manager = NetworkManager(NetdSection(root=tmp_path / "lib", netns_dir=tmp_path / "ns",
                                         conf_dir=tmp_path / "conf"))
    with pytest.raises(InvalidArgument, match="is not a pinned user namespace"):
        await manager.create(PodNetworkCreate(pod_id="p1", pod_name="p", pod_namespace="n",
                                              userns_path=str(tmp_path)))
