"""`userns.mappings`: what a pod, a container and a mount may ask for, refused with
InvalidArgument naming the field and the rule (containerd 2.x's checks)."""

from __future__ import annotations

import pytest

from crib_common.cri.runtime.v1 import IdMapping, Mount, NamespaceMode, NamespaceOption, \
    UserNamespace
from crib_common.errors import InvalidArgument
from crib_common.nsholder import IdMapping as Line
from runtimed.userns.mappings import PodUserns, check_container_userns, \
    check_mount_mappings, check_pod_userns, oci_userns

U = [IdMapping(host_id=65536, container_id=0, length=65536)]
G = [IdMapping(host_id=131072, container_id=0, length=65536)]


def _ns(mode: NamespaceMode = NamespaceMode.POD, uids: list[IdMapping] | None = None,
        gids: list[IdMapping] | None = None, **kw: NamespaceMode) -> NamespaceOption:
    return NamespaceOption(userns_options=UserNamespace(
        mode=mode, uids=U if uids is None else uids, gids=G if gids is None else gids),
        **kw)


def _pod(ns: NamespaceOption) -> PodUserns | None:
    return check_pod_userns(ns, host_network=ns.network == NamespaceMode.NODE,
                            host_pid=ns.pid == NamespaceMode.NODE,
                            host_ipc=ns.ipc == NamespaceMode.NODE)


def test_pod_mode_pod_with_one_mapping_of_root_is_accepted() -> None:
    pod = _pod(_ns())
    assert pod == PodUserns(uids=(Line(0, 65536, 65536),), gids=(Line(0, 131072, 65536),))
    assert pod.root == (65536, 131072)
    # Stored in the sandbox record and read back the same.
    assert PodUserns.from_record(pod.to_record()) == pod


def test_host_users_is_no_pod_namespace() -> None:
    assert _pod(NamespaceOption()) is None
    assert _pod(NamespaceOption(userns_options=UserNamespace(mode=NamespaceMode.NODE))) is None
    assert PodUserns.from_record({}) is None


@pytest.mark.parametrize(("ns", "message"), [
    (_ns(NamespaceMode.CONTAINER), "mode CONTAINER is not supported"),
    (_ns(NamespaceMode.TARGET), "mode TARGET is not supported"),
    (_ns(uids=U + U), "exactly one uid mapping, got 2"),
    (_ns(gids=[]), "exactly one gid mapping, got 0"),
    (_ns(uids=[IdMapping(host_id=65536, container_id=1, length=65535)]),
     "does not map container ID 0"),
    (_ns(gids=[IdMapping(host_id=65536, container_id=0, length=0)]), "is empty"),
    (_ns(uids=[IdMapping(host_id=2**32 - 10, container_id=0, length=65536)]),
     "runs past the largest valid ID"),
    (_ns(NamespaceMode.NODE), "mode NODE (the host's user namespace) takes no mappings"),
    (_ns(network=NamespaceMode.NODE), "the host's network namespace"),
    (_ns(pid=NamespaceMode.NODE), "the host's PID namespace"),
    (_ns(ipc=NamespaceMode.NODE), "the host's IPC namespace"),
])
def test_pod_refusals_name_the_rule(ns: NamespaceOption, message: str) -> None:
    with pytest.raises(InvalidArgument, match="namespace_options.userns_options") as err:
        _pod(ns)
    assert message in err.value.message


def test_containers_join_their_pods_namespace() -> None:
    pod = _pod(_ns())
    check_container_userns(None, pod)  # absent: the pod's
    check_container_userns(NamespaceOption(), pod)
    check_container_userns(_ns(), pod)
    check_container_userns(NamespaceOption(userns_options=UserNamespace(
        mode=NamespaceMode.NODE)), None)
    other = [IdMapping(host_id=9 * 65536, container_id=0, length=65536)]
    for ns, message in (
            (_ns(uids=other), "mappings uid [0->589824 x65536] gid [0->131072 x65536] "
                              "differ from the pod's uid [0->65536 x65536]"),
            (_ns(NamespaceMode.NODE, uids=[], gids=[]), "mode NODE differs from the pod's "
                                                       "(POD)"),
            (_ns(NamespaceMode.TARGET), "mode TARGET is not supported")):
        with pytest.raises(InvalidArgument) as err:
            check_container_userns(ns, pod)
        assert message in err.value.message
    with pytest.raises(InvalidArgument, match=r"mode POD differs from the pod's \(NODE\)"):
        check_container_userns(_ns(), None)


def test_mount_mappings_must_be_the_pods() -> None:
    pod = _pod(_ns())
    plain = Mount(container_path="/v", host_path="/h")
    assert check_mount_mappings(0, plain, pod) is False
    assert check_mount_mappings(0, plain, None) is False
    mapped = Mount(container_path="/v", host_path="/h", uid_mappings=U, gid_mappings=G)
    assert check_mount_mappings(3, mapped, pod) is True
    with pytest.raises(InvalidArgument, match=r"mounts\[3\] \(/v\): ID-mapped mounts need a "
                                              "pod with its own user namespace"):
        check_mount_mappings(3, mapped, None)
    with pytest.raises(InvalidArgument, match="needs both uidMappings and gidMappings"):
        check_mount_mappings(1, Mount(container_path="/v", uid_mappings=U), pod)
    with pytest.raises(InvalidArgument, match="differ from the pod's user namespace"):
        check_mount_mappings(1, Mount(container_path="/v", uid_mappings=G, gid_mappings=G),
                             pod)


def test_oci_entry_joins_by_path_with_mappings() -> None:
    pod = _pod(_ns())
    assert pod is not None
    entry, maps = oci_userns("/run/crib/ns/x/user", pod)
    assert entry == {"type": "user", "path": "/run/crib/ns/x/user"}
    assert maps == {"uidMappings": [{"containerID": 0, "hostID": 65536, "size": 65536}],
                    "gidMappings": [{"containerID": 0, "hostID": 131072, "size": 65536}]}
