"""`crib pods` finds the pull a pod waits on: by the pod uid imaged's pull table carries
(from the kubelet's sandbox config), else by namespace and name."""

from __future__ import annotations

from crib_cli.commands.pods import _pull_text, _pulls_by_pod
from crib_common.models.imaged import PullInfo, PullPod, PullRequester


def _info(pull_id: str, pod: PullPod | None, done: int = 50) -> PullInfo:
    return PullInfo(id=pull_id, reference=f"reg.example/team/{pull_id}:v1",
                    requester=PullRequester(kind="cri", pod=pod), state="pulling",
                    started_at=0, size=200, done=done, rate=2_000_000)


def test_pulls_keyed_by_uid_and_name() -> None:
    web = _info("web", PullPod(name="web-0", namespace="shop", uid="u-1"))
    anon = _info("anon", None)
    nameless = _info("side", PullPod(name="side", namespace="", uid=""))
    by_pod = _pulls_by_pod([web, anon, nameless])
    assert by_pod["u-1"] == [web] and by_pod["shop/web-0"] == [web]
    assert by_pod["/side"] == [nameless]
    assert "" not in by_pod and all(anon not in v for v in by_pod.values())


def test_pull_text() -> None:
    assert _pull_text(_info("web", None)) == "web:v1 25% 2.0 MB/s"
