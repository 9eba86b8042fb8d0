"""`crib pull`, `crib images`, `crib rmi` against a real imaged and registry; the REST
pull stream reports per-layer progress, which `crib pull` draws as live bars (rich) on a
TTY and as plain lines elsewhere."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crib_common.clients.imaged import ImagedClient
from crib_common.models.imaged import PullRequest
from crib_common.errors import CribError
from tests.support.images import MT_OCI_MANIFEST, Entry, Image, Layer, Pushed
from tests.support.registry import Registry, StaticRegistry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
CRIB = str(Path(sys.executable).parent / "crib")


@pytest.fixture
def node() -> Iterator[Stack]:
    with Stack.running(("imaged",)) as stack:
        yield stack


def _crib(node: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CRIB, *args], env=node.env(), capture_output=True, text=True,
                          timeout=120)


def test_cli_pull_list_rmi(node: Stack, busybox_image: str, busybox_pushed: Pushed) -> None:
    out = _crib(node, "pull", busybox_image)
    assert out.returncode == 0, out.stderr
    layer = busybox_pushed.layer_digests[0].removeprefix("sha256:")[:12]
    assert f"{layer}: done" in out.stdout and busybox_pushed.config_digest in out.stdout
    listed = _crib(node, "images")
    assert listed.returncode == 0
    repo = busybox_image.rsplit(":", 1)[0]
    assert repo in listed.stdout and "latest" in listed.stdout
    assert busybox_pushed.config_digest[7:20] in listed.stdout
    assert _crib(node, "images", "-q").stdout.split() == [busybox_pushed.config_digest]
    assert "inodes" in _crib(node, "images", "fs").stdout
    bad = _crib(node, "pull", f"{repo}:missing")
    assert bad.returncode == 1 and "not_found" in bad.stderr
    pruned = _crib(node, "images", "prune")  # only untagged images: nothing to do
    assert pruned.returncode == 0 and "deleted" not in pruned.stdout
    removed = _crib(node, "rmi", busybox_image)
    assert removed.returncode == 0 and busybox_image in removed.stdout
    assert _crib(node, "images", "-q").stdout.strip() == ""
    again = _crib(node, "rmi", busybox_image)
    assert again.returncode == 1 and "no such image" in again.stderr
    assert _crib(node, "pull", "-q", busybox_image).returncode == 0
    pruned = _crib(node, "images", "prune", "--all")
    assert f"deleted {busybox_pushed.config_digest}" in pruned.stdout
    assert "freed 3 blobs, 1 layers" in pruned.stdout
    assert _crib(node, "images", "-q").stdout.strip() == ""


async def test_rest_pull_stream_and_untag(node: Stack, registry: Registry,
                                          busybox_image: str, busybox_pushed: Pushed) -> None:
    client_reg = registry.client()
    _, headers, manifest = client_reg.get(
        f"/v2/{busybox_pushed.repo}/manifests/{busybox_pushed.manifest_digest}",
        {"Accept": MT_OCI_MANIFEST})
    client_reg.push_manifest(busybox_pushed.repo, "second", manifest, MT_OCI_MANIFEST)
    second = f"{registry.host}/{busybox_pushed.repo}:second"
    async with ImagedClient(node.socket("imaged")) as client:
        events = [e async for e in client.pull(PullRequest(reference=busybox_image))]
        assert events[0].status in ("resolving", "pulling")
        assert events[-1].status == "done"
        assert events[-1].image_id == busybox_pushed.config_digest
        assert events[-1].layers[0].downloaded == events[-1].layers[0].size > 0
        events = [e async for e in client.pull(PullRequest(reference=second))]
        assert events[-1].layers[0].status == "exists"
        img = await client.resolve_image(busybox_pushed.digest_reference)
        assert sorted(img.repo_tags) == sorted([busybox_image, second])
        # Operator rmi of one tag only untags while another remains (docker rmi).
        assert (await client.remove_image(busybox_image)).removed == [busybox_image]
        assert (await client.resolve_image(second)).repo_tags == [second]
        assert (await client.remove_image(second)).removed
        assert (await client.list_images()) == []
        with pytest.raises(CribError, match="reference: Field required"):
            await client.post_model("/v1/images/pull", None, None)
        events = [e async for e in client.pull(PullRequest(reference="Bad Ref"))]
        assert events[-1].status == "error" and events[-1].error_kind == "invalid_argument"


def _crib_on_pty(node: Stack, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `crib` with its stdout on a pseudo-terminal (so it draws progress); returns
    (exit code, what the terminal received, CRLFs made LFs)."""
    master, slave = pty.openpty()
    env = {**node.env(), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}
    proc = subprocess.Popen([CRIB, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, close_fds=True)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            received += data
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert code == 0, err
    return code, received.decode(errors="replace").replace("\r\n", "\n")


def test_cli_pull_progress_on_tty(node: Stack) -> None:
    fast = Layer.from_entries([Entry.file("fast", "quick")])
    slow = Layer.from_entries([Entry.file("slow", os.urandom(200_000))], "gzip")
    image = Image([fast, slow])
    with StaticRegistry() as static:
        static.add_image("crib/tty", "v1", image.manifest, image.manifest_media_type,
                         [image.config_blob, fast.blob, slow.blob])
        # About 1.5 s of download: several redraws with the slow layer part-way.
        static.throttle[f"/v2/crib/tty/blobs/{slow.digest}"] = len(slow.blob) * 2 // 3
        code, screen = _crib_on_pty(node, "pull", f"{static.host}/crib/tty:v1")
    assert code == 0
    lines = screen_lines(screen)
    # Redrawn in place: the cursor went up over the previous frame.
    assert re.search(r"\x1b\[\d*A", screen)
    fast_pct = percents(lines, fast.digest)
    slow_pct = percents(lines, slow.digest)
    assert fast_pct and fast_pct[-1] == 100
    # The slow layer's bar advanced: drawn part-way, more than once, ending full.
    part_way = sorted({p for p in slow_pct if 0 < p < 100})
    assert len(part_way) >= 2 and slow_pct == sorted(slow_pct) and slow_pct[-1] == 100
    assert any("for cli" in line for line in lines)
    assert f"pulled {static.host}/crib/tty:v1 ({image.config_digest})" in lines


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def screen_lines(screen: str) -> list[str]:
    """What a terminal showed, escape codes removed, one entry per line written."""
    return [_ANSI.sub("", line).rstrip() for line in screen.split("\n")]


def percents(lines: list[str], digest: str) -> list[int]:
    """The percentages a layer's bar showed, in order."""
    prefix = digest.removeprefix("sha256:")[:12]
    out = []
    for line in lines:
        m = re.match(rf"\s*{prefix}\s.*?(\d+)%", line)
        if m:
            out.append(int(m.group(1)))
    return out
