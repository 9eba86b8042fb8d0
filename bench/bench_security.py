"""Security figures: what RuntimeDefault seccomp costs a container.

    sudo python -m bench.bench_security [--n 2000] [--creates 30] [--no-cri]

- in-process: evaluating crib's RuntimeDefault profile for a capability set, uncached
  (cache cleared each time) and cached (a container of a set seen before), and
  `build_container_spec` with RuntimeDefault against Unconfined (p50/p90 of N).
- through CRI (unless --no-cri): CreateContainer p50 on a real stack (runc), one pod, N
  containers each with RuntimeDefault and with Unconfined, interleaved so both see the
  same machine load.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from bench.harness import Stats, measure


def _in_process(n: int) -> list[tuple[str, Stats]]:
    from crib_common.cri.runtime.v1 import (
        ContainerConfig,
        ContainerMetadata,
        ImageSpec,
        LinuxContainerConfig,
        LinuxContainerSecurityContext,
        SecurityProfile,
        SecurityProfileProfileType,
    )
    from runtimed.oci.capabilities import DEFAULT_CAPS
    from runtimed.oci.seccomp import _evaluate, builtin_profile
    from runtimed.oci.spec import ContainerSpecInput, build_container_spec
    from runtimed.oci.user import ResolvedUser
    from runtimed.store.records import SandboxMeta

    prof = builtin_profile()
    caps = frozenset(DEFAULT_CAPS)

    def uncached() -> None:
        _evaluate.cache_clear()
        prof.evaluate(caps)

    out = [("evaluate, uncached", measure(uncached, n)),
           ("evaluate, cached", measure(lambda: prof.evaluate(caps), n))]
    with tempfile.TemporaryDirectory(prefix="crib-bench-sec-") as tmp:
        pod_dir = Path(tmp)
        sandbox = SandboxMeta(id="a" * 64, name="p", namespace="ns", uid="u", handler="runc",
                              created_at=1, hostname="p", pod_dir=str(pod_dir))
        inp = ContainerSpecInput(cid="b" * 64, rootfs=pod_dir / "rootfs", sandbox=sandbox,
                                 image_config={"config": {"Cmd": ["/bin/sh"]}},
                                 user=ResolvedUser(uid=0, gid=0), cgroup_path="/crib/x")

        def config(kind: SecurityProfileProfileType) -> ContainerConfig:
            return ContainerConfig(metadata=ContainerMetadata(name="c"),
                                   image=ImageSpec(image="i"),
                                   linux=LinuxContainerConfig(
                                       security_context=LinuxContainerSecurityContext(
                                           seccomp=SecurityProfile(profile_type=kind))))

        rd = config(SecurityProfileProfileType.RuntimeDefault)
        unc = config(SecurityProfileProfileType.Unconfined)
        out.append(("build_container_spec, RuntimeDefault",
                    measure(lambda: build_container_spec(rd, inp), n)))
        out.append(("build_container_spec, Unconfined",
                    measure(lambda: build_container_spec(unc, inp), n)))
    return out


def _through_cri(creates: int) -> list[tuple[str, Stats]]:
    from cri_api.v1 import api_pb2

    from bench.harness import image_stub, runtime_stub
    from tests.support.images import busybox_image, push_image
    from tests.support.registry import Registry
    from tests.support.stack import Stack

    samples: dict[str, list[float]] = {"RuntimeDefault": [], "Unconfined": []}
    with Registry() as registry:
        pushed = push_image(registry, "crib-bench/busybox", "v1", busybox_image())
        with Stack.running(CRIB_LOG__LEVEL="warning") as stack:
            rt, im = runtime_stub(stack.cri_socket), image_stub(stack.cri_socket)
            im.PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=pushed.reference)), timeout=300)
            pod = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(
                name="bench-sec", uid="bench-sec", namespace="bench"),
                log_directory=str(stack.root / "podlogs"))
            sid = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod),
                                   timeout=120).pod_sandbox_id
            try:
                for i in range(creates + 2):
                    for kind, value in (("RuntimeDefault",
                                         api_pb2.SecurityProfile.RuntimeDefault),
                                        ("Unconfined", api_pb2.SecurityProfile.Unconfined)):
                        cfg = api_pb2.ContainerConfig(
                            metadata=api_pb2.ContainerMetadata(name=f"{kind}-{i}"),
                            image=api_pb2.ImageSpec(image=pushed.reference),
                            command=["sleep", "1"], log_path=f"{kind}-{i}.log",
                            linux=api_pb2.LinuxContainerConfig(
                                security_context=api_pb2.LinuxContainerSecurityContext(
                                    seccomp=api_pb2.SecurityProfile(profile_type=value))))
                        t0 = time.perf_counter()
                        cid = rt.CreateContainer(api_pb2.CreateContainerRequest(
                            pod_sandbox_id=sid, config=cfg, sandbox_config=pod),
                            timeout=120).container_id
                        elapsed = time.perf_counter() - t0
                        if i >= 2:  # the first ones warm caches
                            samples[kind].append(elapsed)
                        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid),
                                           timeout=60)
            finally:
                rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
                                  timeout=120)
                rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                                    timeout=120)
    return [(f"CreateContainer, {k}", Stats.of(v)) for k, v in samples.items()]


def _print(rows: list[tuple[str, Any]], unit: str = "ms") -> None:
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  {'p50':>9} {'p90':>9} {'n':>6}")
    for name, st in rows:
        print(f"{name:{width}}  {st.p50:9.3f} {st.p90:9.3f} {st.n:6d}  ({unit})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--no-cri", action="store_true")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = _in_process(args.n)
    _print(rows)
    by = dict(rows)
    print(f"cached / uncached evaluation: "
          f"{by['evaluate, cached'].p50 / by['evaluate, uncached'].p50:.2f}")
    if not args.no_cri:
        cri = _through_cri(args.creates)
        print()
        _print(cri)
        print(f"CreateContainer RuntimeDefault / Unconfined (p50): "
              f"{cri[0][1].p50 / cri[1][1].p50:.2f}")


if __name__ == "__main__":
    main()
