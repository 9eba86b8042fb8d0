"""Plugins' adjustments laid on an OCI config in index order, with owners: a second
plugin setting what another set is a conflict naming both (containerd/nri result.go)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from crib_common.nri import v1alpha1 as api
from runtimed.nri.adjust import AdjustmentConflict, Adjuster, Owners, Updates
from runtimed.nri.cdi import CdiRegistry


def _spec() -> dict[str, Any]:
    return {"process": {"args": ["sh"], "env": ["PATH=/bin", "KEEP=1", "DROP=1"]},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/old"}],
            "annotations": {"a": "1"},
            "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}],
                                    "cpu": {"shares": 2}}}}


def test_adjustments_applied_and_removals() -> None:
    spec = _spec()
    adj = Adjuster("c1", spec, Owners())
    adj.apply(api.ContainerAdjustment(
        env=[api.KeyValue(key="FOO", value="bar"), api.KeyValue(key="-DROP")],
        mounts=[api.Mount(destination="/nri", type="bind", source="/host/nri",
                          options=["rbind", "ro"]),
                api.Mount(destination="-/data")],
        annotations={"b": "2", "-a": ""},
        hooks=api.Hooks(prestart=[api.Hook(path="/bin/true", args=["true"])]),
        rlimits=[api.PosixRlimit(type="RLIMIT_NOFILE", hard=1024, soft=512)],
        linux=api.LinuxContainerAdjustment(resources=api.LinuxResources(
            memory=api.LinuxMemory(limit=api.OptionalInt64(value=64 << 20)),
            cpu=api.LinuxCpu(cpus="0"))),
    ), "05-a")
    assert spec["process"]["env"] == ["PATH=/bin", "KEEP=1", "FOO=bar"]
    assert spec["mounts"] == [{"destination": "/nri", "type": "bind", "source": "/host/nri",
                               "options": ["rbind", "ro"]}]
    assert spec["annotations"] == {"b": "2"}
    assert spec["hooks"] == {"prestart": [{"path": "/bin/true", "args": ["true"]}]}
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20}
    assert res["cpu"] == {"shares": 2, "cpus": "0"}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]


def test_two_plugins_setting_one_entry_conflict_naming_both() -> None:
    adj = Adjuster("c1", _spec(), Owners())
    adj.apply(api.ContainerAdjustment(env=[api.KeyValue(key="FOO", value="a")]), "05-a")
    adj.apply(api.ContainerAdjustment(env=[api.KeyValue(key="BAR", value="b")]), "10-b")
    with pytest.raises(AdjustmentConflict, match="plugins 05-a and 10-b both adjust env FOO"):
        adj.apply(api.ContainerAdjustment(env=[api.KeyValue(key="FOO", value="b")]), "10-b")


def test_removal_frees_the_entry_for_another_plugin() -> None:
    spec = _spec()
    adj = Adjuster("c1", spec, Owners())
    adj.apply(api.ContainerAdjustment(annotations={"x": "a"}), "05-a")
    adj.apply(api.ContainerAdjustment(annotations={"-x": ""}), "10-b")
    adj.apply(api.ContainerAdjustment(annotations={"x": "b"}), "10-b")
    assert spec["annotations"]["x"] == "b"


def test_unsupported_adjustments_are_refused_by_name() -> None:
    adj = Adjuster("c1", _spec(), Owners())
    with pytest.raises(Exception, match="cgroups_path"):
        adj.apply(api.ContainerAdjustment(linux=api.LinuxContainerAdjustment(
            cgroups_path="/x")), "05-a")


def test_updates_merge_per_container_and_conflict() -> None:
    updates = Updates()
    updates.add([api.ContainerUpdate(container_id="c2", linux=api.LinuxContainerUpdate(
        resources=api.LinuxResources(cpu=api.LinuxCpu(shares=api.OptionalUInt64(value=512)))))],
        "05-a")
    updates.add([api.ContainerUpdate(container_id="c2", ignore_failure=True,
                                     linux=api.LinuxContainerUpdate(resources=api.LinuxResources(
                                         memory=api.LinuxMemory(
                                             limit=api.OptionalInt64(value=1 << 30)))))],
                "10-b")
    assert updates.by_container == {"c2": ({"cpu": {"shares": 512},
                                            "memory": {"limit": 1 << 30}}, False)}
    with pytest.raises(AdjustmentConflict, match="05-a and 10-b"):
        updates.add([api.ContainerUpdate(container_id="c2", linux=api.LinuxContainerUpdate(
            resources=api.LinuxResources(cpu=api.LinuxCpu(
                shares=api.OptionalUInt64(value=2)))))], "10-b")


def test_cdi_devices_claimed_once_and_injected(tmp_path: Path) -> None:
    adj = Adjuster("c1", _spec(), Owners())
    adj.apply(api.ContainerAdjustment(cdi_devices=[api.CdiDevice(name="crib.test/dev=n")]),
              "05-a")
    with pytest.raises(AdjustmentConflict, match="05-a and 10-b both adjust CDI device"):
        adj.apply(api.ContainerAdjustment(cdi_devices=[api.CdiDevice(
            name="crib.test/dev=n")]), "10-b")
    (tmp_path / "crib.json").write_text(json.dumps({
        "cdiVersion": "0.6.0", "kind": "crib.test/dev",
        "containerEdits": {"env": ["COMMON=1"]},
        "devices": [{"name": "n", "containerEdits": {
            "env": ["DEV=n"],
            "deviceNodes": [{"path": "/dev/crib-null", "hostPath": "/dev/null"}],
            "mounts": [{"hostPath": "/etc/hostname", "containerPath": "/cdi/hostname",
                        "options": ["rbind", "ro"]}],
            "hooks": [{"hookName": "createContainer", "path": "/bin/true"}],
            "additionalGids": [0, 44]}}]}))
    spec = adj.spec
    CdiRegistry([tmp_path / "missing", tmp_path]).inject(spec, adj.cdi_devices)
    assert spec["process"]["env"][-2:] == ["COMMON=1", "DEV=n"]
    null = os.stat("/dev/null")
    assert spec["linux"]["devices"] == [{"path": "/dev/crib-null", "type": "c",
                                         "major": os.major(null.st_rdev),
                                         "minor": os.minor(null.st_rdev), "fileMode": 0o666}]
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    assert spec["mounts"][-1] == {"destination": "/cdi/hostname", "source": "/etc/hostname",
                                  "type": "bind", "options": ["rbind", "ro"]}
    assert spec["hooks"] == {"createContainer": [{"path": "/bin/true"}]}
    assert spec["process"]["user"]["additionalGids"] == [44]
    with pytest.raises(Exception, match="no spec of kind other.test/x"):
        CdiRegistry([tmp_path]).inject(_spec(), ["other.test/x=1"])
    with pytest.raises(Exception, match="not in the crib.test/dev spec"):
        CdiRegistry([tmp_path]).inject(_spec(), ["crib.test/dev=zz"])
