"""imaged vs containerd: cold PullImage (download + verify + unpack) of a ~100 MB image.

    python -m bench.bench_pull [--layers 5] [--mb 100] [--runs 3]

Builds an image of several gzip layers (many files of random-ish but compressible data)
in a private docker-registry on loopback, then for each run starts a fresh crib node
(imaged + gateway) and a fresh containerd (Debian's, CRI plugin, overlayfs snapshotter,
plain-HTTP hosts.toml for the registry; `bench.peer_containerd`) so every pull is cold,
and times one CRI PullImage through the same grpcio client. Prints MB/s of image data
(uncompressed) and of registry bytes (compressed) for each, the ratio, and imaged's idle
RSS before and after pulling. Needs root.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from cri_api.v1 import api_pb2

from bench.harness import image_stub
from bench.peer_containerd import PeerContainerd
from tests.support.images import Entry, Image, ImageConfig, Layer, push_image
from tests.support.registry import Registry
from tests.support.stack import Stack

WORDS = [b"crib", b"layer", b"overlay", b"registry", b"digest", b"container", b"kubelet",
         b"runtime", b"snapshot", b"manifest", b"\x00\x01\x02", b"zstd", b"gzip"]


def _payload(rng: random.Random, size: int) -> bytes:
    """Half text-like words (compressible), half random bytes (not)."""
    words = bytearray()
    while len(words) < size // 2:
        words += rng.choice(WORDS) + b" "
    return bytes(words[: size // 2]) + rng.randbytes(size - size // 2)


def build_image(n_layers: int, total_mb: int, seed: int = 7) -> tuple[Image, int]:
    rng = random.Random(seed)
    per_layer = total_mb * 1024 * 1024 // n_layers
    layers = []
    raw_total = 0
    for i in range(n_layers):
        entries = [Entry.dir(f"opt/l{i}")]
        used = 0
        j = 0
        while used < per_layer:
            # Sizes from 1 KiB to 2 MiB, as real images mix small configs and big binaries.
            size = min(int(rng.lognormvariate(10.5, 1.5)) + 1024, 2 << 20, per_layer - used)
            entries.append(Entry.file(f"opt/l{i}/f{j:05d}", _payload(rng, size),
                                      mode=0o644 if j % 5 else 0o755))
            used += size
            j += 1
        raw_total += used
        layers.append(Layer.from_entries(entries, "gzip"))
    return Image(layers, ImageConfig(cmd=["/bin/sh"])), raw_total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pull_once(socket: Path, ref: str) -> float:
    stub = image_stub(socket)
    t0 = time.perf_counter()
    reply = stub.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)),
                           timeout=600)
    elapsed = time.perf_counter() - t0
    assert reply.image_ref, "empty image_ref"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    image, raw_bytes = build_image(args.layers, args.mb)
    blob_bytes = sum(len(layer.blob) for layer in image.layers)
    print(f"image: {args.layers} layers, {raw_bytes / 1e6:.1f} MB uncompressed, "
          f"{blob_bytes / 1e6:.1f} MB gzip, {sum(1 for _ in image.layers)} blobs "
          f"(built in {time.perf_counter() - t0:.1f}s)")
    with Registry() as registry:
        pushed = push_image(registry, "crib-bench/pull", "v1", image)
        ours: list[float] = []
        theirs: list[float] = []
        idle_rss = after_rss = 0
        for run in range(args.runs):
            stack = Stack.create()
            try:
                stack.start(("imaged", "gateway"))
                pid = stack.procs["imaged"].pid
                time.sleep(0.5)
                idle_rss = rss_kb(pid)
                ours.append(pull_once(stack.cri_socket, pushed.reference))
                after_rss = rss_kb(pid)
            finally:
                stack.cleanup()
            with PeerContainerd(registries=[registry.host]) as ctd:
                theirs.append(pull_once(ctd.cri_socket, pushed.reference))
            print(f"run {run + 1}: crib {ours[-1]:.2f}s  containerd {theirs[-1]:.2f}s")
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    print()
    print(f"{'cold pull (median of ' + str(args.runs) + ')':<28}{'crib':>12}{'containerd':>14}")
    print(f"{'seconds':<28}{ours_s:>12.2f}{theirs_s:>14.2f}")
    print(f"{'MB/s uncompressed':<28}{raw_bytes / 1e6 / ours_s:>12.1f}"
          f"{raw_bytes / 1e6 / theirs_s:>14.1f}")
    print(f"{'MB/s from registry (gzip)':<28}{blob_bytes / 1e6 / ours_s:>12.1f}"
          f"{blob_bytes / 1e6 / theirs_s:>14.1f}")
    print(f"ratio crib/containerd time: {ours_s / theirs_s:.2f}x "
          f"(throughput {theirs_s / ours_s:.2f} of containerd's)")
    print(f"imaged RSS: idle {idle_rss / 1024:.1f} MiB, after pull {after_rss / 1024:.1f} MiB")
    os.sync()


if __name__ == "__main__":
    main()
