"""`ExecPlugin` against small script plugins: environment, stdin, results, errors, timeout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from netd.cni.invoke import CniPluginError, ExecPlugin, Invocation


def _plugin(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "crib-test-plugin"
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    path.chmod(0o755)
    return path


async def test_environment_and_stdin_reach_the_plugin(tmp_path: Path) -> None:
    plugin = _plugin(tmp_path, (
        "conf = json.load(sys.stdin)\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('CNI_')}\n"
        "print(json.dumps({'conf': conf, 'env': env}))"))
    inv = Invocation("ADD", "c1", "/run/netns/x", "eth0", [("IgnoreUnknown", "1"), ("A", "b")],
                     [tmp_path, Path("/usr/lib/cni")])
    out = await ExecPlugin().run(plugin, inv, {"cniVersion": "1.0.0", "big": "x" * 200_000}, 10)
    assert out is not None
    assert out["conf"]["big"] == "x" * 200_000
    assert out["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                          "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                          "CNI_ARGS": "IgnoreUnknown=1;A=b",
                          "CNI_PATH": f"{tmp_path}:/usr/lib/cni"}


async def test_spec_error_object_becomes_the_message(tmp_path: Path) -> None:
    # Exits before reading stdin: that must not break the call.
    plugin = _plugin(tmp_path, (
        "print(json.dumps({'cniVersion': '1.0.0', 'code': 7, 'msg': 'Invalid Configuration',"
        " 'details': 'Network 192.168.0.0/31 too small'}))\nsys.exit(1)"))
    with pytest.raises(CniPluginError) as info:
        await ExecPlugin().run(plugin, Invocation("ADD"), {"x": "y" * 100_000}, 10)
    assert info.value.code == 7
    assert str(info.value) == ("CNI plugin crib-test-plugin ADD failed (code 7): "
                               "Invalid Configuration: Network 192.168.0.0/31 too small")


async def test_plain_failure_reports_exit_status_and_stderr(tmp_path: Path) -> None:
    plugin = _plugin(tmp_path, "sys.stderr.write('panic: boom\\n')\nsys.exit(3)")
    with pytest.raises(CniPluginError, match="exit status 3: panic: boom"):
        await ExecPlugin().run(plugin, Invocation("DEL"), {}, 10)


async def test_empty_output_is_none_and_garbage_is_an_error(tmp_path: Path) -> None:
    assert await ExecPlugin().run(_plugin(tmp_path, "pass"), Invocation("DEL"), {}, 10) is None
    with pytest.raises(CniPluginError, match="not JSON"):
        await ExecPlugin().run(_plugin(tmp_path, "print('hello')"), Invocation("ADD"), {}, 10)


async def test_timeout_kills_the_plugin(tmp_path: Path) -> None:
    plugin = _plugin(tmp_path, "time.sleep(30)")
    with pytest.raises(CniPluginError, match="did not finish within 0.3s"):
        await ExecPlugin().run(plugin, Invocation("ADD"), {}, 0.3)
