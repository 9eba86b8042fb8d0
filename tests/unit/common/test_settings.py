"""Settings: defaults, then the TOML file, then the environment; bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crib_common.settings import CribSettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CRIB_"):
            monkeypatch.delenv(key)
    # A missing file is fine: the defaults apply.
    monkeypatch.setenv("CRIB_CONFIG", str(tmp_path / "absent.toml"))


def test_defaults() -> None:
    s = load_settings()
    assert s == CribSettings()
    assert s.gateway.socket == Path("/run/crib/cri.sock")
    assert s.gateway.max_message_bytes == 16 * 1024 * 1024
    assert s.runtimed.default_handler == "runc"
    assert set(s.runtimed.handlers) == {"runc", "crun"}
    assert s.log.level == "info"


def test_toml_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "crib.toml"
    conf.write_text(
        '[gateway]\nsocket = "/tmp/x/cri.sock"\ndefault_timeout = 30.0\n'
        '[runtimed]\ndefault_handler = "crun"\n'
        '[runtimed.handlers.runsc]\npath = "/usr/bin/runsc"\n'
        '[imaged.registries."127.0.0.1:5000"]\ninsecure = true\n'
    )
    monkeypatch.setenv("CRIB_CONFIG", str(conf))
    s = load_settings()
    assert s.gateway.socket == Path("/tmp/x/cri.sock")
    assert s.gateway.default_timeout == 30.0
    assert s.runtimed.default_handler == "crun"
    assert s.runtimed.handlers["runsc"].path == "/usr/bin/runsc"
    assert s.imaged.registries["127.0.0.1:5000"].insecure is True
    # The environment wins over the file, key by key.
    monkeypatch.setenv("CRIB_GATEWAY__DEFAULT_TIMEOUT", "12.5")
    monkeypatch.setenv("CRIB_LOG__LEVEL", "debug")
    s = load_settings()
    assert s.gateway.default_timeout == 12.5
    assert s.gateway.socket == Path("/tmp/x/cri.sock")
    assert s.log.level == "debug"


def test_bad_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRIB_GATEWAY__MAX_MESSAGE_BYTES", "-5")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "gateway.max_message_bytes" in str(info.value)
    assert "-5" in str(info.value)


def test_bad_toml_value_names_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "crib.toml"
    conf.write_text('[log]\nlevel = "loud"\n')
    monkeypatch.setenv("CRIB_CONFIG", str(conf))
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "log.level" in str(info.value) and "loud" in str(info.value)


def test_unknown_key_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "crib.toml"
    conf.write_text("[gateway]\nsokcet = \"/x\"\n")  # a typo must not pass silently
    monkeypatch.setenv("CRIB_CONFIG", str(conf))
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "gateway.sokcet" in str(info.value)


def test_malformed_toml_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "crib.toml"
    conf.write_text("[gateway\n")
    monkeypatch.setenv("CRIB_CONFIG", str(conf))
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(conf) in str(info.value)
