"""CRI `RuntimeConfig` (the configured cgroup driver), `UpdateRuntimeConfig`, and the
metrics RPCs: `ListMetricDescriptors` (cAdvisor's set, `runtimed.metrics`),
`ListPodSandboxMetrics` and `StreamPodSandboxMetrics` for every ready pod and its
containers, from the same reading as the stats RPCs (`runtimed.stats`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog

from crib_common.cri.runtime.v1 import (
    CgroupDriver,
    LinuxRuntimeConfiguration,
    ListMetricDescriptorsRequest,
    ListMetricDescriptorsResponse,
    ListPodSandboxMetricsRequest,
    ListPodSandboxMetricsResponse,
    PodSandboxMetrics,
    RuntimeConfigRequest,
    RuntimeConfigResponse,
    StreamPodSandboxMetricsRequest,
    StreamPodSandboxMetricsResponse,
    UpdateRuntimeConfigRequest,
    UpdateRuntimeConfigResponse,
)
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.listing import stats_pages
from ..messages.metrics import metric_descriptors, pod_sandbox_metrics
from ..stats import pod_usage
from ..store.records import SandboxRecord

log = structlog.get_logger("crib.runtimed")


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/RuntimeConfig", RuntimeConfigRequest)
    async def runtime_config(_request: RuntimeConfigRequest) -> RuntimeConfigResponse:
        # The kubelet (1.28+, KubeletCgroupDriverFromCRI) takes its cgroupDriver from here.
        driver = (CgroupDriver.SYSTEMD if runtimed.node.cfg.cgroup_driver == "systemd"
                  else CgroupDriver.CGROUPFS)
        return RuntimeConfigResponse(
            linux=LinuxRuntimeConfiguration(cgroup_driver=CgroupDriver(driver)))

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
        return ListMetricDescriptorsResponse(descriptors=metric_descriptors())

    node = runtimed.node

    def running() -> list[SandboxRecord]:
        return [r for r in node.sandboxes.values() if r.status.state == "ready"]

    async def pod_metrics(rec: SandboxRecord) -> PodSandboxMetrics:
        # The same reading as ListPodSandboxStats (`stats.pod_usage`), other messages.
        return pod_sandbox_metrics(await pod_usage(node, rec))

    @table.unary("/runtime.v1.RuntimeService/ListPodSandboxMetrics",
                 ListPodSandboxMetricsRequest)
    async def list_pod_sandbox_metrics(
        _request: ListPodSandboxMetricsRequest,
    ) -> ListPodSandboxMetricsResponse:
        return ListPodSandboxMetricsResponse(
            pod_metrics=list(await asyncio.gather(*(pod_metrics(r) for r in running()))))

    @table.stream("/runtime.v1.RuntimeService/StreamPodSandboxMetrics",
                  StreamPodSandboxMetricsRequest)
    def stream_pod_sandbox_metrics(
        _request: StreamPodSandboxMetricsRequest,
    ) -> AsyncIterator[StreamPodSandboxMetricsResponse]:
        return stats_pages(running(), lambda r: r.meta.id in node.sandboxes, pod_metrics,
                           lambda page: StreamPodSandboxMetricsResponse(
                               pod_sandbox_metrics=page))
