"""The state store: versioned records, atomic transactions, and whole records after kill -9."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import pytest

from crib_common.state import Record, StateStore, StateVersionError


class Box(Record):
    gen: int
    payload: str
    digest: str


class BoxV2(Record):
    SCHEMA_VERSION: ClassVar[int] = 2
    gen: int


def _box(gen: int, size: int = 64) -> Box:
    payload = f"{gen:08d}" * (size // 8)
    return Box(gen=gen, payload=payload, digest=hashlib.sha256(payload.encode()).hexdigest())


def test_put_get_list_delete(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.put("box", "b", _box(2))
    store.put("box", "a", _box(1))
    store.put("other", "a", _box(9))
    assert store.get("box", "a", Box) == _box(1)
    assert store.get("box", "zz", Box) is None
    assert [b.gen for b in store.list("box", Box)] == [1, 2]  # ordered by key
    assert store.keys("box") == ["a", "b"]
    assert store.delete("box", "a") is True
    assert store.delete("box", "a") is False
    assert store.keys("box") == ["b"]
    store.close()
    # Committed data survives reopening.
    again = StateStore(tmp_path / "state.db")
    assert again.get("box", "b", Box) == _box(2)
    assert again.get("other", "a", Box) == _box(9)
    again.close()


def test_transaction_rolls_back_as_a_whole(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.put("box", "a", _box(1))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put("box", "a", _box(2))
            with store.transaction():  # nested: joins the outer one
                store.put("box", "b", _box(2))
            raise RuntimeError("step 3 failed")
    assert store.get("box", "a", Box) == _box(1)
    assert store.get("box", "b", Box) is None
    store.close()


def test_unknown_schema_version_is_loud(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.put("box", "new", BoxV2(gen=1))
    with pytest.raises(StateVersionError, match="box/new.*version 2"):
        store.get("box", "new", Box)
    store.close()


_WRITER = textwrap.dedent("""
    import hashlib, random, sys
    from pathlib import Path
    from crib_common.state import Record, StateStore

    class Box(Record):
        gen: int
        payload: str
        digest: str

    store = StateStore(Path(sys.argv[1]))
    gen = 0
    while True:
        gen += 1
        # One transition rewrites five records; sizes vary so pages split and move.
        with store.transaction():
            for i in range(5):
                payload = f"{gen:08d}" * random.randint(1, 4000)
                digest = hashlib.sha256(payload.encode()).hexdigest()
                store.put("box", f"k{i}", Box(gen=gen, payload=payload, digest=digest))
        if gen == 3:
            print("ready", flush=True)
""")


@pytest.mark.parametrize("delay", [0.3, 0.7])
def test_kill_9_mid_write_leaves_every_record_whole(tmp_path: Path, delay: float) -> None:
    db = tmp_path / "state.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = StateStore(db)
    boxes = store.list("box", Box)
    assert len(boxes) == 5
    for box in boxes:
        assert hashlib.sha256(box.payload.encode()).hexdigest() == box.digest
        assert set(box.payload[i:i + 8] for i in range(0, len(box.payload), 8)) == {
            f"{box.gen:08d}"
        }
    # All five were written in one transaction: they come back from the same one.
    assert len({box.gen for box in boxes}) == 1
    assert boxes[0].gen >= 3
    # And the store still takes writes.
    store.put("box", "k0", _box(10**6))
    assert store.get("box", "k0", Box) == _box(10**6)
    store.close()
