"""deploy/ agrees with the code: compose file, systemd units, Dockerfile, default crib.toml.

The compose file is validated against the Compose Specification's own JSON schema
(vendored in tests/data, see compose-spec.ORIGIN.md); every command must be one of the
project's console scripts, and every socket or directory the settings default to must be
shared where the daemons that use it run.
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from crib_common.settings import CribSettings, load_settings

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DAEMONS = ("gateway", "imaged", "runtimed", "netd")
VENV_BIN = "/opt/crib/venv/bin/"
# The compose file's host paths, relative to a directory tests may choose (empty: "/").
HOST_ROOT = "${CRIB_HOST_ROOT:-}"
# Host directories the daemons and a kubelet on the host must see each other's mounts in.
PROPAGATED = ("/run/crib", "/var/lib/crib", "/run/netns", "/var/log/pods", "/var/lib/kubelet")


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


# ------------------------------------------------------------------ compose


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_catches_a_broken_compose_file() -> None:
    # The vendored schema really constrains: a misspelt service key is refused.
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    broken = _compose()
    broken["services"]["gateway"]["comand"] = broken["services"]["gateway"].pop("command")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_one_service_per_daemon_running_its_console_script() -> None:
    services = _compose()["services"]
    assert set(services) == set(DAEMONS)
    scripts = _scripts()
    images = {svc["image"] for svc in services.values()}
    assert len(images) == 1, "one image for every daemon"
    for name, svc in services.items():
        command = svc["command"]
        assert command == [f"{VENV_BIN}crib-{name}"], name
        assert f"crib-{name}" in scripts
        # The Dockerfile installs the project into that venv.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "python3 -m venv /opt/crib/venv" in dockerfile
    assert "/opt/crib/venv/bin/pip install" in dockerfile


def _mounts(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for vol in svc.get("volumes", []):
        assert isinstance(vol, dict), "long syntax only: propagation must be explicit"
        out[vol["target"]] = vol
    return out


def test_sockets_and_shared_directories_match_the_settings() -> None:
    defaults = CribSettings()
    services = _compose()["services"]
    sockets = {
        "gateway": [defaults.gateway.socket, defaults.gateway.http_socket],
        "imaged": [defaults.imaged.socket],
        "runtimed": [defaults.runtimed.socket],
        "netd": [defaults.netd.socket],
    }
    all_sockets = [s for group in sockets.values() for s in group]
    socket_dirs = {str(s.parent) for s in all_sockets}
    assert socket_dirs == {"/run/crib"}, "every daemon socket lives in /run/crib"
    for name, svc in services.items():
        mounts = _mounts(svc)
        # Every daemon reaches every other daemon's socket (the gateway all of them).
        assert "/run/crib" in mounts, name
        assert mounts["/run/crib"]["source"] == HOST_ROOT + "/run/crib"
        # Nothing overrides a socket path away from the defaults the others expect.
        env = svc.get("environment", {})
        assert not [k for k in env if k.endswith("__SOCKET")], name
        assert env.get("CRIB_CONFIG") == "/etc/crib/crib.toml"
    state_dirs = {
        "imaged": [defaults.imaged.root],
        "runtimed": [defaults.runtimed.root],
        "netd": [defaults.netd.root, defaults.netd.cache_dir],
    }
    for name, dirs in state_dirs.items():
        mounts = _mounts(services[name])
        for d in dirs:
            assert str(d).startswith("/var/lib/crib/"), d
        shared = mounts["/var/lib/crib"]
        assert shared["bind"]["propagation"] == "rshared", name
    # Pinned network namespaces: netd makes them, runtimed hands them to the runtime.
    for name in ("netd", "runtimed"):
        mounts = _mounts(services[name])
        netns = mounts[str(defaults.netd.netns_dir)]
        assert netns["bind"]["propagation"] == "rshared", name
    for name in ("netd", "imaged", "runtimed"):
        assert services[name].get("privileged") is True, name
    assert not services["gateway"].get("privileged"), "the gateway needs no privileges"


def test_host_paths_are_the_container_paths() -> None:
    # A kubelet on the host names its volumes and log paths by host path: inside runtimed's
    # container they must resolve to the same directory. Only tests move the host side.
    for name, svc in _compose()["services"].items():
        for target, vol in _mounts(svc).items():
            assert vol["type"] == "bind", (name, target)
            assert vol["source"] in (HOST_ROOT + target, "/sys/fs/cgroup"), (name, target)
            if target in PROPAGATED:
                assert vol["bind"]["propagation"] == "rshared", (name, target)


def test_runtimed_sees_the_kubelet_and_the_host_cgroups() -> None:
    runtimed = _compose()["services"]["runtimed"]
    mounts = _mounts(runtimed)
    assert {"/var/log/pods", "/var/lib/kubelet", "/run/crib", "/var/lib/crib"} <= set(mounts)
    # conmon goes to a cgroup outside runtimed's container: the host's tree, writable.
    assert runtimed["cgroup"] == "host"
    assert mounts["/sys/fs/cgroup"]["source"] == "/sys/fs/cgroup"
    assert not mounts["/sys/fs/cgroup"].get("read_only")


def test_compose_builds_from_a_chosen_base_and_names_its_image() -> None:
    common = _compose()["x-crib-common"]
    assert common["image"] == "${CRIB_IMAGE:-crib:latest}"
    assert common["build"]["args"]["BASE_IMAGE"] == "${CRIB_BASE_IMAGE:-debian:12-slim}"
    assert "ARG BASE_IMAGE" in (DEPLOY / "Dockerfile").read_text()


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_podman_settings_cover_what_podman_compose_ignores() -> None:
    conf = tomllib.loads((DEPLOY / "podman/containers.conf").read_text())
    # `cgroup: host` is ignored by podman-compose 1.6: the engine's default must be it.
    assert conf["containers"]["cgroupns"] == "host"
    # No systemd as PID 1 on the hosts this is for.
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"
    assert conf["engine"]["events_logger"] == "file"
    # stop_grace_period reaches only podman-compose's own down/stop.
    grace = _seconds(_compose()["x-crib-common"]["stop_grace_period"])
    assert conf["engine"]["stop_timeout"] >= grace
    # podman's own CNI network stays out of netd's conf_dir.
    assert conf["network"]["network_config_dir"].rstrip("/") != str(CribSettings().netd.conf_dir)


def test_compose_start_order() -> None:
    services = _compose()["services"]
    assert set(services["gateway"]["depends_on"]) == {"runtimed", "imaged", "netd"}
    assert set(services["runtimed"]["depends_on"]) == {"imaged", "netd"}


# ------------------------------------------------------------------ systemd


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / f"crib-{name}.service").read_text())
    return parser


@pytest.mark.parametrize("name", DAEMONS)
def test_systemd_unit_runs_an_existing_console_script(name: str) -> None:
    unit = _unit(name)
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[0] == f"{VENV_BIN}crib-{name}"
    assert Path(exec_start[0]).name in _scripts()
    assert unit["Service"]["Restart"] == "always"
    assert unit["Service"]["Environment"] == "CRIB_CONFIG=/etc/crib/crib.toml"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_runtimed_unit_leaves_containers_running() -> None:
    service = _unit("runtimed")["Service"]
    # conmon and the containers stay when runtimed restarts.
    assert service["KillMode"] == "process"
    assert service["Delegate"] == "yes"
    # The brief's rule for this project: never a negative OOM score adjustment.
    assert not service.get("OOMScoreAdjust", "0").startswith("-")


@pytest.mark.parametrize("name", ["runtimed", "node"])
def test_units_make_runtimeds_directories_shared_first(name: str) -> None:
    """runtimed refuses directories that do not propagate mounts; the units run the same
    script as `make up` before it, on the directories of deploy/crib.toml's defaults."""
    pre = _unit(name)["Service"]["ExecStartPre"].split()
    assert pre[0] == "/bin/bash" and pre[1] == "/opt/crib/scripts/share-mounts.sh"
    assert (ROOT / "scripts" / "share-mounts.sh").is_file()
    defaults = CribSettings().runtimed
    for path in (defaults.run_dir, defaults.root, defaults.pinns_dir, defaults.pod_log_dir):
        assert any(str(path).startswith(d) for d in pre[2:]), path


