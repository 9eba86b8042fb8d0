"""CRI `RuntimeConfig`, `UpdateRuntimeConfig` and the metrics RPCs runtimed answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from crib_common.cri.runtime.v1 import (
    CgroupDriver,
    LinuxRuntimeConfiguration,
    ListMetricDescriptorsRequest,
    ListMetricDescriptorsResponse,
    ListPodSandboxMetricsRequest,
    ListPodSandboxMetricsResponse,
    RuntimeConfigRequest,
    RuntimeConfigResponse,
    StreamPodSandboxMetricsRequest,
    StreamPodSandboxMetricsResponse,
    UpdateRuntimeConfigRequest,
    UpdateRuntimeConfigResponse,
)
from crib_common.server import CriTable

from ..daemon import Runtimed

log = structlog.get_logger("crib.runtimed")


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/RuntimeConfig", RuntimeConfigRequest)
    async def runtime_config(_request: RuntimeConfigRequest) -> RuntimeConfigResponse:
        # crib drives cgroups through cgroupfs paths (no systemd on the node).
        return RuntimeConfigResponse(
            linux=LinuxRuntimeConfiguration(cgroup_driver=CgroupDriver(CgroupDriver.CGROUPFS)))

    @table.unary("/runtime.v1.RuntimeService/UpdateRuntimeConfig", UpdateRuntimeConfigRequest)
    async def update_runtime_config(
        request: UpdateRuntimeConfigRequest,
    ) -> UpdateRuntimeConfigResponse:
        # The pod CIDR belongs to the CNI configuration netd manages; recorded in the log.
        cidr = request.runtime_config.network_config.pod_cidr if request.runtime_config else ""
        log.info("runtime config update", pod_cidr=cidr)
        return UpdateRuntimeConfigResponse()

    @table.unary("/runtime.v1.RuntimeService/ListMetricDescriptors",
                 ListMetricDescriptorsRequest)
    async def list_metric_descriptors(
        _request: ListMetricDescriptorsRequest,
    ) -> ListMetricDescriptorsResponse:
        return ListMetricDescriptorsResponse()

    @table.unary("/runtime.v1.RuntimeService/ListPodSandboxMetrics",
                 ListPodSandboxMetricsRequest)
    async def list_pod_sandbox_metrics(
        _request: ListPodSandboxMetricsRequest,
    ) -> ListPodSandboxMetricsResponse:
        return ListPodSandboxMetricsResponse()

    @table.stream("/runtime.v1.RuntimeService/StreamPodSandboxMetrics",
                  StreamPodSandboxMetricsRequest)
    def stream_pod_sandbox_metrics(
        _request: StreamPodSandboxMetricsRequest,
    ) -> AsyncIterator[StreamPodSandboxMetricsResponse]:
        # No metric descriptors (the kubelet's cAdvisor reads the cgroups): as with
        # ListPodSandboxMetrics, nothing to send, so no message, then EOF.
        return _nothing()


async def _nothing() -> AsyncIterator[StreamPodSandboxMetricsResponse]:
    return
    yield  # an async generator that yields nothing
