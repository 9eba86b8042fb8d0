"""`crib pulls` against the real crib-imaged: the table of pulls in flight, and `--watch`
on a pseudo-terminal drawing bars that advance until the pulls end."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.imaged.test_cli_images import (
    CRIB,
    _crib,
    _crib_on_pty,
    percents,
    screen_lines,
)
from tests.support.images import Entry, Image, Layer
from tests.support.registry import StaticRegistry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def node() -> Iterator[Stack]:
    with Stack.running(("imaged",)) as stack:
        yield stack


def test_pulls_table_and_watch_on_a_tty(node: Stack) -> None:
    slow = Layer.from_entries([Entry.file("slow", os.urandom(900_000))], "gzip")
    image = Image([slow])
    with StaticRegistry() as static:
        static.add_image("crib/watch", "v1", image.manifest, image.manifest_media_type,
                         [image.config_blob, slow.blob])
        static.throttle[f"/v2/crib/watch/blobs/{slow.digest}"] = 300_000  # ~3 s
        ref = f"{static.host}/crib/watch:v1"
        assert _crib(node, "pulls", "-q").stdout == ""
        puller = subprocess.Popen([CRIB, "pull", ref], env=node.env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            listed = ""
            while time.monotonic() < deadline and ref not in listed:
                listed = _crib(node, "pulls").stdout
            # Plain columns off a terminal: headers, then the row naming who asked.
            header, row = listed.splitlines()[:2]
            assert header.split()[:4] == ["PULL", "ID", "IMAGE", "FOR"]
            assert ref in row and " cli " in row
            pull_id = row.split()[0]
            code, screen = _crib_on_pty(node, "pulls", "--watch")
            out, err = puller.communicate(timeout=60)
        finally:
            if puller.poll() is None:
                puller.kill()
                puller.wait()
    assert puller.returncode == 0, err
    assert code == 0
    lines = screen_lines(screen)
    assert any(pull_id in line and ref in line and "for cli" in line for line in lines)
    pct = percents(lines, slow.digest)
    assert len({p for p in pct if 0 < p < 100}) >= 2, pct
    assert pct == sorted(pct) and pct[-1] == 100
    # It ended by itself with the pull, showing the outcome.
    assert any(line.strip().startswith("all") and "done" in line for line in lines)
    # Finished pulls leave the table; the recent list keeps the outcome.
    assert _crib(node, "pulls", "-q").stdout == ""
    recent = _crib(node, "pulls", "--recent").stdout
    assert pull_id in recent and "done" in recent
    missing = _crib(node, "pulls", "feedfeedfeed")
    assert missing.returncode == 1 and "not_found" in missing.stderr
    idle = _crib(node, "pulls", "--watch")
    assert idle.returncode == 0 and "no pulls in flight" in idle.stdout
