"""`focus dlq` before it touches a server: options a person gets wrong, and no servers."""

from __future__ import annotations

import pytest

# the CLI tests' own clean environment (autouse) and runner, not a copy of them
from tests.unit.test_cli import clean_environment, focus  # noqa: F401


def test_without_servers_each_command_says_what_to_set() -> None:
    for command in (["list"], ["show", "0:1"], ["redrive", "--dry-run"]):
        result = focus("dlq", *command)
        assert result.exit_code == 2, result.output
        assert "KAFKA_BOOTSTRAP_SERVERS not set" in result.output
        assert "focus dev" in result.output


def test_a_bad_time_or_letter_is_refused_before_any_server_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    result = focus("dlq", "list", "--since", "yesterday")
    assert result.exit_code == 2, result.output
    assert "neither an ISO 8601 time" in result.output
    result = focus("dlq", "show", "zero:one")
    assert result.exit_code == 2, result.output
    assert "is not PARTITION:OFFSET" in result.output


def test_redrive_needs_the_database_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = focus("dlq", "redrive")
    assert result.exit_code == 2, result.output
    assert "DATABASE_URL not set" in result.output
