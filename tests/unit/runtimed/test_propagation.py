"""The start-up check that runtimed's directories propagate mounts, on mount tables laid
out as proc(5) writes /proc/self/mountinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from crib_common.errors import FailedPrecondition
from crib_common.mountinfo import mount_of
from runtimed.propagation import check_propagation

# A host without systemd: / private; /run a shared tmpfs; /srv a slave of a shared peer.
TABLE = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw
31 27 254:0 /srv /srv rw,relatime master:7 - ext4 /dev/vda rw
32 31 254:0 /srv/x /srv/x rw,relatime - ext4 /dev/vda rw
"""


def _table(tmp_path: Path, root: Path) -> Path:
    """TABLE with its mount points moved under `root` (the directories are made there)."""
    mi = tmp_path / "mountinfo"
    lines = []
    for line in TABLE.splitlines():
        fields = line.split(" ")
        fields[4] = str(root) + (fields[4] if fields[4] != "/" else "")
        lines.append(" ".join(fields))
    mi.write_text("\n".join(lines) + "\n")
    return mi


def test_mount_of_reads_propagation(tmp_path: Path) -> None:
    mi = _table(tmp_path, tmp_path)
    assert mount_of(tmp_path / "var/lib/crib", mi).propagation == "private"  # type: ignore[union-attr]
    run = mount_of(tmp_path / "run/crib", mi)
    assert run is not None and run.shared and run.point == str(tmp_path / "run")
    srv = mount_of(tmp_path / "srv/crib", mi)
    assert srv is not None and srv.slave and srv.propagation == "slave"
    # The deepest mount holding the path decides: /srv/x is private under a slave /srv.
    assert mount_of(tmp_path / "srv/x/y", mi).propagation == "private"  # type: ignore[union-attr]


def test_shared_and_slave_pass(tmp_path: Path) -> None:
    mi = _table(tmp_path, tmp_path)
    check_propagation({"runtimed.run_dir": tmp_path / "run/crib/runtimed",
                       "runtimed.root": tmp_path / "srv/crib"}, mi)
    assert (tmp_path / "run/crib/runtimed").is_dir()  # made before the check


def test_private_refused_naming_path_and_fix(tmp_path: Path) -> None:
    mi = _table(tmp_path, tmp_path)
    root = tmp_path / "var/lib/crib/runtimed"
    logs = tmp_path / "srv/x/pods"
    with pytest.raises(FailedPrecondition) as err:
        check_propagation({"runtimed.run_dir": tmp_path / "run/crib",
                           "runtimed.root": root, "runtimed.pod_log_dir": logs}, mi)
    msg = err.value.message
    assert f"runtimed.root {root} is on mount {tmp_path}, which is private" in msg
    assert f"mount --bind {root} {root} && mount --make-rshared {root}" in msg
    assert f"mount --bind {logs} {logs} && mount --make-rshared {logs}" in msg
    assert "run_dir" not in msg
