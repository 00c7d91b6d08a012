"""``focus status`` without servers: the screen, --json, the exit status, --watch, and reading a
projector's endpoint (the figures themselves: tests/integration/test_status.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from focus_sessions import cli_status, status
from focus_sessions.cli import app
from focus_sessions.consumers.metrics import ProjectorMetrics
from focus_sessions.status import Partition, Report
from focus_sessions.telemetry import Endpoint


def report(verdict: str = "ok", **changes: Any) -> Report:
    values: dict[str, Any] = {
        "topic": "focus.session.events", "group": "focus-projector", "window_s": 60.0,
        "partitions": [Partition(0, 120, 100, 20, 75.0, "2026-01-01T00:00:00+00:00", "stall"),
                       Partition(1, 50, 50, 0, None, None)],
        "lag": 20, "events_per_s": 0.0, "held_events": 2, "held_oldest_age_s": 3600.0,
        "freshness": "2026-01-01T00:00:00+00:00", "members": ["focus-1@10.0.0.2"],
        "dead_letters": {"invalid": 3.0}, "projector_health": {"status": "stall"},
        "verdict": verdict, "notes": ["a note"]}
    values.update(changes)
    return Report(**values)


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reports: list[Report],
        *args: str) -> Result:
    monkeypatch.setenv("FOCUS_DATA_DIR", str(tmp_path))  # no `focus dev` stack in there
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@localhost:1/none")
    asked: list[dict[str, Any]] = []

    async def gather(**options: Any) -> Report:
        asked.append(options)
        if not reports:
            raise KeyboardInterrupt  # --watch runs until Ctrl-C
        return reports.pop(0)

    monkeypatch.setattr(cli_status, "gather", gather)
    result = CliRunner().invoke(app, ["status", *args])
    result.asked = asked  # type: ignore[attr-defined]
    return result


def test_the_screen_shows_each_partition_and_a_stall_exits_1(monkeypatch, tmp_path) -> None:
    result = run(monkeypatch, tmp_path, [report("stall")])
    assert result.exit_code == 1, result.output
    for text in ("STALL", "lag 20", "held events 2 (oldest 3,600 s old)", "invalid 3",
                 "group members 1: focus-1@10.0.0.2", "projector /healthz: stall", "note: a note"):
        assert text in result.output
    (options,) = result.asked  # type: ignore[attr-defined]
    assert options["metrics_url"] == "http://127.0.0.1:9465" and options["previous"] is None


def test_json_is_one_document_and_ok_exits_0(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FOCUS_PROJECTOR_METRICS_PORT", "0")  # metrics off: not scraped
    result = run(monkeypatch, tmp_path, [report("ok", members=None, dead_letters=None)],
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["partitions"][0]["lag"] == 20
    assert result.asked[0]["metrics_url"] is None  # type: ignore[attr-defined]


def test_watch_reads_again_against_the_previous_reading(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cli_status.asyncio, "sleep", _no_wait)
    result = run(monkeypatch, tmp_path, [report(), report()], "--watch", "--json",
                 "--metrics-url", "none")
    asked = result.asked  # type: ignore[attr-defined]
    assert len(asked) == 3 and asked[0]["previous"] is None
    assert asked[1]["previous"][1:] == ({0: 100, 1: 50}, 20)
    assert result.stdout.count('"topic"') == 2


def test_without_servers_it_says_what_to_set(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FOCUS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2 and "focus dev" in result.output


def test_the_screen_without_the_optional_sources() -> None:
    console = Console(record=True, width=150)
    console.print(cli_status.render(report("ok", members=None, dead_letters={},
                                           held_oldest_age_s=None, projector_health=None)))
    text = console.export_text()
    assert "dead letters none" in text and "group members unknown" in text


def test_dead_letters_and_the_verdict_are_read_from_the_projector_endpoint() -> None:
    metrics = ProjectorMetrics()
    metrics.dead_letters.labels("invalid").inc(2)
    endpoint = Endpoint(0, metrics.registry, window=5.0).start_thread()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}"
    try:
        assert status._scrape(url) == ({"invalid": 2.0}, _ok(status._scrape(url)[1]))
        metrics.last_poll.set(time.time() - 60)  # a 503 still carries the verdict
        assert status._scrape(url)[1]["status"] == "stop"  # type: ignore[index]
    finally:
        endpoint.close()
    assert status._scrape(url) == (None, None)  # nothing listens any more


def _ok(health: dict[str, Any] | None) -> dict[str, Any] | None:
    assert health is not None and health["status"] == "ok"
    return health


async def _no_wait(seconds: float) -> None:
    return None


def test_watch_redraws_the_screen(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cli_status.asyncio, "sleep", _no_wait)
    result = run(monkeypatch, tmp_path, [report("warn")], "--watch")
    assert "WARN" in result.stdout and len(result.asked) == 2  # type: ignore[attr-defined]
