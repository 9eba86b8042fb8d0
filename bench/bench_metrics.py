"""ListPodSandboxMetrics next to ListPodSandboxStats, for the same running pods.

    sudo python -m bench.bench_metrics [--pods 20] [--iterations 100]

crib runs as tests/support/stack.py's Stack; `--pods` pods each run one busybox container
(`sleep`), created through the independent grpcio client. Both RPCs read the same thing
(`runtimed.stats.pod_usage`: the pod and container cgroups, imaged's layer usage, the pod's
interfaces); metrics turn it into cAdvisor samples. Figures: p50/p90 in ms and the reply
size. Only crib: Debian's containerd answers ListPodSandboxMetrics with nothing.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from collections.abc import Sequence

import structlog
from cri_api.v1 import api_pb2

from bench.harness import image_stub, measure, runtime_stub
from tests.support.images import busybox_image, push_image
from tests.support.registry import Registry
from tests.support.stack import Stack


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with Registry() as registry:
        pushed = push_image(registry, "crib-bench/busybox", "v1",
                            busybox_image(cmd=["sleep", "3600000"]))
        stack = Stack.create(CRIB_LOG__LEVEL="warning")
        try:
            stack.start()
            rt = runtime_stub(stack.cri_socket)
            img = api_pb2.ImageSpec(image=pushed.reference)
            image_stub(stack.cri_socket).PullImage(api_pb2.PullImageRequest(image=img),
                                                   timeout=120)
            for i in range(args.pods):
                uid = uuid.uuid4().hex[:10]
                pod = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(
                    name=f"m-{i}", uid=uid, namespace="crib-bench"), hostname=f"m-{i}",
                    log_directory=f"/tmp/crib-bench-logs/{uid}")
                sid = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod),
                                       timeout=60).pod_sandbox_id
                cid = rt.CreateContainer(api_pb2.CreateContainerRequest(
                    pod_sandbox_id=sid, sandbox_config=pod, config=api_pb2.ContainerConfig(
                        metadata=api_pb2.ContainerMetadata(name="app"), image=img,
                        log_path="app.log")), timeout=60).container_id
                rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid),
                                  timeout=30)
            stats = rt.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest(), timeout=30)
            metrics = rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(),
                                               timeout=30)
            assert len(stats.stats) == args.pods and len(metrics.pod_metrics) == args.pods
            samples = sum(len(p.metrics) + sum(len(c.metrics) for c in p.container_metrics)
                          for p in metrics.pod_metrics)
            rows = {
                "ListPodSandboxStats": (measure(lambda: rt.ListPodSandboxStats(
                    api_pb2.ListPodSandboxStatsRequest(), timeout=30), args.iterations,
                    warmup=10), stats.ByteSize()),
                "ListPodSandboxMetrics": (measure(lambda: rt.ListPodSandboxMetrics(
                    api_pb2.ListPodSandboxMetricsRequest(), timeout=30), args.iterations,
                    warmup=10), metrics.ByteSize()),
            }
            print(f"{args.pods} running pods, 1 container each, {args.iterations} calls each;"
                  f" metrics reply carries {samples} samples")
            print(f"{'call':<24}{'p50 ms':>9}{'p90 ms':>9}{'mean ms':>9}{'reply bytes':>13}")
            for name, (st, size) in rows.items():
                print(f"{name:<24}{st.p50:>9.1f}{st.p90:>9.1f}{st.mean:>9.1f}{size:>13}")
        finally:
            stack.cleanup()


if __name__ == "__main__":
    main()
