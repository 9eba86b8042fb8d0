"""Retry helpers of the registry client: Retry-After, Content-Range, backoff bounds."""

from __future__ import annotations

import email.utils
import time

import pytest

from crib_common.settings import ImagedSection
from imaged.oci.reference import parse_reference
from imaged.registry.auth import Credentials
from imaged.registry.client import RegistrySession, _range_matches, _retry_after


def test_retry_after_seconds_and_date() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_retry_after(later) or 0) <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert _retry_after(past) == 0.0


@pytest.mark.parametrize("header,ok", [
    ("bytes 100-999/1000", True),
    ("bytes 100-999/*", True),
    ("bytes 0-999/1000", False),     # from the start: not the rest we asked for
    ("bytes 100-998/1000", False),   # stops short of the end
    ("bytes 100-999/1001", False),   # another blob's size
    ("bytes */1000", False),         # 416's form
    ("", False),
])
def test_content_range_must_be_the_rest(header: str, ok: bool) -> None:
    assert _range_matches(header, 100, 1000) is ok


def test_backoff_grows_and_is_capped() -> None:
    settings = ImagedSection(retry_base_delay=1.0, retry_max_delay=5.0)
    session = RegistrySession(None, settings, parse_reference("127.0.0.1:1/a/b:c"),  # type: ignore[arg-type]
                              Credentials())
    assert 0.75 <= session._backoff(1, None) <= 1.0
    assert 1.5 <= session._backoff(2, None) <= 2.0
    assert session._backoff(10, None) == 5.0
    assert session._backoff(1, 3.0) == 3.0
    assert session._backoff(1, 3600.0) == 5.0  # a registry cannot park the pull
