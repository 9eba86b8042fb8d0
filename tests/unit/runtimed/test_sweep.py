"""The orphan sweep leaves a removed container whose release is still queued alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from crib_common.state import StateStore
from crib_common.models.imaged import Snapshot
from runtimed.lifecycle.containers import RELEASE_KIND
from runtimed.lifecycle.sweep import Sweeper
from runtimed.store.records import ContainerMeta, ContainerRecord

RELEASING = "a" * 64
ORPHAN = "b" * 64


class FakeImaged:
    """Two container snapshots; records what the sweep removed."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    async def list_snapshots(self, **_: Any) -> list[Snapshot]:
        return [Snapshot(key=cid, image_id="sha256:x", mounts=[], upperdir="/u",
                         labels={"io.crib.container": cid}) for cid in (RELEASING, ORPHAN)]

    async def remove_snapshot(self, key: str, **_: Any) -> None:
        self.removed.append(key)


class FakeNetd:
    async def list_pod_networks(self, **_: Any) -> list[Any]:
        return []

    async def remove_pod_network(self, pod_id: str, **_: Any) -> None:
        raise AssertionError(f"no network to remove, asked for {pod_id}")


def test_releasing_container_is_not_an_orphan(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.put(RELEASE_KIND, RELEASING, ContainerRecord(meta=ContainerMeta(
        id=RELEASING, pod_id="c" * 64, name="x", handler="runc", created_at=1, image="i",
        bundle=str(tmp_path / "c" / RELEASING))))
    for d in ("c", "p", "s", "exits", "ns"):
        (tmp_path / d).mkdir()
    for cid in (RELEASING, ORPHAN):
        (tmp_path / "c" / cid).mkdir()
    unmounted: list[str] = []
    removed_cgroups: list[str] = []
    monitors = {"/crib.monitors": [f"crib-conmon-{RELEASING}", f"crib-conmon-{ORPHAN}",
                                   "someone-else"]}
    imaged = FakeImaged()
    node = SimpleNamespace(
        store=store, sandboxes={}, containers={}, imaged=imaged, netd=FakeNetd(),
        pods_dir=tmp_path / "p", bundles=tmp_path / "c", sock_dir=tmp_path / "s",
        exit_dir=tmp_path / "exits",
        cfg=SimpleNamespace(pinns_dir=str(tmp_path / "ns"), monitor_cgroup="/crib.monitors",
                            cgroup_driver="cgroupfs"),
        host=SimpleNamespace(unmount_under=unmounted.append, unpin_namespaces=None,
                             cgroup_children=lambda path: set(monitors.get(path, ())),
                             remove_cgroup=removed_cgroups.append))
    clean, removed = asyncio.run(Sweeper(node).sweep())  # type: ignore[arg-type]
    assert clean
    assert imaged.removed == [ORPHAN]
    assert (tmp_path / "c" / RELEASING).is_dir()
    assert not (tmp_path / "c" / ORPHAN).exists()
    # The monitor cgroup of the container being released stays; the orphan's goes, and
    # a cgroup crib did not name is not looked at.
    assert removed_cgroups == [f"/crib.monitors/crib-conmon-{ORPHAN}"]
    assert removed == {"snapshots": 1, "directories": 1, "monitor_cgroups": 1}
    store.close()
