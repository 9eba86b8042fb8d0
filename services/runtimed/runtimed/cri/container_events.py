"""CRI `GetContainerEvents`: a stream of created/started/stopped/deleted events, each
with its pod's status and its containers' as they were at that moment."""

from __future__ import annotations

from collections.abc import AsyncIterator

from crib_common.cri.runtime.v1 import ContainerEventResponse, GetEventsRequest
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.events import event_message


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @table.stream("/runtime.v1.RuntimeService/GetContainerEvents", GetEventsRequest)
    async def get_container_events(
        _request: GetEventsRequest,
    ) -> AsyncIterator[ContainerEventResponse]:
        sub = node.subscribe(event_message)
        try:
            while True:
                yield await sub.queue.get()
        finally:
            node.unsubscribe(sub)