def test_systemd_ordering() -> None:
    gateway = _unit("gateway")["Unit"]
    for dep in ("crib-runtimed.service", "crib-imaged.service", "crib-netd.service"):
        assert dep in gateway["After"].split() and dep in gateway["Wants"].split()
    runtimed = _unit("runtimed")["Unit"]
    for dep in ("crib-imaged.service", "crib-netd.service"):
        assert dep in runtimed["After"].split() and dep in runtimed["Wants"].split()


def test_node_unit_is_the_default_that_leaves_daemons_and_containers() -> None:
    unit = _unit("node")
    service = unit["Service"]
    exec_start = service["ExecStart"].split()
    assert exec_start[0] == f"{VENV_BIN}crib-node" and "crib-node" in _scripts()
    # The pid dir `crib restart` and scripts/up.sh use, so restart and adoption find them.
    assert exec_start[exec_start.index("--pid-dir") + 1] == "/run/crib"
    # systemd signals crib-node only: the daemons it stops itself, containers stay.
    assert service["KillMode"] == "process"
    assert service["Delegate"] == "yes"
    assert service["Restart"] == "always"
    conflicts = set(unit["Unit"]["Conflicts"].split())
    assert conflicts == {f"crib-{d}.service" for d in DAEMONS}
    # Every state directory the per-daemon units ask for.
    for name in DAEMONS:
        wanted = _unit(name)["Service"].get("StateDirectory")
        if wanted:
            assert wanted in service["StateDirectory"].split()


