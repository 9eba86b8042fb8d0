"""runtimed's operator REST and health through aiohttp's TestClient (no root needed:
handlers are probed, nothing is run)."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from crib_common.settings import load_settings
from runtimed.app import RUNTIME_KEY, create_app
from runtimed.store.records import SandboxMeta, SandboxRecord


def _nri(tmp_path: Path) -> dict[str, str]:
    """NRI on a socket of the test's own (never /var/run/nri), no plugin directory."""
    return {"socket": str(tmp_path / "nri.sock"), "plugin_dir": str(tmp_path / "nri-plugins"),
            "plugin_config_dir": str(tmp_path / "nri-conf")}


async def test_records_health_and_openapi(tmp_path: Path) -> None:
    settings = load_settings(runtimed={
        "root": str(tmp_path / "lib"), "run_dir": str(tmp_path / "run"),
        "pinns_dir": str(tmp_path / "ns"), "nri": _nri(tmp_path),
        "handlers": {"runc": {"path": "/usr/sbin/runc"},
                     "broken": {"path": str(tmp_path / "nope")}}})
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        node = app[RUNTIME_KEY].node
        rec = SandboxRecord(meta=SandboxMeta(id="ab" * 32, name="p", namespace="n", uid="u",
                                             handler="runc", created_at=1))
        rec.status.state = "ready"
        node.put_sandbox(rec)
        resp = await client.get("/v1/sandboxes")
        assert [r["meta"]["id"] for r in await resp.json()] == ["ab" * 32]
        resp = await client.get("/v1/sandboxes/abab")
        assert (await resp.json())["status"]["state"] == "ready"
        resp = await client.get("/v1/containers/ffff")
        assert resp.status == 404 and (await resp.json())["kind"] == "not_found"
        resp = await client.get("/v1/containers/..%2F..")
        assert resp.status in (400, 404)
        health = await (await client.get("/healthz")).json()
        assert health["ready"] is True
        assert health["details"]["handlers"]["broken"]["usable"] is False
        doc = await (await client.get("/openapi.json")).json()
        assert "/v1/sandboxes/{id}" in doc["paths"]
        nri = await (await client.get("/v1/nri/plugins")).json()
        assert nri == {"enabled": True, "socket": str(tmp_path / "nri.sock"), "plugins": []}
        assert (tmp_path / "nri.sock").is_socket()


async def test_not_ready_without_a_working_handler(tmp_path: Path) -> None:
    settings = load_settings(runtimed={
        "root": str(tmp_path / "lib"), "run_dir": str(tmp_path / "run"),
        "pinns_dir": str(tmp_path / "ns"), "default_handler": "broken", "nri": _nri(tmp_path),
        "handlers": {"broken": {"path": str(tmp_path / "nope")}}})
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503
        body = await resp.json()
        assert body["ready"] is False and body["reason"] == "NoRuntimeHandler"
        assert "not an executable" in body["message"]
