"""Domain events (`node.Event`) -> GetContainerEvents messages."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ContainerEventResponse, ContainerEventType

from ..node import Event
from .status import container_status, sandbox_status

__all__ = ["event_message"]

_TYPE = {
    "created": ContainerEventType.CONTAINER_CREATED_EVENT,
    "started": ContainerEventType.CONTAINER_STARTED_EVENT,
    "stopped": ContainerEventType.CONTAINER_STOPPED_EVENT,
    "deleted": ContainerEventType.CONTAINER_DELETED_EVENT,
}


def event_message(event: Event) -> ContainerEventResponse:
    """api.proto's ContainerEventResponse: each carries the pod's status and the
    statuses of all its containers, as they are when the event happens."""
    msg = ContainerEventResponse(container_id=event.oid,
                                 container_event_type=ContainerEventType(_TYPE[event.kind]),
                                 created_at=event.created_at)
    if event.pod is not None:
        msg.pod_sandbox_status = sandbox_status(event.pod)
        msg.containers_statuses = [container_status(c) for c in event.containers]
    return msg
