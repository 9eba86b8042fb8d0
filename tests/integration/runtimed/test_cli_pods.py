"""`crib pods/ps/inspect/logs/rmp` against a real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import Stack

from .conftest import Cri

pytestmark = pytest.mark.integration

CRIB = str(Path(sys.executable).parent / "crib")


def _crib(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CRIB, *args], env=stack.env(), capture_output=True, text=True,
                          timeout=60, check=False)


def test_cli_pods(crib: Stack, cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "cli", command=["sh", "-c"],
                     args=["printf 'part-'; sleep 0.2; echo one; echo two"])
    cri.start(cid)
    cri.wait_exit(cid)
    out = _crib(crib, "pods")
    assert out.returncode == 0, out.stderr
    assert sid[:13] in out.stdout and pod.metadata.name in out.stdout and "Ready" in out.stdout
    assert cid[:13] not in _crib(crib, "ps").stdout
    ps = _crib(crib, "ps", "-a", "--pod", sid[:10])
    assert cid[:13] in ps.stdout and "Exited" in ps.stdout
    logs = _crib(crib, "logs", cid[:12])
    assert logs.stdout.splitlines() == ["part-one", "two"]
    info = json.loads(_crib(crib, "inspect", cid).stdout)
    assert info["status"]["exit_code"] == 0 if "exit_code" in info["status"] else True
    assert info["info"]["info"]["bundle"].endswith(cid)
    pinfo = json.loads(_crib(crib, "inspect", sid).stdout)
    assert pinfo["status"]["id"] == sid
    assert _crib(crib, "rmp", sid).returncode == 0
    assert sid[:13] not in _crib(crib, "pods").stdout
    bad = _crib(crib, "inspect", "f" * 64)
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
