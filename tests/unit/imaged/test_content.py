"""Content store ingest: resumable downloads keep their bytes only with a matching record;
the digest check covers the whole blob whatever was resumed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from imaged.store.content import INGEST_EXPIRY, ContentStore, DigestMismatch


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _killed_mid_write(store: ContentStore, data: bytes, upto: int) -> None:
    """What kill -9 leaves: a resumable writer that wrote `upto` bytes and never closed."""
    writer = store.writer(_digest(data), len(data), resumable=True)
    writer.write(data[:upto])
    os.close(writer._fd)  # the process dies: no abort, no commit


def test_resume_after_kill(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    _killed_mid_write(ContentStore(tmp_path), data, 100_000)
    store = ContentStore(tmp_path)  # restart
    assert store.sweep_ingest() == (0, 1)
    assert store.partial(_digest(data)) == 100_000
    writer = store.writer(_digest(data), len(data), resumable=True)
    assert writer.written == writer.resumed == 100_000 and writer.spliced
    writer.write(data[100_000:])
    assert writer.commit().read_bytes() == data
    assert list((tmp_path / "ingest").iterdir()) == []


def test_corrupted_kept_bytes_fail_the_digest(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    _killed_mid_write(ContentStore(tmp_path), data, 20_000)
    part = next((tmp_path / "ingest").glob("*.part"))
    part.write_bytes(b"\0" * 20_000)  # same length, wrong bytes
    store = ContentStore(tmp_path)
    store.sweep_ingest()
    writer = store.writer(_digest(data), len(data), resumable=True)
    writer.write(data[20_000:])
    with pytest.raises(DigestMismatch):
        writer.commit()
    assert not store.has(_digest(data)) and list((tmp_path / "ingest").iterdir()) == []


def test_reset_starts_from_zero(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    store = ContentStore(tmp_path)
    writer = store.writer(_digest(data), len(data), resumable=True)
    writer.write(b"garbage")
    writer.reset()
    writer.write(data)
    assert writer.commit().read_bytes() == data


@pytest.mark.parametrize("damage", ["no_record", "other_digest", "bigger_size", "longer",
                                    "bad_json", "expired"])
def test_sweep_drops_untrustworthy_parts(tmp_path: Path, damage: str) -> None:
    data = os.urandom(1000)
    _killed_mid_write(ContentStore(tmp_path), data, 500)
    ingest = tmp_path / "ingest"
    part = next(ingest.glob("*.part"))
    record = next(ingest.glob("*.ref"))
    if damage == "no_record":
        record.unlink()
    elif damage == "other_digest":
        record.write_text(json.dumps({"digest": _digest(b"x"), "size": 1000}))
    elif damage == "bigger_size":
        # A record smaller than the part: the part cannot be a prefix of the blob.
        record.write_text(json.dumps({"digest": _digest(data), "size": 400}))
    elif damage == "longer":
        part.write_bytes(os.urandom(1500))
    elif damage == "bad_json":
        record.write_text("{")
    elif damage == "expired":
        old = part.stat().st_mtime - INGEST_EXPIRY - 10
        os.utime(part, (old, old))
    store = ContentStore(tmp_path)
    swept, kept = store.sweep_ingest()
    assert kept == 0 and swept >= 1
    assert list(ingest.iterdir()) == []


def test_second_writer_for_one_digest_is_private(tmp_path: Path) -> None:
    data = os.urandom(1000)
    store = ContentStore(tmp_path)
    first = store.writer(_digest(data), len(data), resumable=True)
    second = store.writer(_digest(data), len(data), resumable=True)
    assert first.resumable and not second.resumable and first.path != second.path
    second.abort()
    first.write(data)
    first.commit()
    assert store.has(_digest(data))
