"""Status read and written without the generated types: the same bytes as theirs."""

from __future__ import annotations

import pytest

from crib_common.cri.runtime.v1 import (
    RuntimeCondition,
    RuntimeFeatures,
    RuntimeHandler,
    RuntimeHandlerFeatures,
    RuntimeStatus,
    StatusRequest,
    StatusResponse,
)
from crib_common.errors import InvalidArgument
from cri_gateway.status import _handlers, status_request_verbose, status_response, \
    verbose_info


def _reference(conditions: list[tuple[str, bool, str, str]],
               handlers: list[tuple[str, bool, bool]], info: dict[str, str]) -> bytes:
    return bytes(StatusResponse(
        status=RuntimeStatus(conditions=[
            RuntimeCondition(type=t, status=s, reason=r, message=m)
            for t, s, r, m in conditions]),
        info=info,
        runtime_handlers=[RuntimeHandler(name=n, features=RuntimeHandlerFeatures(
            recursive_read_only_mounts=rro, user_namespaces=u)) for n, rro, u in handlers],
        features=RuntimeFeatures(supplemental_groups_policy=True)))


@pytest.mark.parametrize("conditions,handlers,info", [
    ([("RuntimeReady", True, "", ""), ("NetworkReady", True, "", "")],
     [("", True, False), ("crun", False, False), ("runc", True, False)], {}),
    ([("RuntimeReady", False, "ImagedUnavailable", "imaged is not available: é"),
      ("NetworkReady", False, "NoCNIConfig", "no network config in /etc/cni")],
     [], {"runtimed": "{}", "netd": '{"ready": false}', "imaged": ""}),
    ([("RuntimeReady", True, "", "")], [("", False, True)], {"": "x"}),
])
def test_response_matches_generated(conditions: list[tuple[str, bool, str, str]],
                                    handlers: list[tuple[str, bool, bool]],
                                    info: dict[str, str]) -> None:
    data = status_response(conditions, handlers, info)
    assert data == _reference(conditions, handlers, info)
    parsed = StatusResponse().parse(data)
    assert [c.type for c in parsed.status.conditions] == [c[0] for c in conditions]
    assert parsed.features.supplemental_groups_policy


def test_handlers_default_first_unusable_left_out() -> None:
    body = {"details": {"handlers": {
        "runc": {"usable": True, "default": True,
                 "features": {"recursive_read_only_mounts": True}},
        "crun": {"usable": False}, "kata": {"usable": True}}}}
    assert _handlers(body) == [("", True, False), ("kata", False, False), ("runc", True, False)]


def test_request() -> None:
    assert status_request_verbose(b"") is False
    assert status_request_verbose(bytes(StatusRequest(verbose=True))) is True
    # Unknown fields of a newer kubelet are skipped.
    assert status_request_verbose(b"\x08\x01" + b"\x12\x02hi" + b"\x18\x05") is True
    for bad in (b"\xff\xff", b"\x08", b"\x0a\x01x", b"\x12\x05ab", b"\x0f", b"\x00\x00"):
        with pytest.raises(InvalidArgument, match="malformed StatusRequest"):
            status_request_verbose(bad)


def test_verbose_info_names_the_state_dir() -> None:
    import json

    info = verbose_info({"ready": True, "details": {"state_dir": "/run/crib/runtimed"}},
                        {}, {})
    assert json.loads(info["config"]) == {"stateDir": "/run/crib/runtimed"}
    assert json.loads(info["runtimed"])["details"]["state_dir"] == "/run/crib/runtimed"
    # runtimed down: its health has no details, and there is no config to name.
    assert "config" not in verbose_info({}, {}, {})
