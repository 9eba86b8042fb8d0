"""Logging: JSON lines carrying the request context; debug work skipped at info."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from crib_common.logging import RequestContext, configure_logging, current_request_id
from crib_common.settings import LogSection


@pytest.fixture(autouse=True)
def _restore() -> object:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logging.getLogger().handlers.clear()


def test_json_lines_with_request_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSection(level="info", format="json"), "gateway")
    log = structlog.get_logger("crib.test")
    with RequestContext("rid-1", rpc="Version"):
        assert current_request_id() == "rid-1"
        log.info("container stopped", container="c1")
        log.debug("not shown")
    log.info("after")
    assert current_request_id() is None
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["event"] == "container stopped"
    assert lines[0]["request_id"] == "rid-1" and lines[0]["rpc"] == "Version"
    assert lines[0]["service"] == "gateway" and lines[0]["level"] == "info"
    assert lines[0]["container"] == "c1" and "timestamp" in lines[0]
    assert len(lines) == 2
    assert "request_id" not in lines[1]  # the context ended with the call


def test_nested_contexts_restore_the_outer(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSection(level="debug", format="json"), "runtimed")
    log = structlog.get_logger("crib.test")
    with RequestContext("outer"):
        with RequestContext("inner"):
            log.debug("in")
        log.debug("out")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["request_id"]) for e in lines] == [("in", "inner"), ("out", "outer")]


def test_stdlib_loggers_share_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSection(level="info", format="json"), "imaged")
    logging.getLogger("aiohttp.server").warning("peer went away")
    line = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert line["event"] == "peer went away" and line["service"] == "imaged"
