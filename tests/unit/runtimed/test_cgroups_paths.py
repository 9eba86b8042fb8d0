"""Where pods and containers sit, for the cgroupfs and systemd drivers."""

from __future__ import annotations

import pytest
from crib_common.errors import InvalidArgument

from runtimed.cgroups.paths import (
    container_cgroup,
    pod_cgroup_parent,
    pod_cgroup_path,
    runtime_global_args,
    slice_path,
)

SID = "0123456789abcdef0123456789abcdef"
CID = "fedcba9876543210" * 4


@pytest.mark.parametrize(("name", "path"), [
    ("kubepods.slice", "/kubepods.slice"),
    ("kubepods-burstable.slice", "/kubepods.slice/kubepods-burstable.slice"),
    ("kubepods-burstable-pod1.slice",
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"),
    ("-.slice", "/"),
])
def test_slice_expansion(name: str, path: str) -> None:
    assert slice_path(name) == path


@pytest.mark.parametrize("bad", ["kubepods", "a/b.slice", "a--b.slice", "-a.slice",
                                 "a-.slice", "kubepods.scope"])
def test_bad_slice_names(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        slice_path(bad)


def test_kubelet_parent_used_as_given() -> None:
    # No crib prefix: the kubelet made and limited exactly this cgroup.
    assert pod_cgroup_parent("/kubepods/burstable/pod1", setting="/crib", sandbox_id=SID,
                             driver="cgroupfs") == "/kubepods/burstable/pod1"
    assert pod_cgroup_parent("/kubepods//besteffort/pod2/", setting="/crib",
                             sandbox_id=SID, driver="cgroupfs") == "/kubepods/besteffort/pod2"
    assert pod_cgroup_parent("kubepods-burstable-pod1.slice", setting="/crib",
                             sandbox_id=SID, driver="systemd") == "kubepods-burstable-pod1.slice"


def test_setting_applies_only_without_a_parent() -> None:
    assert pod_cgroup_parent("", setting="/crib", sandbox_id=SID,
                             driver="cgroupfs") == "/crib/crib-0123456789abcdef"
    assert pod_cgroup_parent("", setting="/", sandbox_id=SID,
                             driver="cgroupfs") == "/crib-0123456789abcdef"
    name = pod_cgroup_parent("", setting="/crib", sandbox_id=SID, driver="systemd")
    assert name == "crib-pod0123456789abcdef.slice"
    assert slice_path(name) == "/crib.slice/crib-pod0123456789abcdef.slice"
    assert pod_cgroup_parent("", setting="kubepods.slice", sandbox_id=SID,
                             driver="systemd") == "kubepods-pod0123456789abcdef.slice"


@pytest.mark.parametrize(("requested", "driver"), [
    ("kubepods-burstable-pod1.slice", "cgroupfs"),   # a systemd kubelet, cgroupfs crib
    ("/kubepods/burstable/pod1", "systemd"),          # and the other way round
    ("/kubepods/../etc", "cgroupfs"),
])
def test_parent_of_the_wrong_form(requested: str, driver: str) -> None:
    with pytest.raises(InvalidArgument):
        pod_cgroup_parent(requested, setting="/crib", sandbox_id=SID,
                          driver=driver)  # type: ignore[arg-type]


def test_container_cgroup_cgroupfs() -> None:
    # cAdvisor takes the container ID from the last path element.
    c = container_cgroup("/kubepods/burstable/pod1", CID, "cgroupfs")
    assert c.oci_path == c.fs_path == f"/kubepods/burstable/pod1/{CID}"
    assert pod_cgroup_path("/kubepods/burstable/pod1", "cgroupfs") == "/kubepods/burstable/pod1"


def test_container_cgroup_systemd() -> None:
    c = container_cgroup("kubepods-burstable-pod1.slice", CID, "systemd")
    assert c.oci_path == f"kubepods-burstable-pod1.slice:crib:{CID}"
    assert c.fs_path == ("/kubepods.slice/kubepods-burstable.slice/"
                         f"kubepods-burstable-pod1.slice/crib-{CID}.scope")
    assert pod_cgroup_path("kubepods-burstable-pod1.slice", "systemd") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
    with pytest.raises(InvalidArgument):
        container_cgroup("/kubepods/pod1", CID, "systemd")
    with pytest.raises(InvalidArgument):
        container_cgroup("kubepods.slice", "a:b", "systemd")


def test_runtime_flags() -> None:
    assert runtime_global_args("systemd") == ["--systemd-cgroup"]
    assert runtime_global_args("cgroupfs") == []
