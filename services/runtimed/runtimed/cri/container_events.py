"""CRI `GetContainerEvents`: a stream of created/started/stopped/deleted events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from crib_common.cri.runtime.v1 import ContainerEventResponse, GetEventsRequest
from crib_common.server import CriTable

from ..service import Runtime, iterate_events


def register(table: CriTable, rt: Runtime) -> None:
    @table.stream("/runtime.v1.RuntimeService/GetContainerEvents", GetEventsRequest)
    async def get_container_events(
        _request: GetEventsRequest,
    ) -> AsyncIterator[ContainerEventResponse]:
        async for event in iterate_events(rt):
            yield event
