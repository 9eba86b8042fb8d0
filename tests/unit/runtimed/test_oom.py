"""oom_score_adj: as asked with CAP_SYS_RESOURCE, raised to the daemon's own without."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.oom import SANDBOX_OOM_SCORE_ADJ, OomPolicy, detect_oom_policy


def _proc(tmp_path: Path, capeff: str, score: str) -> tuple[Path, Path]:
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nCapInh:\t0000000000000000\nCapPrm:\t{capeff}\n"
                      f"CapEff:\t{capeff}\nCapBnd:\t{capeff}\n")
    adj = tmp_path / "oom_score_adj"
    adj.write_text(f"{score}\n")
    return status, adj


def test_detect_with_and_without_cap(tmp_path: Path) -> None:
    # 000001ffffffffff: every capability; 000001fffeffffff: all but bit 24
    # (CAP_SYS_RESOURCE), as on this test machine.
    assert detect_oom_policy(*_proc(tmp_path, "000001ffffffffff", "0")) == OomPolicy(True, 0)
    assert detect_oom_policy(*_proc(tmp_path, "000001fffeffffff", "-500")) == OomPolicy(
        False, -500)
    assert detect_oom_policy(tmp_path / "none", tmp_path / "none") == OomPolicy(False, 0)


@pytest.mark.parametrize(("requested", "applied"), [
    (-997, -997), (SANDBOX_OOM_SCORE_ADJ, -998), (1000, 1000), (0, 0), (-2000, -1000),
    (5000, 1000),
])
def test_as_given_with_cap(requested: int, applied: int) -> None:
    assert OomPolicy(cap_sys_resource=True, own_score=-999).apply(requested) == applied


@pytest.mark.parametrize(("requested", "applied"), [
    (-997, -500), (-500, -500), (-100, -100), (1000, 1000), (-998, -500),
])
def test_raised_to_own_score_without_cap(requested: int, applied: int) -> None:
    assert OomPolicy(cap_sys_resource=False, own_score=-500).apply(requested) == applied


def test_describe() -> None:
    assert OomPolicy(False, 0).describe()["restricted"] is True
