"""What every JSON model shares (crib_common.models.base)."""

from __future__ import annotations

import subprocess
import sys

from crib_common.models.base import JsonModel
from crib_common.models.imaged import PullRequest
from crib_common.models.netd import PodNetworkCreate
from crib_common.state import Record


def test_parsed_strings_are_not_kept() -> None:
    # In a fresh interpreter (pydantic's string cache is process-wide): 4,000 bodies of
    # unique IDs, as a daemon parses one per call, leave nothing behind.
    code = (
        "import gc, sys, uuid\n"
        "from crib_common.models.netd import PodNetworkCreate\n"
        "bodies = [PodNetworkCreate(pod_id=uuid.uuid4().hex, pod_name='p-' + uuid.uuid4().hex,"
        " pod_namespace='ns', pod_uid=uuid.uuid4().hex).model_dump_json().encode()"
        " for _ in range(4000)]\n"
        "PodNetworkCreate.model_validate_json(bodies[0]); gc.collect()\n"
        "before = sys.getallocatedblocks()\n"
        "for body in bodies[1:]: PodNetworkCreate.model_validate_json(body)\n"
        "gc.collect(); print(sys.getallocatedblocks() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) < 500, out.stdout  # three kept strings a body: ~12,000


def test_models_read_from_json_cache_only_keys() -> None:
    for model in (JsonModel, PodNetworkCreate, PullRequest, Record):
        assert model.model_config.get("cache_strings") == "keys", model
