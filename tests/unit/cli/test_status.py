"""`crib status`: the cgroup and OOM score lines from runtimed's /healthz details."""

from __future__ import annotations

import json

from crib_cli.commands.node import cgroup_lines, nri_lines


def test_cgroup_lines() -> None:
    body = {"details": {"cgroups": {"mode": "unified", "version": 2, "driver": "systemd",
                                    "oom_score_adj": {"cap_sys_resource": False,
                                                      "own_score": 0, "restricted": True}}}}
    assert cgroup_lines(json.dumps(body)) == [
        "cgroups: v2 (unified), driver systemd",
        "oom_score_adj: values below 0 are raised to it (runtimed lacks CAP_SYS_RESOURCE)"]
    body["details"]["cgroups"]["oom_score_adj"]["restricted"] = False  # type: ignore[index]
    assert cgroup_lines(json.dumps(body))[1] == "oom_score_adj: applied as the kubelet asks"
    assert cgroup_lines("") == [] and cgroup_lines("{}") == []


def test_nri_lines_list_connected_plugins_in_call_order() -> None:
    body = {"details": {"nri": {"enabled": True, "socket": "/var/run/nri/nri.sock",
                                "plugins": [
                                    {"id": "05-topo", "kind": "external", "pid": 41,
                                     "events": ["CREATE_CONTAINER", "REMOVE_CONTAINER"]},
                                    {"id": "10-log", "kind": "pre-launched", "pid": 42,
                                     "events": []}]}}}
    assert nri_lines(json.dumps(body)) == [
        "nri: /var/run/nri/nri.sock, 2 plugin(s)",
        "  05-topo (external, pid 41): CREATE_CONTAINER,REMOVE_CONTAINER",
        "  10-log (pre-launched, pid 42): none",
    ]
    assert nri_lines(json.dumps({"details": {"nri": {"enabled": False}}})) == ["nri: disabled"]
    assert nri_lines("not json") == []
