"""cAdvisor metrics (`runtimed.metrics` samples of a `runtimed.stats` reading) -> the CRI
ListMetricDescriptors and ListPodSandboxMetrics messages.

Labels follow the kubelet's containerPrometheusLabelsFunc: `container` is the name in
the pod spec ("" for the pod's own cgroup), `id` the cgroup path, `image` the image the
kubelet asked for, `name` the container ID, `namespace` and `pod` the pod's.
"""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ContainerMetrics, Metric, MetricDescriptor
from crib_common.cri.runtime.v1 import MetricType as CriMetricType
from crib_common.cri.runtime.v1 import PodSandboxMetrics, UInt64Value

from .. import metrics
from ..stats import ContainerUsage, PodUsage

__all__ = ["container_metrics", "metric_descriptors", "pod_sandbox_metrics"]

_TYPES = {"counter": CriMetricType.COUNTER, "gauge": CriMetricType.GAUGE}


def metric_descriptors() -> list[MetricDescriptor]:
    """Every metric crib serves (data/cadvisor_metrics.json)."""
    return [MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.label_keys))
            for d in metrics.descriptors()]


def _metric(s: metrics.Sample) -> Metric:
    # api.proto: "Timestamp should be 0 if the metric was gathered live."
    return Metric(name=s.name, timestamp=0, metric_type=CriMetricType(_TYPES[s.metric_type]),
                  label_values=list(s.label_values), value=UInt64Value(value=s.value))


def container_metrics(usage: ContainerUsage, pod: PodUsage) -> ContainerMetrics | None:
    """One container's metrics; None when its cgroup is gone (exited and deleted)."""
    m, pm = usage.rec.meta, pod.rec.meta
    labels = metrics.MetricLabels(container=m.name, id=m.cgroup_path, image=m.image,
                                  name=m.id, namespace=pm.namespace, pod=pm.name)
    layer = usage.layer
    fs = metrics.FsUsage(device=layer.mountpoint, usage_bytes=layer.bytes,
                         limit_bytes=layer.capacity_bytes, inodes_free=layer.inodes_free,
                         inodes_total=layer.inodes_total) if layer is not None else None
    samples = metrics.container_samples(
        labels, usage.cgroup, fs=fs, spec=metrics.spec_from_resources(usage.rec.status.resources),
        device_names=usage.device_names)
    if not samples:
        return None
    return ContainerMetrics(container_id=m.id, metrics=[_metric(s) for s in samples])


def pod_sandbox_metrics(usage: PodUsage) -> PodSandboxMetrics:
    """The pod's own metrics (its cgroup and network interfaces) and each container's."""
    meta = usage.rec.meta
    labels = metrics.MetricLabels(id=meta.pod_cgroup, namespace=meta.namespace, pod=meta.name)
    samples = metrics.pod_samples(labels, usage.interfaces,
                                  usage.cgroup if usage.cgroup.exists else None)
    containers = [c for c in (container_metrics(u, usage) for u in usage.containers)
                  if c is not None]
    return PodSandboxMetrics(pod_sandbox_id=meta.id, metrics=[_metric(s) for s in samples],
                             container_metrics=containers)
