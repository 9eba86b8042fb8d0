"""AppArmor: crib's default profile compiles, and the loaded/not-loaded decisions, on a
fake of the kernel's securityfs (this host has AppArmor off; the live path needs
/sys/kernel/security/apparmor)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from crib_common.cri.runtime.v1 import (
    ContainerConfig,
    ContainerMetadata,
    ImageSpec,
    LinuxContainerConfig,
    LinuxContainerSecurityContext,
    SecurityProfile,
    SecurityProfileProfileType,
)
from crib_common.errors import FailedPrecondition, InvalidArgument
from runtimed.oci.apparmor import AppArmor, ParserError, render_default_profile, run_parser
from runtimed.oci.seccomp import builtin_profile
from runtimed.oci.security import SecurityDefaults, apply_security

PARSER = shutil.which("apparmor_parser") or "/sbin/apparmor_parser"


def _securityfs(tmp_path: Path, *loaded: str) -> Path:
    fs = tmp_path / "apparmor"
    fs.mkdir()
    # The kernel's format: one "name (mode)" line per profile.
    (fs / "profiles").write_text("".join(f"{line}\n" for line in loaded))
    return fs


def _fake_parser(tmp_path: Path, fs: Path, exit_code: int = 0) -> str:
    """Stands in for apparmor_parser --replace: 'loads' the profile by adding its name
    to the fake kernel list, and records its arguments."""
    script = tmp_path / "fake-parser"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/parser-calls
[ {exit_code} = 0 ] || {{ echo "parse failure" >&2; exit {exit_code}; }}
name=$(sed -n 's/^profile \\([^ ]*\\) .*/\\1/p' "$3")
echo "$name (enforce)" >> {fs}/profiles
""")
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(not Path(PARSER).exists(), reason="Debian's apparmor package is needed")
def test_default_profile_compiles() -> None:
    text = render_default_profile("crib-default")
    assert "profile crib-default " in text and "${" not in text
    for rule in ("deny mount,", "deny @{crib_proc}/sys/** wkl,", "deny /sys/** wkl,",
                 "ptrace (trace,read,tracedby,readby) peer=crib-default,"):
        assert rule in text
    # Compiled to binary policy without touching the kernel.
    assert run_parser(text, "--skip-kernel-load", "--stdout", parser=PARSER)
    with pytest.raises(ParserError, match="syntax error"):
        run_parser("profile x {\n  /tmp/** zq,\n}\n", "--skip-kernel-load", "--stdout",
                   parser=PARSER)


def test_disabled_host(tmp_path: Path) -> None:
    aa = AppArmor(securityfs=tmp_path / "absent")
    assert not aa.enabled() and not aa.ensure_default_loaded()
    assert aa.profile_for("runtime/default", "", False) is None
    assert aa.profile_for("", "", False) is None
    with pytest.raises(InvalidArgument, match="not enabled"):
        aa.profile_for("localhost", "mine", False)
    assert "not enabled" in aa.status().message


def test_runtime_default_loads_crib_profile_when_missing(tmp_path: Path) -> None:
    fs = _securityfs(tmp_path, "other (complain)")
    aa = AppArmor("crib-default", securityfs=fs, parser=_fake_parser(tmp_path, fs))
    assert not aa.status().default_loaded
    assert "not loaded" in aa.status().message
    assert aa.profile_for("runtime/default", "", False) == "crib-default"
    assert aa.loaded("crib-default")
    assert aa.status().message == "AppArmor in force: RuntimeDefault is profile crib-default"
    # Loaded now: later containers do not run the parser again.
    assert aa.profile_for("", "", False) == "crib-default"
    assert aa.ensure_default_loaded()
    calls = (tmp_path / "parser-calls").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("--skip-cache --replace ")
    # Unconfined and privileged run without one.
    assert aa.profile_for("unconfined", "", False) is None
    assert aa.profile_for("runtime/default", "", True) is None


def test_a_profile_that_cannot_be_loaded_fails_the_container(tmp_path: Path) -> None:
    fs = _securityfs(tmp_path)
    aa = AppArmor("crib-default", securityfs=fs, parser=_fake_parser(tmp_path, fs, 1))
    with pytest.raises(ParserError, match="parse failure"):
        aa.ensure_default_loaded()
    with pytest.raises(FailedPrecondition, match="cannot be loaded"):
        aa.profile_for("runtime/default", "", False)


def test_localhost_must_be_loaded(tmp_path: Path) -> None:
    fs = _securityfs(tmp_path, "mine (enforce)", "with space (complain)")
    aa = AppArmor(securityfs=fs, parser=str(tmp_path / "never-run"))
    assert aa.profile_for("localhost", "mine", False) == "mine"
    assert aa.profile_for("localhost", "localhost/mine", True) == "mine"  # even privileged
    assert aa.profile_for("localhost", "with space", False) == "with space"
    with pytest.raises(InvalidArgument, match="not loaded"):
        aa.profile_for("localhost", "min", False)
    with pytest.raises(InvalidArgument, match="without a name"):
        aa.profile_for("localhost", "", False)


def test_spec_carries_the_profile(tmp_path: Path) -> None:
    fs = _securityfs(tmp_path, "crib-default (enforce)", "mine (enforce)")
    defaults = SecurityDefaults(seccomp=builtin_profile(), apparmor=AppArmor(securityfs=fs))

    def profile(**sc: Any) -> Any:
        cfg = ContainerConfig(metadata=ContainerMetadata(name="c"), image=ImageSpec(image="i"),
                              linux=LinuxContainerConfig(
                                  security_context=LinuxContainerSecurityContext(**sc)))
        process: dict[str, Any] = {}
        apply_security(cfg.linux.security_context, [], bool(sc.get("privileged")), defaults,
                       None, "pod", process, {})
        return process.get("apparmorProfile")

    kind = SecurityProfileProfileType
    assert profile(apparmor=SecurityProfile(profile_type=kind.RuntimeDefault)) == \
        "crib-default"
    assert profile() == "crib-default"  # nothing said: the default, as containerd
    assert profile(apparmor=SecurityProfile(profile_type=kind.Unconfined)) is None
    assert profile(apparmor=SecurityProfile(profile_type=kind.Localhost,
                                            localhost_ref="mine")) == "mine"
    with pytest.warns(DeprecationWarning):
        assert profile(apparmor_profile="localhost/mine") == "mine"
    with pytest.warns(DeprecationWarning):
        with pytest.raises(InvalidArgument, match="unknown AppArmor profile"):
            profile(apparmor_profile="bogus")
    assert profile(privileged=True) is None
