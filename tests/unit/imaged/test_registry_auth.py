"""WWW-Authenticate parsing and AuthConfig credentials."""

from __future__ import annotations

import base64

import pytest

from crib_common.errors import InvalidArgument
from imaged.registry.auth import Credentials, parse_challenges


def test_bearer_challenge() -> None:
    [c] = parse_challenges('Bearer realm="https://auth.io/token",service="reg.io",'
                           'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.io/token", "service": "reg.io",
                        "scope": "repository:a/b:pull,push"}


def test_basic_and_multiple_challenges() -> None:
    cs = parse_challenges('Basic realm="crib test", Bearer realm="http://x/t"')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].params["realm"] == "crib test"
    assert parse_challenges("Basic")[0].scheme == "basic"


def test_credentials_from_auth_field() -> None:
    creds = Credentials.from_auth_config(auth=base64.b64encode(b"bob:pa:ss").decode())
    assert (creds.username, creds.password) == ("bob", "pa:ss")
    assert Credentials().anonymous and not creds.anonymous
    with pytest.raises(InvalidArgument):
        Credentials.from_auth_config(auth="!!!")
    with pytest.raises(InvalidArgument):
        Credentials.from_auth_config(auth=base64.b64encode(b"nocolon").decode())