@pytest.mark.parametrize("name", DAEMONS)
def test_daemon_units_are_the_alternative_never_beside_crib_node(name: str) -> None:
    assert "crib-node.service" in _unit(name)["Unit"]["Conflicts"].split()


def test_make_up_starts_crib_node_by_default() -> None:
    up = (Path(__file__).resolve().parent.parent / "scripts/up.sh").read_text()
    assert "launcher=${CRIB_LAUNCHER:-node}" in up


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_installs_the_runtime_packages() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=debian:12-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    for pkg in ("runc", "crun", "conmon", "containernetworking-plugins", "catatonit",
                "iproute2", "iptables", "python3", "python3-venv"):
        assert re.search(rf"\s{re.escape(pkg)}(\s|\\)", text), pkg


# ------------------------------------------------------------------ crib.toml


def _uncommented(text: str) -> str:
    """crib.toml with every "# key = value" and "# [section]" line made live."""
    live = []
    setting = re.compile(r"^# (\[[^\]]+\]|[a-z_0-9]+ = .*)$")
    for line in text.splitlines():
        match = setting.match(line)
        if match:
            live.append(match.group(1))
    return "\n".join(live) + "\n"


def test_crib_toml_loads_and_equals_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CRIB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CRIB_CONFIG", str(DEPLOY / "crib.toml"))
    assert load_settings() == CribSettings()
    # Now with every documented key uncommented: still exactly the defaults.
    live = tmp_path / "crib.toml"
    live.write_text(_uncommented((DEPLOY / "crib.toml").read_text()))
    monkeypatch.setenv("CRIB_CONFIG", str(live))
    assert load_settings() == CribSettings()


def _leaf_keys(data: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("registries",):
            keys |= _leaf_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def test_crib_toml_documents_every_key() -> None:
    live = tomllib.loads(_uncommented((DEPLOY / "crib.toml").read_text()))
    documented = _leaf_keys(live)
    defaults = CribSettings().model_dump(mode="json", exclude_none=True)
    missing = sorted(_leaf_keys(defaults) - documented - {"imaged.registries"})
    assert not missing, f"deploy/crib.toml lacks these settings (add them, commented): {missing}"
