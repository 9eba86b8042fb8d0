"""Registry auth: htpasswd Basic and the Bearer token flow, with every AuthConfig form."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from crib_common.cri.runtime.v1 import AuthConfig
from crib_common.errors import CribError, FailedPrecondition
from tests.integration.imaged.conftest import Imaged, start_imaged, stop_imaged
from tests.support.images import Entry, Image, Layer, push_image
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

USERS = {"alice": "s3cret-pw"}


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    reg = Registry(auth="basic", users=USERS).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def token_registry() -> Iterator[Registry]:
    reg = Registry(auth="token", users=USERS, refresh_tokens={"refresh-123": "alice"}).start()
    try:
        yield reg
    finally:
        reg.stop()


def _image(name: str) -> Image:
    return Image([Layer.from_entries([Entry.file("who", name)])])


async def test_basic_auth(imaged: Imaged, basic_registry: Registry) -> None:
    pushed = push_image(basic_registry, "crib-test/private", "v1", _image("basic"))
    with pytest.raises(FailedPrecondition, match="requires credentials"):
        await imaged.pull(pushed.reference)
    with pytest.raises(FailedPrecondition, match="denied"):
        await imaged.pull(pushed.reference, AuthConfig(username="alice", password="wrong"))
    assert (await imaged.list()).images == []
    image_id = await imaged.pull(pushed.reference,
                                 AuthConfig(username="alice", password="s3cret-pw"))
    await imaged.remove(image_id)
    encoded = base64.b64encode(b"alice:s3cret-pw").decode()
    assert await imaged.pull(pushed.reference, AuthConfig(auth=encoded)) == image_id


async def test_bearer_token_flow(imaged: Imaged, token_registry: Registry) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    pushed = push_image(token_registry, "crib-test/tokened", "v1", _image("token"))
    issuer.requests.clear()
    with pytest.raises(FailedPrecondition, match="refused the credentials"):
        await imaged.pull(pushed.reference)
    image_id = await imaged.pull(pushed.reference,
                                 AuthConfig(username="alice", password="s3cret-pw"))
    granted = [r for r in issuer.requests if r["user"] == "alice"]
    assert granted and granted[-1]["scopes"] == ["repository:crib-test/tokened:pull"]
    assert granted[-1]["service"] == Registry.SERVICE
    # identity_token: the OAuth2 refresh-token POST to the realm.
    await imaged.remove(image_id)
    issuer.requests.clear()
    assert await imaged.pull(pushed.reference,
                             AuthConfig(identity_token="refresh-123")) == image_id
    assert any(r["method"] == "POST" and r["grant_type"] == "refresh_token"
               for r in issuer.requests)
    # registry_token: sent as the bearer token as is, no issuer round trip.
    await imaged.remove(image_id)
    issuer.requests.clear()
    token = issuer.make_token("alice", ["repository:crib-test/tokened:pull"])
    assert await imaged.pull(pushed.reference, AuthConfig(registry_token=token)) == image_id
    assert issuer.requests == []


async def test_tls_registry_with_ca_file(imaged_root: Path) -> None:
    with Registry(tls=True) as reg:
        pushed = push_image(reg, "crib-test/tls", "v1", _image("tls"))
        # A CA file that did not sign the certificate: HTTPS is used and refused.
        d = await start_imaged(imaged_root, registries={
            reg.host: {"ca_file": "/etc/ssl/certs/ca-certificates.crt"}})
        try:
            with pytest.raises(CribError, match="certificate verify failed|SSL"):
                await d.pull(pushed.reference)
        finally:
            await stop_imaged(d)
        d = await start_imaged(imaged_root, registries={reg.host: {"ca_file": reg.ca_path}})
        try:
            assert await d.pull(pushed.reference) == _image("tls").config_digest
        finally:
            await stop_imaged(d)
