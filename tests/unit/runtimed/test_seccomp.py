"""Seccomp profiles: crib's RuntimeDefault file, the evaluation per capability set,
architecture and kernel, the RuntimeDefault setting and Localhost profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crib_common.errors import InvalidArgument
from crib_common.settings import RuntimedSection
from runtimed.oci.capabilities import ALL_CAPS, DEFAULT_CAPS
from runtimed.oci.seccomp import (
    ProfileError,
    builtin_profile,
    load_default_profile,
    load_localhost_profile,
    parse_profile,
)
from runtimed.oci.security import SecurityError, load_security

CLONE_NEWUSER = 0x10000000
NS_MASK = 0x7E020000  # every CLONE_NEW* flag clone(2) takes


def _actions(obj: dict[str, Any]) -> dict[str, set[tuple[str, int | None]]]:
    """Syscall name -> the (action, errno) of its rules without argument conditions."""
    out: dict[str, set[tuple[str, int | None]]] = {}
    for rule in obj.get("syscalls", []):
        if rule.get("args"):
            continue
        for name in rule["names"]:
            out.setdefault(name, set()).add((rule["action"], rule.get("errnoRet")))
    return out


def _allowed(obj: dict[str, Any]) -> set[str]:
    return {n for n, acts in _actions(obj).items() if ("SCMP_ACT_ALLOW", None) in acts}


def test_runtime_default_is_an_allow_list_refusing_with_enosys() -> None:
    obj = builtin_profile().evaluate(frozenset(DEFAULT_CAPS), "amd64", (6, 1))
    assert obj["defaultAction"] == "SCMP_ACT_ERRNO" and obj["defaultErrnoRet"] == 38
    assert obj["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _allowed(obj)
    for ordinary in ("read", "write", "openat", "execve", "clone", "mmap", "futex", "bind",
                     "connect", "nanosleep", "clock_nanosleep", "epoll_wait", "arch_prctl",
                     "chroot"):  # chroot: CAP_SYS_CHROOT is in the default set
        assert ordinary in allowed or ordinary == "clone", ordinary
    refused_for_all = {"keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
                       "io_uring_register", "userfaultfd", "init_module", "finit_module",
                       "kexec_load", "kexec_file_load", "swapon", "swapoff"}
    without_admin = {"unshare", "setns", "mount", "umount2", "pivot_root", "fsopen",
                     "open_tree", "bpf", "perf_event_open", "ptrace", "process_vm_readv"}
    assert not (refused_for_all | without_admin) & allowed
    # An unknown name stays refused by default: the list is what is allowed.
    assert "some_syscall_from_linux_9" not in allowed
    # The kernel answers EPERM for a call it has but the caller may not make.
    assert _actions(obj)["unshare"] == {("SCMP_ACT_ERRNO", 1)}
    assert _actions(obj)["keyctl"] == {("SCMP_ACT_ERRNO", 1)}
    # clone3 hides its flags from the filter: ENOSYS, so libc falls back to clone.
    assert _actions(obj)["clone3"] == {("SCMP_ACT_ERRNO", 38)}


def test_clone_without_cap_sys_admin_is_allowed_only_without_namespace_flags() -> None:
    obj = builtin_profile().evaluate(frozenset(DEFAULT_CAPS), "amd64", (6, 1))
    clone = [r for r in obj["syscalls"] if r["names"] == ["clone"]]
    allow = [r for r in clone if r["action"] == "SCMP_ACT_ALLOW"]
    assert allow == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": NS_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    refusals = {r["args"][0]["value"] for r in clone if r["action"] == "SCMP_ACT_ERRNO"}
    assert CLONE_NEWUSER in refusals and sum(refusals) == NS_MASK
    # s390 passes clone's flags second.
    s390 = builtin_profile().evaluate(frozenset(), "s390x", (6, 1))
    assert {r["args"][0]["index"] for r in s390["syscalls"] if r["names"] == ["clone"]} == {1}


def test_capabilities_grant_their_syscalls() -> None:
    prof = builtin_profile()
    base = _allowed(prof.evaluate(frozenset(DEFAULT_CAPS), "amd64", (6, 1)))
    grants = {
        "CAP_SYS_ADMIN": {"mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf",
                          "perf_event_open", "fsopen", "pivot_root", "sethostname"},
        "CAP_SYS_PTRACE": {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp"},
        "CAP_SYS_BOOT": {"reboot"},
        "CAP_SYS_MODULE": {"delete_module"},
        "CAP_SYSLOG": {"syslog"},
        "CAP_SYS_TIME": {"settimeofday", "clock_settime"},
        "CAP_SYS_NICE": {"mbind", "set_mempolicy", "move_pages"},
        "CAP_SYS_PACCT": {"acct"},
        "CAP_SYS_RAWIO": {"iopl", "ioperm"},
        "CAP_BPF": {"bpf"},
        "CAP_PERFMON": {"perf_event_open"},
        "CAP_DAC_READ_SEARCH": {"open_by_handle_at"},
    }
    for cap, names in grants.items():
        got = _allowed(prof.evaluate(frozenset(DEFAULT_CAPS) | {cap}, "amd64", (6, 1)))
        assert names <= got - base, (cap, names - got)
    # Nobody gets keyrings, io_uring, userfaultfd, module or kexec loading, swap.
    everything = _allowed(prof.evaluate(frozenset(ALL_CAPS), "amd64", (6, 1)))
    assert not {"keyctl", "add_key", "request_key", "io_uring_setup", "userfaultfd",
                "init_module", "finit_module", "kexec_load", "swapon"} & everything


def test_arch_and_kernel_conditions() -> None:
    prof = builtin_profile()
    arm = prof.evaluate(frozenset(), "arm64", (6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" not in _allowed(arm) and "set_tls" in _allowed(arm)
    assert "arch_prctl" in _allowed(prof.evaluate(frozenset(), "amd64", (6, 1)))
    # CAP_BPF exists from Linux 5.8, ptrace is safe under seccomp from 4.8.
    assert "bpf" not in _allowed(prof.evaluate(frozenset({"CAP_BPF"}), "amd64", (5, 4)))
    assert "bpf" in _allowed(prof.evaluate(frozenset({"CAP_BPF"}), "amd64", (5, 8)))
    assert "ptrace" not in _allowed(prof.evaluate(frozenset({"CAP_SYS_PTRACE"}), "amd64",
                                                  (4, 4)))


def test_no_syscall_has_two_unconditional_actions() -> None:
    """libseccomp refuses one syscall with two different actions and no arguments: for
    every capability alone, the default set and all of them, each name has one."""
    prof = builtin_profile()
    sets = [frozenset(), frozenset(DEFAULT_CAPS), frozenset(ALL_CAPS)]
    sets += [frozenset({c}) for c in ALL_CAPS]
    for caps in sets:
        for arch in ("amd64", "arm64", "s390x"):
            conflicts = {n: a for n, a in _actions(prof.evaluate(caps, arch, (6, 1))).items()
                         if len(a) > 1}
            assert not conflicts, (sorted(caps), arch, conflicts)


def test_evaluation_is_cached_per_capability_set_and_copied() -> None:
    from runtimed.oci.seccomp import _evaluate

    prof = builtin_profile()
    _evaluate.cache_clear()
    first = prof.evaluate(frozenset(DEFAULT_CAPS))
    first["syscalls"].clear()  # the caller's copy: the cache keeps its own
    again = prof.evaluate(set(DEFAULT_CAPS))
    assert again["syscalls"]
    info = _evaluate.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    prof.evaluate(frozenset(DEFAULT_CAPS) | {"CAP_SYS_ADMIN"})
    assert _evaluate.cache_info().misses == 2


def test_podmans_profile_loads_as_runtime_default(tmp_path: Path) -> None:
    """Debian's golang-github-containers-common profile (podman's), when installed."""
    path = Path("/usr/share/containers/seccomp.json")
    if not path.exists():
        pytest.skip("golang-github-containers-common is not installed")
    prof = load_default_profile(RuntimedSection(seccomp_profile=path))
    obj = prof.evaluate(frozenset(DEFAULT_CAPS), "amd64", (6, 1))
    assert obj["defaultAction"] == "SCMP_ACT_ERRNO"
    # Looser than crib's: podman lets everyone unshare and use keyrings.
    assert {"unshare", "keyctl"} <= _allowed(obj)


def test_bad_runtime_default_file_stops_start(tmp_path: Path) -> None:
    missing = RuntimedSection(seccomp_profile=tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="runtimed.seccomp_profile: cannot read"):
        load_default_profile(missing)
    with pytest.raises(SecurityError, match="missing.json"):
        load_security(missing)
    bad = tmp_path / "bad.json"
    for text, what in (("{", "not JSON"), ("[]", "not a JSON object"),
                       ('{"syscalls": []}', "defaultAction"),
                       ('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction"),
                       ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],'
                        ' "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1,'
                        ' "op": "SCMP_CMP_EQ"}]}]}', "syscalls.0.args.0.index"),
                       ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action":'
                        ' "SCMP_ACT_ALLOW"}]}', "names no syscall"),
                       ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"],'
                        ' "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}',
                        "minKernel")):
        bad.write_text(text)
        with pytest.raises(ProfileError, match=what):
            load_default_profile(RuntimedSection(seccomp_profile=bad))
    # The setting unset: crib's own file.
    assert load_default_profile(RuntimedSection()).source.endswith("data/seccomp.json")


def test_localhost_profiles_honour_includes_and_excludes(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "comment": "ignored",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": None}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": None},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"name": "ptrace", "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "excludes": {"caps": ["CAP_SYS_PTRACE"]}},
        ]}))
    plain = load_localhost_profile(str(prof), {"CAP_CHOWN"})
    assert _actions(plain) == {"read": {("SCMP_ACT_ALLOW", None)},
                               "write": {("SCMP_ACT_ALLOW", None)},
                               "ptrace": {("SCMP_ACT_ERRNO", 1)}}
    admin = load_localhost_profile(str(prof), {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"})
    assert set(_actions(admin)) == {"read", "write", "mount"}
    with pytest.raises(InvalidArgument, match="absolute"):
        load_localhost_profile("p.json", set())
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_localhost_profile(str(tmp_path / "nope.json"), set())
    prof.write_text('{"defaultAction": "SCMP_ACT_EVERYTHING"}')
    with pytest.raises(InvalidArgument, match="defaultAction"):
        load_localhost_profile(str(prof), set())


def test_a_bare_oci_object_is_a_profile_too() -> None:
    obj = parse_profile(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}),
        "inline").evaluate(frozenset(), "amd64", (6, 1))
    assert obj == {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                   "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                   "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO",
                                 "errnoRet": 1}]}
