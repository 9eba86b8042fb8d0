"""OCI runtime helpers: signal names, the hybrid-cgroup check for crun, error mapping."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from crib_common.errors import FailedPrecondition
from runtimed.oci.runtime import OciRuntime, check_hybrid_cgroups, signal_number


def test_signal_number() -> None:
    assert signal_number("SIGTERM") == signal.SIGTERM
    assert signal_number("term") == signal.SIGTERM
    assert signal_number("9") == 9
    assert signal_number("SIGRTMIN+3") == signal.SIGRTMIN + 3
    with pytest.raises((ValueError, AttributeError)):
        signal_number("SIGNOPE")


def test_hybrid_check_without_unified(tmp_path: Path) -> None:
    assert check_hybrid_cgroups(tmp_path)[0] is True


def test_hybrid_check_empty_controllers(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    assert check_hybrid_cgroups(tmp_path) == (True, "cgroup2 owns no controller")


def test_hybrid_check_controller_in_use_is_reported(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (tmp_path / "unified" / "cgroup.subtree_control").write_text("hugetlb\n")
    ok, message = check_hybrid_cgroups(tmp_path)
    assert not ok
    assert "hugetlb" in message and "subtree_control" in message
    ok, message = check_hybrid_cgroups(tmp_path, fix=False)
    assert not ok and "hugetlb" in message


async def test_missing_binary_is_unusable(tmp_path: Path) -> None:
    rt = OciRuntime(name="x", path=str(tmp_path / "nope"), root=tmp_path / "root")
    await rt.probe()
    assert not rt.usable and "not an executable" in rt.reason


async def test_runtime_errors_map(tmp_path: Path) -> None:
    script = tmp_path / "fake-runtime"
    script.write_text("#!/bin/sh\n"
                      "case \"$2\" in\n"
                      "  state) echo 'container \"x\" does not exist' >&2; exit 1;;\n"
                      "  delete) echo 'container does not exist' >&2; exit 1;;\n"
                      "  kill) echo 'container not running' >&2; exit 1;;\n"
                      "  start) echo '{\"msg\":\"exec failed: no such binary\"}' >&2; exit 1;;\n"
                      "esac\n")
    script.chmod(0o755)
    rt = OciRuntime(name="fake", path=str(script), root=tmp_path / "root")
    assert await rt.state("x") is None
    await rt.delete("x")  # missing is success
    await rt.kill("x", 15)  # not running is success
    with pytest.raises(FailedPrecondition, match="no such binary"):
        await rt.start("x")


def test_hostname_and_log_path_checks() -> None:
    from crib_common.errors import InvalidArgument
    from runtimed.cri.container_create import log_path
    from runtimed.cri.sandbox_run import check_hostname

    check_hostname("web-0.default")
    for bad in ("-F/etc/shadow", "a" * 65, "has space", "bad/slash"):
        with pytest.raises(InvalidArgument):
            check_hostname(bad)
    assert log_path("/var/log/pods/x", "c/0.log") == "/var/log/pods/x/c/0.log"
    assert log_path("", "") == ""
    with pytest.raises(InvalidArgument):
        log_path("/var/log/pods/x", "../../../etc/cron.d/evil")


def test_runtime_warnings_are_not_passed_on() -> None:
    from runtimed.oci.runtime import without_warnings

    raw = ('time="2026-12-01T00:00:00Z" level=warning msg="cannot toggle freezer: cgroups '
           'not configured for container"\n'
           'time="2026-12-01T00:00:00Z" level=error msg="runc create failed: sysctl '
           '\\"kernel.panic\\" is not in a separate kernel namespace"\n')
    assert without_warnings(raw).startswith('time="2026-12-01T00:00:00Z" level=error')
    assert "freezer" not in without_warnings(raw)
    assert without_warnings('{"level":"warning","msg":"x"}\n{"level":"error","msg":"y"}') \
        == '{"level":"error","msg":"y"}'
    assert without_warnings("WARN[0000] something\nreal error") == "real error"
    assert without_warnings("plain failure") == "plain failure"
