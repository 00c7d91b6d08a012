"""``focus emit`` and ``focus simulate`` without a broker: building and validating."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner, Result

from focus_sessions import cli_produce
from focus_sessions.contracts.codec import decode
from focus_sessions.contracts.events import ENDED_V1, STARTED_V1
from focus_sessions.producers.simulate import generate

SESSION = "8f0c6c0e-6a43-4d4e-9c7a-2f4b1d6a9e11"


def run(*args: str) -> Result:
    app = typer.Typer()
    cli_produce.register(app)
    return CliRunner().invoke(app, list(args))


def test_emit_dry_run_prints_the_event_it_would_publish() -> None:
    result = run("emit", "started", "-u", "user-1", "-s", SESSION, "--at",
                 "2025-03-03T10:00:00+01:00", "--duration-minutes", "15", "--dry-run")
    assert result.exit_code == 0, result.output
    event = decode(result.stdout.encode())
    assert event.type == STARTED_V1
    assert event.data.started_at.isoformat() == "2025-03-03T10:00:00+01:00"
    assert str(event.data.session_id) == SESSION


def test_emit_ended_v1_builds_the_old_shape() -> None:
    result = run("emit", "ended", "-u", "user-1", "-s", SESSION, "--abandoned", "--v1",
                 "--interruptions", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    event = json.loads(result.stdout)
    assert event["type"] == ENDED_V1
    assert event["data"]["completed"] is False
    assert event["data"]["interruptions"] == 2


def test_emit_interrupted_dry_run_keeps_the_reason() -> None:
    result = run("emit", "interrupted", "-u", "user-1", "-s", SESSION, "--reason", "doorbell",
                 "--dry-run")
    assert json.loads(result.stdout)["data"]["reason"] == "doorbell"


@pytest.mark.parametrize(("args", "says"), [
    (["started", "-u", "user-1", "--duration-minutes", "95"], "duration_minutes"),
    (["started", "-u", "has space"], "user_id"),
    (["started", "-u", "user-1", "--time-zone", "Mars/Olympus"], "Mars/Olympus"),
    (["started", "-u", "user-1", "--at", "2025-03-03T09:00:00"], "--at"),
    (["started", "-u", "user-1", "--at", "tomorrow"], "--at"),
    (["ended", "-u", "user-1", "-s", SESSION, "--focus-quality", "7"], "focus_quality"),
    (["ended", "-u", "user-1", "-s", SESSION, "--v1", "--outcome", "cancelled"], "--v1"),
])
def test_emit_refuses_invalid_input_naming_the_field(args: list[str], says: str) -> None:
    result = run("emit", *args, "--dry-run")
    assert result.exit_code == 2
    assert says in result.stderr


def test_simulate_dry_run_reports_the_generated_events() -> None:
    result = run("simulate", "--users", "5", "--sessions", "30", "--seed", "4", "--dry-run",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mode"] == "generated"
    assert summary["events"] == len(list(generate(5, 30, 4)))
    assert summary["sessions"] == 30


def test_simulate_out_dash_streams_to_stdout_and_reports_on_stderr() -> None:
    result = run("simulate", "--users", "2", "--sessions", "3", "--seed", "4", "--out", "-")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(list(generate(2, 3, 4)))
    assert json.loads(result.stderr)["events"] == len(result.stdout.splitlines())
